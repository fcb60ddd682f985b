//! The stored form of a session and the change set a request applies to it.
//!
//! The encoding ([`Record::encode`]), version 2, is one self-checking unit:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `S2` (the format version) |
//! | 2..10 | idle deadline, ms since the epoch, little-endian |
//! | 10..18 | absolute deadline, the same (`0`: none) |
//! | 18..22 | length of the body, little-endian |
//! | 22..26 | CRC-32 (IEEE) of bytes 0..22 and of the body |
//! | 26.. | the body: the values as a JSON object of strings |
//!
//! Invariants:
//! - [`Record::decode`] accepts exactly what `encode` wrote, followed by any bytes (the
//!   padding of an in-place rewrite, see the file provider), and nothing else: a record cut
//!   short, or with any byte of its header or body changed, is [`Error::Corrupt`]. A record
//!   torn by a crash during an in-place rewrite therefore decodes as the old record, the new
//!   one, or `Corrupt` (the visitor starts afresh), never as a mix of the two.
//! - The checksum finds every change of up to 32 consecutive bits (so every changed byte)
//!   for certain, and any other change but for a chance of 2^-32; it guards against crashes
//!   and bad disks, not against someone who can write the store (nothing here can).
//! - [`peek_expiry`] reads the idle deadline from the header alone, without the checksum:
//!   GC and count use it to pick candidates, and GC decodes the whole record before it
//!   deletes one.
//! - Version 1 records (magic `S1`, no length or checksum) are `Corrupt`: nothing could tell
//!   a whole one from one torn by an in-place rewrite, and no released version wrote them.
//! - A body of 4 GiB or more cannot be stored: its length does not fit, and it decodes as
//!   `Corrupt`.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// One session as a provider stores it: values (as JSON text) and deadlines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Session values, each the JSON encoding of what the handler set.
    pub values: HashMap<String, String>,
    /// When the session expires if nothing touches it (ms since the epoch). Already capped
    /// by the absolute deadline.
    pub expires_at: u64,
    /// The absolute lifetime's end (ms since the epoch), if one is configured; activity
    /// never moves it.
    pub absolute_deadline: Option<u64>,
}

/// What one request changed in a session: the only thing a save writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// All values were removed before `set` and `deleted` apply.
    pub flushed: bool,
    /// Keys set, with their new JSON text; each key at most once. A list rather than a map:
    /// a request changes a handful of keys, and a list needs no hashing and one allocation.
    pub set: Vec<(String, String)>,
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// The new idle deadline (ms since the epoch), already capped by the absolute one.
    pub expires_at: u64,
}

impl ChangeSet {
    /// True when the change set only refreshes the expiry.
    pub fn is_touch_only(&self) -> bool {
        !self.flushed && self.set.is_empty() && self.deleted.is_empty()
    }
}

const MAGIC: &[u8; 2] = b"S2";
/// The length of the header: magic, two deadlines, body length, checksum.
pub(crate) const HEADER: usize = 2 + 8 + 8 + 4 + 4;
/// Where the checksum sits in the header; it covers the bytes before it and the body.
const CHECKSUM: usize = HEADER - 4;

impl Record {
    /// True when the record has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at <= now_ms
    }

    /// Applies a change set: flush, then deletes, then sets, then the new deadline.
    pub fn apply(&mut self, changes: &ChangeSet) {
        if changes.flushed {
            self.values.clear();
        }
        for key in &changes.deleted {
            self.values.remove(key);
        }
        for (key, value) in &changes.set {
            self.values.insert(key.clone(), value.clone());
        }
        self.expires_at = changes.expires_at;
    }

    /// Encodes the record: a versioned 26-byte header (magic, deadlines, body length,
    /// checksum) then the values as JSON (see the module documentation).
    #[doc(hidden)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.extend_from_slice(&self.absolute_deadline.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&[0; 8]); // the length and the checksum, filled in below
        // Serializing a map of strings cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.values);
        let length = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
        out[CHECKSUM - 4..CHECKSUM].copy_from_slice(&length.to_le_bytes());
        let checksum = crc32::of(&out[..CHECKSUM], &out[HEADER..]);
        out[CHECKSUM..HEADER].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes what [`encode`](Record::encode) wrote, ignoring any bytes after it; anything
    /// else (cut short, changed, another version) is [`Error::Corrupt`].
    #[doc(hidden)]
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let expires_at = peek_expiry(bytes)?;
        let absolute = read_u64(&bytes[10..18]);
        let length = u32::from_le_bytes(read_array(&bytes[CHECKSUM - 4..CHECKSUM]));
        let body = usize::try_from(length)
            .ok()
            .and_then(|length| bytes.get(HEADER..HEADER.checked_add(length)?))
            .ok_or_else(|| Error::Corrupt("record cut short".into()))?;
        let checksum = u32::from_le_bytes(read_array(&bytes[CHECKSUM..HEADER]));
        if crc32::of(&bytes[..CHECKSUM], body) != checksum {
            return Err(Error::Corrupt("record checksum mismatch".into()));
        }
        let values = serde_json::from_slice(body).map_err(|e| Error::Corrupt(Box::new(e)))?;
        Ok(Record {
            values,
            expires_at,
            absolute_deadline: (absolute != 0).then_some(absolute),
        })
    }
}

/// Reads only the idle deadline of an encoded record (its header, unchecked), for GC scans.
pub(crate) fn peek_expiry(bytes: &[u8]) -> Result<u64> {
    if bytes.len() < HEADER || &bytes[..2] != MAGIC {
        return Err(Error::Corrupt("bad record header".into()));
    }
    Ok(read_u64(&bytes[2..10]))
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(read_array(b))
}

/// The first `N` bytes of `b` (which has at least `N`), as an array.
fn read_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// CRC-32 (IEEE 802.3, as zlib and PNG), eight bytes at a time ("slicing by 8").
mod crc32 {
    /// `TABLES[0]` is the byte-at-a-time table; `TABLES[k][b]` advances `b` by `k` more
    /// zero bytes.
    static TABLES: [[u32; 256]; 8] = tables();

    const fn tables() -> [[u32; 256]; 8] {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                bit += 1;
            }
            t[0][i] = c;
            i += 1;
        }
        let mut k = 1;
        while k < 8 {
            let mut i = 0;
            while i < 256 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
                i += 1;
            }
            k += 1;
        }
        t
    }

    fn update(mut crc: u32, bytes: &[u8]) -> u32 {
        let t = &TABLES;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            crc = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        crc
    }

    /// The checksum of `first` followed by `second`.
    pub(super) fn of(first: &[u8], second: &[u8]) -> u32 {
        !update(update(!0, first), second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &str) -> Record {
        Record {
            values: [
                ("user".to_owned(), format!("{value:?}")),
                ("n".to_owned(), "42".to_owned()),
            ]
            .into(),
            expires_at: 1_700_000_000_000,
            absolute_deadline: Some(1_700_000_360_000),
        }
    }

    fn is_corrupt(bytes: &[u8]) -> bool {
        matches!(Record::decode(bytes), Err(Error::Corrupt(_)))
    }

    #[test]
    fn encode_round_trips_and_garbage_is_corrupt() {
        let r = record("ann");
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let empty = Record::default();
        assert_eq!(Record::decode(&empty.encode()).unwrap(), empty);
        for bad in [
            &b""[..],
            b"S2",
            b"XX000000000000000000000000{}",
            b"S2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0{}",
        ] {
            assert!(is_corrupt(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_checksum_is_crc32() {
        assert_eq!(crc32::of(b"1234", b"56789"), 0xCBF4_3926);
        assert_eq!(crc32::of(b"", b""), 0);
        let text = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(crc32::of(&text[..13], &text[13..]), 0x414F_A339);
    }

    #[test]
    fn every_truncation_and_every_changed_byte_is_corrupt() {
        let bytes = record("ann").encode();
        for len in 0..bytes.len() {
            assert!(is_corrupt(&bytes[..len]), "cut to {len} bytes");
        }
        for at in 0..bytes.len() {
            for flip in 1..=255u8 {
                let mut changed = bytes.clone();
                changed[at] ^= flip;
                assert!(is_corrupt(&changed), "byte {at} ^ {flip:#04x}");
            }
        }
    }

    #[test]
    fn padding_after_a_record_is_ignored() {
        let r = record("ann");
        let whole = r.encode();
        let mut padded = whole.clone();
        padded.resize(whole.len() + 40, b' ');
        for len in whole.len()..=padded.len() {
            assert_eq!(Record::decode(&padded[..len]).unwrap(), r);
        }
        for at in whole.len()..padded.len() {
            let mut changed = padded.clone();
            changed[at] = b'x';
            assert_eq!(Record::decode(&changed).unwrap(), r);
        }
    }

    /// An in-place rewrite torn at any byte: the new record's start over the old one's end
    /// (same length, or shorter and padded as the file provider pads it).
    #[test]
    fn a_torn_rewrite_is_the_old_record_the_new_one_or_corrupt() {
        let old = record("ann-marie");
        for new in [
            record("bob-louis"),
            record("al"),
            record("bob-louis-the-third"),
        ] {
            let (old_bytes, mut new_bytes) = (old.encode(), new.encode());
            new_bytes.resize(new_bytes.len().max(old_bytes.len()), b' ');
            for cut in 0..=new_bytes.len() {
                let mut torn = new_bytes[..cut].to_vec();
                torn.extend_from_slice(old_bytes.get(cut..).unwrap_or_default());
                match Record::decode(&torn) {
                    Ok(r) => assert!(r == old || r == new, "torn at {cut}: {r:?}"),
                    Err(Error::Corrupt(_)) => {}
                    Err(e) => panic!("torn at {cut}: {e}"),
                }
            }
        }
    }

    #[test]
    fn a_version_1_record_is_corrupt() {
        let mut v1 = b"S1".to_vec();
        v1.extend_from_slice(&u64::MAX.to_le_bytes());
        v1.extend_from_slice(&0u64.to_le_bytes());
        v1.extend_from_slice(br#"{"user":"\"ann\""}"#);
        assert!(is_corrupt(&v1));
    }

    #[test]
    fn apply_flushes_then_deletes_then_sets() {
        let mut r = Record::default();
        r.values.insert("a".into(), "1".into());
        r.values.insert("b".into(), "2".into());
        let mut c = ChangeSet {
            expires_at: 7,
            ..Default::default()
        };
        c.deleted.push("a".into());
        c.set.push(("c".into(), "3".into()));
        r.apply(&c);
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.expires_at, 7);
        c.flushed = true;
        r.apply(&c);
        assert_eq!(r.values.keys().collect::<Vec<_>>(), ["c"]);
    }
}
