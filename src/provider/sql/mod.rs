//! What the `postgres` and `mysql` providers share: sessioner's own options, the validated
//! table name, the SQL, and the provider logic over a `sqlx` pool.
//!
//! Invariants:
//! - Every value (session key, record, deadline) is a bound parameter; the only text put
//!   into SQL is the table name, validated by [`Table::parse`] and quoted.
//! - A row is `session_key` ([`SessionId::storage_key`], 64 hex characters), `session_data`
//!   ([`Record::encode`]) and `session_expiry` (the idle deadline, ms since the epoch). The
//!   column is authoritative for the deadline: `load` puts it into the record.
//! - Every statement that reads or changes a session checks `session_expiry > now`: an
//!   expired row is never read, saved or moved, and never blocks a `create` or `regenerate`.
//! - `save` compares and swaps `session_data`: the update matches only the live row holding
//!   the bytes the change set was merged into, so concurrent saves of different keys all
//!   persist and a destroyed or regenerated session is never written back. The bytes come
//!   from this provider's last load or save of the session (no extra query), else one
//!   `SELECT`; after repeated conflicts the save locks the row (`SELECT ... FOR UPDATE`).
//! - Every call (pool wait and statements) is bounded by `timeout_ms`; a database that is
//!   down, refuses, or does not answer in time is [`Error::Unavailable`].

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Database;
use sqlx::error::DatabaseError;

use crate::error::Result;
use crate::provider::ProviderContext;

mod store;

pub(crate) use store::SqlStore;

/// The table name when the configuration names none (macaron's).
pub(crate) const DEFAULT_TABLE: &str = "session";
/// How long one call may take (pool wait included) when `timeout_ms` is not set.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Connections in the pool when `pool_size` is not set.
pub(crate) const DEFAULT_POOL_SIZE: u32 = 10;
/// Rows one `gc` statement deletes at most.
pub(crate) const GC_BATCH: u64 = 1_000;
/// Compare-and-swap attempts of one save before it locks the row instead.
pub(crate) const CAS_ATTEMPTS: usize = 8;
/// Deadlocks one save starts over after, before it gives up (a 503).
pub(crate) const DEADLOCK_RETRIES: usize = 8;
/// The last-seen records kept for saves: at most this many sessions ...
pub(crate) const RECENT_ENTRIES: usize = 4_096;
/// ... each at most this large.
pub(crate) const RECENT_RECORD_BYTES: usize = 16 * 1024;

/// A validated table name, optionally with one schema: `[schema.]name`, each part
/// `[A-Za-z_][A-Za-z0-9_]{0,62}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    pub(crate) fn parse(value: &str) -> std::result::Result<Self, String> {
        let valid = |part: &str| {
            let mut bytes = part.bytes();
            matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
                && part.len() <= 63
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let (schema, name) = match value.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, value),
        };
        if !valid(name) || schema.is_some_and(|s| !valid(s)) {
            return Err(
                "table must be `name` or `schema.name`, each a letter or `_` then up to 62 \
                 letters, digits or `_`"
                    .into(),
            );
        }
        Ok(Table {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The name quoted with `quote` on each part (`"s"."t"`, `` `s`.`t` ``).
    pub(crate) fn quoted(&self, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{quote}{schema}{quote}.{quote}{}{quote}", self.name),
            None => format!("{quote}{}{quote}", self.name),
        }
    }

    /// The expiry index's name: `<table>_expiry_idx`, or a hash of the table name where that
    /// would pass 63 characters.
    pub(crate) fn index_name(&self) -> String {
        let name = format!("{}_expiry_idx", self.name);
        if name.len() <= 63 {
            return name;
        }
        let digest = Sha256::digest(self.to_string().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("session_expiry_idx_{hex}")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// sessioner's own settings, with the same names in every config form.
#[derive(Clone, Debug)]
pub(crate) struct SqlOptions {
    pub(crate) table: Table,
    pub(crate) pool_size: u32,
    pub(crate) timeout: Duration,
    pub(crate) create_table: bool,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            table: Table {
                schema: None,
                name: DEFAULT_TABLE.into(),
            },
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
            create_table: true,
        }
    }
}

impl SqlOptions {
    /// Takes `key` if it is one of ours; `Ok(false)` leaves it to the driver's settings.
    pub(crate) fn take(&mut self, provider: &str, key: &str, value: &str) -> Result<bool> {
        let bad = |reason: &str| ProviderContext::error(provider, reason);
        match key {
            "table" => self.table = Table::parse(value).map_err(|r| bad(&r))?,
            "pool_size" => {
                self.pool_size = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| bad("pool_size must be an integer from 1 to 10000"))?;
            }
            "timeout_ms" => {
                self.timeout = value
                    .parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| bad("timeout_ms must be a positive integer"))?;
            }
            "create_table" => {
                self.create_table = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("create_table must be true or false")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Splits `?a=1&b=2` query text into pairs (percent-decoded, `+` as space).
pub(crate) fn query_pairs(provider: &str, query: &str) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query).map_err(|_| {
        ProviderContext::error(provider, "the `?` parameters are not `name=value&...`")
    })
}

/// One backend's SQL and error codes.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The driver.
    type Db: Database;
    /// The provider's registered name.
    const NAME: &'static str;
    /// How identifiers are quoted.
    const QUOTE: char;
    /// The `n`th (from 1) bound parameter; `key` when it is compared with `session_key`.
    fn placeholder(n: usize, key: bool) -> String;
    /// The statements that create the table and its index, run in one transaction.
    fn ddl(table: &Table) -> Vec<String>;
    /// Deletes at most [`GC_BATCH`] rows expired at `?` (bound once).
    fn gc(table: &str, batch: u64) -> String;
    /// Rows a statement changed.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;
    /// Whether a database error is a transient condition (shutdown, too many connections,
    /// timeout, deadlock), answered with a 503.
    fn is_transient(error: &dyn DatabaseError) -> bool;
}

/// Implements [`Provider`](crate::Provider), `Debug`, `factory` and `table` for a struct
/// whose field `store` is a [`SqlStore`] and which has `new(config, clock)`.
macro_rules! sql_provider {
    ($provider:ident) => {
        impl fmt::Debug for $provider {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.store.fmt(f)
            }
        }

        impl $provider {
            /// The registry factory.
            pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
                Ok(Arc::new($provider::new(&ctx.config, ctx.clock.clone())?))
            }

            /// The table it stores sessions in, as configured (`[schema.]name`).
            pub fn table(&self) -> String {
                self.store.table().to_string()
            }
        }

        #[async_trait::async_trait]
        impl $crate::provider::Provider for $provider {
            async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
                self.store.load(id).await
            }
            async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
                self.store.create(id, record).await
            }
            async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
                self.store.save(id, changes).await
            }
            async fn destroy(&self, id: &SessionId) -> Result<()> {
                self.store.destroy(id).await
            }
            async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
                self.store.regenerate(old, new).await
            }
            async fn exists(&self, id: &SessionId) -> Result<bool> {
                self.store.exists(id).await
            }
            async fn count(&self) -> Result<usize> {
                self.store.count().await
            }
            async fn gc(&self) -> Result<usize> {
                self.store.gc().await
            }
        }
    };
}
pub(crate) use sql_provider;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated() {
        for good in ["session", "_s", "app.session", "S_1", &"a".repeat(63)] {
            assert!(Table::parse(good).is_ok(), "{good} refused");
        }
        for bad in [
            "",
            "1s",
            "a-b",
            "a b",
            "s;drop",
            "a.b.c",
            ".s",
            "s.",
            "\"s\"",
            "`s`",
            "s'",
            &"a".repeat(64),
            "sé",
        ] {
            assert!(Table::parse(bad).is_err(), "{bad} accepted");
        }
        let t = Table::parse("app.session").unwrap();
        assert_eq!(t.quoted('"'), "\"app\".\"session\"");
        assert_eq!(t.index_name(), "session_expiry_idx");
        let long = Table::parse(&"a".repeat(63)).unwrap();
        assert!(long.index_name().len() <= 63);
    }

    #[test]
    fn own_options() {
        let mut o = SqlOptions::default();
        assert!(o.take("x", "pool_size", "3").unwrap());
        assert!(o.take("x", "timeout_ms", "250").unwrap());
        assert!(o.take("x", "create_table", "false").unwrap());
        assert!(o.take("x", "table", "s2").unwrap());
        assert!(!o.take("x", "charset", "utf8").unwrap());
        assert_eq!(
            (o.pool_size, o.timeout, o.create_table, o.table.to_string()),
            (3, Duration::from_millis(250), false, "s2".into())
        );
        for (k, v) in [
            ("pool_size", "0"),
            ("pool_size", "x"),
            ("timeout_ms", "0"),
            ("create_table", "no"),
            ("table", "a;b"),
        ] {
            assert!(o.take("x", k, v).is_err(), "{k}={v} accepted");
        }
    }
}
