//! The record decoder: never panics; what it decodes re-encodes to something it decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessioner::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()).ok(), Some(record));
    }
});
