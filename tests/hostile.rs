//! Hostile input (SECURITY.md S2, R9): property tests over the id parser, the record and flash
//! decoders and whole requests with arbitrary cookies. No input may panic; invalid input is
//! rejected; valid input round-trips. `scripts/fuzz` runs the same targets under libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{Browser, service};
use proptest::prelude::*;
use sessioner::{Error, Flash, Options, Record, SessionId};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn r9_id_parser_accepts_exactly_lowercase_hex_of_the_length(value in ".{0,80}", length in 16usize..=64) {
        let valid = value.len() == length && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match SessionId::parse(&value, length) {
            Ok(id) => {
                prop_assert!(valid);
                prop_assert_eq!(id.as_str(), value.as_str());
            }
            Err(_) => prop_assert!(!valid),
        }
    }

    #[test]
    fn r9_valid_ids_round_trip(length in 16usize..=128) {
        let id = SessionId::generate(length).unwrap();
        prop_assert_eq!(SessionId::parse(id.as_str(), length).unwrap(), id);
    }

    #[test]
    fn r9_record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Record::decode(&bytes);
    }

    #[test]
    fn r9_records_round_trip(
        values in proptest::collection::hash_map(".{0,16}", ".{0,32}", 0..8),
        expires_at in 1u64..u64::MAX,
        absolute in proptest::option::of(1u64..u64::MAX),
    ) {
        let values: HashMap<String, String> = values.into_iter().map(|(k, v)| (k, serde_json::to_string(&v).unwrap())).collect();
        let record = Record { values, expires_at, absolute_deadline: absolute };
        prop_assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }

    /// R3, R4: a record cut short or with one byte changed is Corrupt, never another record.
    #[test]
    fn r4_a_cut_or_changed_record_is_corrupt(
        values in proptest::collection::hash_map(".{0,16}", ".{0,32}", 0..8),
        expires_at in 1u64..u64::MAX,
        absolute in proptest::option::of(1u64..u64::MAX),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let values: HashMap<String, String> = values.into_iter().map(|(k, v)| (k, serde_json::to_string(&v).unwrap())).collect();
        let bytes = Record { values, expires_at, absolute_deadline: absolute }.encode();
        prop_assert!(matches!(Record::decode(&bytes[..cut.index(bytes.len())]), Err(Error::Corrupt(_))));
        let mut changed = bytes.clone();
        changed[at.index(bytes.len())] ^= flip;
        prop_assert!(matches!(Record::decode(&changed), Err(Error::Corrupt(_))));
    }

    #[test]
    fn r9_flash_decoder_never_panics_and_round_trips(raw in ".{0,200}", s in ".{0,40}", e in ".{0,40}") {
        let _ = Flash::decode(&raw);
        let flash = Flash { success_msg: s, error_msg: e, ..Default::default() };
        prop_assert_eq!(Flash::decode(&flash.encode()).unwrap(), flash);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whole requests: any cookie header is answered without a 5xx, and a write gets a fresh,
    /// valid id unless the cookie named a live session (which random input never does).
    #[test]
    fn s2_r9_arbitrary_cookie_headers_never_cause_a_server_error(value in "[ -~]{0,300}") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let svc = service(Options { provider: "memory".into(), ..Default::default() });
            let mut b = Browser::with_cookie(svc, "sessioner", &value);
            let read = b.get("/get?key=k").await;
            assert!(read.status.is_success(), "{value:?}: {}", read.status);
            let write = b.get("/set?key=k&value=v").await;
            assert!(write.status.is_success(), "{value:?}: {}", write.status);
            let issued = write.cookie("sessioner").expect("a fresh id").value().to_owned();
            assert!(SessionId::parse(&issued, 32).is_ok());
            assert_ne!(issued, value);
        });
    }
}
