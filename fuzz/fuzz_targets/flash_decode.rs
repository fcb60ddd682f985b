//! The flash decoder: never panics; decoded flashes round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessioner::Flash;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(flash) = Flash::decode(s) {
            assert_eq!(Flash::decode(&flash.encode()), Some(flash));
        }
    }
});
