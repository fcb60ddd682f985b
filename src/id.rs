//! Session ids: generated from the OS CSPRNG, parsed strictly, hashed before storage.

use std::fmt;

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Shortest accepted id, in hex characters (64 bits: macaron's default of 16).
pub const MIN_ID_LENGTH: usize = 16;
/// Longest accepted id, in hex characters (512 bits).
pub const MAX_ID_LENGTH: usize = 128;
/// Default id length: 32 hex characters, 128 bits from the OS CSPRNG.
pub const DEFAULT_ID_LENGTH: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `IS_LOWER_HEX[b]`: whether byte `b` is one of [`HEX`] (a table: one load per byte).
static IS_LOWER_HEX: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < HEX.len() {
        table[HEX[i] as usize] = true;
        i += 1;
    }
    table
};

/// A validated session id: exactly the configured number of lowercase hex characters.
///
/// This newtype is the only way a cookie value reaches a [`Provider`](crate::Provider):
/// it is built by [`SessionId::generate`] or [`SessionId::parse`], never from a raw string.
/// Its `Debug` output is redacted, so it can't leak into logs by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Box<str>);

impl SessionId {
    /// Generates a fresh id of `length` hex characters from the OS random number generator.
    ///
    /// Odd lengths work (macaron's did not). Fails only if the OS generator fails.
    pub fn generate(length: usize) -> Result<Self> {
        check_length(length)?;
        let mut bytes = [0u8; MAX_ID_LENGTH / 2];
        let bytes = &mut bytes[..length.div_ceil(2)];
        OsRng
            .try_fill_bytes(bytes)
            .map_err(|e| Error::Random(Box::new(e)))?;
        let mut out = String::with_capacity(length);
        for b in bytes.iter() {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
        out.truncate(length);
        Ok(SessionId(out.into_boxed_str()))
    }

    /// Parses `value` as an id of exactly `length` lowercase hex characters.
    ///
    /// ```
    /// use sessioner::SessionId;
    /// assert!(SessionId::parse("0123456789abcdef", 16).is_ok());
    /// assert!(SessionId::parse("../../etc/passwd", 16).is_err());
    /// assert!(SessionId::parse("0123456789ABCDEF", 16).is_err());
    /// ```
    pub fn parse(value: &str, length: usize) -> Result<Self> {
        if value.len() == length
            && (MIN_ID_LENGTH..=MAX_ID_LENGTH).contains(&length)
            && value.bytes().all(|b| IS_LOWER_HEX[usize::from(b)])
        {
            Ok(SessionId(value.into()))
        } else {
            Err(Error::InvalidSessionId)
        }
    }

    /// The id as sent in the cookie.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key a persistent backend stores this session under: the SHA-256 of the id, in hex.
    ///
    /// A dump of the store therefore yields no usable cookie values, and no file name or
    /// database key is ever derived from client input directly.
    pub fn storage_key(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut out = String::with_capacity(64);
        for b in digest.iter() {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
        out
    }
}

pub(crate) fn check_length(length: usize) -> Result<()> {
    if (MIN_ID_LENGTH..=MAX_ID_LENGTH).contains(&length) {
        Ok(())
    } else {
        Err(Error::invalid(
            "ID_LENGTH",
            format!(
                "must be between {MIN_ID_LENGTH} and {MAX_ID_LENGTH} hex characters, got {length}"
            ),
        ))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_unique_fixed_length_lowercase_hex() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = SessionId::generate(DEFAULT_ID_LENGTH).unwrap();
            assert_eq!(id.as_str().len(), 32);
            assert!(SessionId::parse(id.as_str(), 32).is_ok());
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn odd_lengths_round_trip() {
        for len in [17, 21, 33, 127] {
            let id = SessionId::generate(len).unwrap();
            assert_eq!(id.as_str().len(), len);
            assert_eq!(SessionId::parse(id.as_str(), len).unwrap(), id);
        }
    }

    #[test]
    fn hostile_values_are_rejected() {
        for v in [
            "../../etc/passwd",
            "..\\x",
            "%2e%2e%2f",
            "a",
            "",
            "0123456789abcdeg",
            "0123456789abcde\0",
            "0123456789abcdé",
        ] {
            assert!(SessionId::parse(v, 16).is_err(), "{v:?} accepted");
        }
        assert!(SessionId::parse(&"a".repeat(10_000), 16).is_err());
        assert!(SessionId::generate(15).is_err());
        assert!(SessionId::generate(129).is_err());
    }

    #[test]
    fn storage_key_is_not_the_id_and_debug_is_redacted() {
        let id = SessionId::generate(32).unwrap();
        assert_ne!(id.storage_key(), id.as_str());
        assert_eq!(id.storage_key().len(), 64);
        assert!(!format!("{id:?}").contains(id.as_str()));
    }
}
