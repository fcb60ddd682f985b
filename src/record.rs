//! The stored form of a session and the change set a request applies to it.

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

const MAGIC: &[u8; 2] = b"S1";
const HEADER: usize = 2 + 8 + 8;

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

    /// Encodes the record: a versioned 18-byte header (magic, deadlines) then the values as JSON.
    #[doc(hidden)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.extend_from_slice(&self.absolute_deadline.unwrap_or(0).to_le_bytes());
        // Serializing a map of strings cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.values);
        out
    }

    /// Decodes what [`encode`](Record::encode) wrote; anything else is [`Error::Corrupt`].
    #[doc(hidden)]
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let expires_at = peek_expiry(bytes)?;
        let absolute = read_u64(&bytes[10..18]);
        let values =
            serde_json::from_slice(&bytes[HEADER..]).map_err(|e| Error::Corrupt(Box::new(e)))?;
        Ok(Record {
            values,
            expires_at,
            absolute_deadline: (absolute != 0).then_some(absolute),
        })
    }
}

/// Reads only the idle deadline of an encoded record, for GC scans.
pub(crate) fn peek_expiry(bytes: &[u8]) -> Result<u64> {
    if bytes.len() < HEADER || &bytes[..2] != MAGIC {
        return Err(Error::Corrupt("bad record header".into()));
    }
    Ok(read_u64(&bytes[2..10]))
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_and_garbage_is_corrupt() {
        let mut r = Record {
            expires_at: 42,
            absolute_deadline: Some(99),
            ..Default::default()
        };
        r.values.insert("k".into(), "\"v\"".into());
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        for bad in [
            &b""[..],
            b"S1",
            b"XX0000000000000000{}",
            b"S1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0{",
        ] {
            assert!(matches!(Record::decode(bad), Err(Error::Corrupt(_))));
        }
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
