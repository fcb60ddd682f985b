//! The id parser: never panics; whatever it accepts is exactly lowercase hex of the length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessioner::SessionId;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for length in [16, 32, 33] {
            if let Ok(id) = SessionId::parse(s, length) {
                assert_eq!(id.as_str(), s);
                assert!(s.len() == length && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
        }
    }
});
