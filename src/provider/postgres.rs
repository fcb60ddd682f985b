//! `postgres` (also registered as `postgresql`, beego's name): sessions in a PostgreSQL table,
//! through [`sqlx`](https://docs.rs/sqlx/0.9).
//!
//! ProviderConfig, either lib/pq's `key=value` words (macaron's docs), values with spaces in
//! single quotes (`password='a b'`, `\'` and `\\` inside):
//!
//! ```text
//! user=a password=b dbname=c sslmode=disable host=127.0.0.1 port=5432 table=session
//! ```
//!
//! or a URL (beego's docs), `postgres://` or `postgresql://`:
//!
//! ```text
//! postgres://user:password@localhost/db?sslmode=verify-full&table=session&timeout_ms=3000
//! ```
//!
//! Settings, the same names in both forms:
//! - the server: `host` (a path starting with `/` is a Unix socket directory), `hostaddr`,
//!   `port`, `dbname`, `user`, `password`, `application_name`; unset ones come from the `PG*`
//!   environment variables, as libpq's;
//! - TLS through rustls with the system's root certificates: `sslmode` (`disable`, `allow`,
//!   `prefer`, the default, `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert`,
//!   `sslkey`; `connect_timeout` and `fallback_application_name` are accepted and ignored
//!   (`timeout_ms` bounds every call);
//! - sessioner's own: `table` (default `session`, `[schema.]name`), `pool_size` (default 10),
//!   `timeout_ms` (default 3000: the pool wait, each call, and the server's
//!   `statement_timeout`), `create_table` (default `true`).
//!
//! Any other name is [`Error::ProviderConfig`] naming it; no error echoes the password.
//!
//! The table (created at first use unless `create_table=false`; the index name is
//! `<table>_expiry_idx`):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "session" (
//!     session_key    CHAR(64) NOT NULL PRIMARY KEY,
//!     session_data   BYTEA    NOT NULL,
//!     session_expiry BIGINT   NOT NULL
//! );
//! CREATE INDEX IF NOT EXISTS "session_expiry_idx" ON "session" (session_expiry);
//! ```
//!
//! Round trips: `load`, `exists`, `count`, `destroy` and `create` one statement each; `save`
//! one `UPDATE` after a `load` of the session by this provider (else a `SELECT` first);
//! `regenerate` one `UPDATE`; `gc` one `DELETE` per 1,000 expired rows. See the shared
//! rules in the `sql` module's source.

use std::fmt;
use std::sync::Arc;

use sqlx::Postgres;
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgSslMode};

use super::sql::{Dialect, SqlOptions, SqlStore, Table, query_pairs, sql_provider};
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

const NAME: &str = "postgres";

/// The PostgreSQL SQL dialect.
pub(crate) struct Pg;

impl Dialect for Pg {
    type Db = Postgres;
    const NAME: &'static str = NAME;
    const QUOTE: char = '"';

    fn placeholder(n: usize, key: bool) -> String {
        // A text parameter compared with a CHAR column would skip the primary key index.
        if key {
            format!("${n}::bpchar")
        } else {
            format!("${n}")
        }
    }

    fn ddl(table: &Table) -> Vec<String> {
        let t = table.quoted('"');
        vec![
            // Concurrent `CREATE TABLE IF NOT EXISTS` can fail in PostgreSQL: serialize them.
            "SELECT pg_advisory_xact_lock(7301446155049346353)".into(),
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (session_key CHAR(64) NOT NULL PRIMARY KEY, \
                 session_data BYTEA NOT NULL, session_expiry BIGINT NOT NULL)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{}\" ON {t} (session_expiry)",
                table.index_name()
            ),
        ]
    }

    fn gc(table: &str, batch: u64) -> String {
        format!(
            "DELETE FROM {table} WHERE session_key IN (SELECT session_key FROM {table} \
             WHERE session_expiry <= $1 LIMIT {batch}) AND session_expiry <= $1"
        )
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn is_transient(error: &dyn DatabaseError) -> bool {
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // statement timeout), transaction rollbacks (deadlock), lock not available.
        error.code().is_some_and(|code| {
            ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c)) || code == "55P03"
        })
    }
}

/// The PostgreSQL provider.
pub struct PostgresProvider {
    store: SqlStore<Pg>,
}

impl PostgresProvider {
    /// A provider for `config` (see the [module docs](self) for the forms). Does not
    /// connect: the pool connects, and creates the table, on first use.
    pub fn new(config: &str, clock: Clock) -> Result<Self> {
        let (connect, options) = parse(config)?;
        let summary = format!(
            "{}@{}:{}/{}",
            connect.get_username(),
            connect.get_socket().map_or_else(
                || connect.get_host().to_owned(),
                |s| s.display().to_string()
            ),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        let connect = connect.options([("statement_timeout", options.timeout.as_millis())]);
        Ok(PostgresProvider {
            store: SqlStore::new(connect, options, clock, summary),
        })
    }

    /// The statements that create its table and index, for teams that manage schemas.
    pub fn ddl(&self) -> Vec<String> {
        self.store.ddl()[1..].to_vec()
    }
}

sql_provider!(PostgresProvider);

fn bad(reason: impl fmt::Display) -> Error {
    ProviderContext::error(NAME, reason)
}

/// Parses either form into the driver's options and ours.
fn parse(config: &str) -> Result<(PgConnectOptions, SqlOptions)> {
    let config = config.trim();
    let pairs = if config.starts_with("postgres://") || config.starts_with("postgresql://") {
        url_pairs(config)?
    } else {
        keyword_pairs(config)?
    };
    let mut connect = PgConnectOptions::new_without_pgpass();
    let mut options = SqlOptions::default();
    for (key, value) in pairs {
        if options.take(NAME, &key, &value)? {
            continue;
        }
        connect = match key.as_str() {
            "host" if value.starts_with('/') => connect.socket(&value),
            "host" | "hostaddr" => connect.host(&value),
            "port" => connect.port(
                value
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("port must be a number from 1 to 65535"))?,
            ),
            "dbname" => connect.database(&value),
            "user" => connect.username(&value),
            "password" => connect.password(&value),
            "application_name" => connect.application_name(&value),
            "sslmode" => connect.ssl_mode(value.parse::<PgSslMode>().map_err(|_| {
                bad("sslmode must be disable, allow, prefer, require, verify-ca or verify-full")
            })?),
            "sslrootcert" => connect.ssl_root_cert(&value),
            "sslcert" => connect.ssl_client_cert(&value),
            "sslkey" => connect.ssl_client_key(&value),
            "connect_timeout" | "fallback_application_name" => {
                tracing::debug!(setting = %key, "postgres setting ignored: timeout_ms applies");
                connect
            }
            other => return Err(bad(format!("unknown setting `{other}`"))),
        };
    }
    Ok((connect, options))
}

/// lib/pq's `key=value` words: whitespace between them, optional whitespace around `=`,
/// values in single quotes to hold spaces, `\` escaping the next character.
fn keyword_pairs(config: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = config.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The word may be part of a password: name the setting before it instead.
            return Err(bad(match pairs.last() {
                Some((previous, _)) => format!(
                    "a word without `=` follows `{previous}=` (quote values with spaces: \
                     {previous}='a b')"
                ),
                None => "the first word is not `key=value`".into(),
            }));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(bad(format!("the quoted value of `{key}` is not closed"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// A `postgres://user:password@host:port/dbname?key=value` URL as the same pairs.
fn url_pairs(config: &str) -> Result<Vec<(String, String)>> {
    let url = url::Url::parse(config).map_err(|e| bad(format!("invalid URL: {e}")))?;
    let decode = |part: &str, what: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                bad(format!(
                    "the URL's {what} is not UTF-8 once percent-decoded"
                ))
            })
    };
    let mut pairs = Vec::new();
    if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        pairs.push(("host".into(), decode(host, "host")?));
    }
    if let Some(port) = url.port() {
        pairs.push(("port".into(), port.to_string()));
    }
    if !url.username().is_empty() {
        pairs.push(("user".into(), decode(url.username(), "user")?));
    }
    if let Some(password) = url.password() {
        pairs.push(("password".into(), decode(password, "password")?));
    }
    let dbname = url.path().trim_start_matches('/');
    if !dbname.is_empty() {
        pairs.push(("dbname".into(), decode(dbname, "database name")?));
    }
    pairs.extend(query_pairs(NAME, url.query().unwrap_or(""))?);
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(config: &str) -> PgConnectOptions {
        parse(config).unwrap().0
    }

    #[test]
    fn macaron_keywords() {
        let o = options("user=a password=b dbname=c sslmode=disable host=db.local port=5433");
        assert_eq!(o.get_username(), "a");
        assert_eq!(o.get_database(), Some("c"));
        assert_eq!(o.get_host(), "db.local");
        assert_eq!(o.get_port(), 5433);
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable));
        let q = options(r"user = 'a b'  password='it\'s \\ x' dbname=c host=/run/postgresql");
        assert_eq!(q.get_username(), "a b");
        assert_eq!(
            q.get_socket().map(|p| p.display().to_string()).as_deref(),
            Some("/run/postgresql")
        );
    }

    #[test]
    fn beego_urls() {
        for scheme in ["postgres", "postgresql"] {
            let (o, s) = parse(&format!(
                "{scheme}://us%40er:p%2Fw@localhost/db?sslmode=verify-full&table=app.sess&pool_size=4"
            ))
            .unwrap();
            assert_eq!(o.get_username(), "us@er");
            assert_eq!(o.get_host(), "localhost");
            assert_eq!(o.get_port(), 5432);
            assert_eq!(o.get_database(), Some("db"));
            assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
            assert_eq!((s.table.to_string(), s.pool_size), ("app.sess".into(), 4));
        }
    }

    #[test]
    fn own_options_in_both_forms() {
        let (_, s) = parse("dbname=c table=t1 timeout_ms=500 create_table=false").unwrap();
        assert_eq!(s.table.to_string(), "t1");
        assert_eq!(s.timeout.as_millis(), 500);
        assert!(!s.create_table);
        let (_, d) = parse("").unwrap();
        assert_eq!(d.table.to_string(), "session");
    }

    #[test]
    fn errors_name_the_part_and_never_the_password() {
        let secret = "hunter2secret";
        for (config, part) in [
            (format!("user=a password={secret} colour=red"), "colour"),
            (format!("user=a password={secret} extra"), "password"),
            (format!("password='{secret}"), "password"),
            (format!("password={secret} port=x"), "port"),
            (format!("password={secret} table=a;b"), "table"),
            (format!("password={secret} sslmode=maybe"), "sslmode"),
            (
                format!("postgres://u:{secret}@h/db?pool_size=0"),
                "pool_size",
            ),
            (format!("postgres://u:{secret}@h/db?nope=1"), "nope"),
            (format!("postgres://u:{secret}@h:99999/db"), "URL"),
        ] {
            let err = parse(&config).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::ProviderConfig { .. }), "{config}");
            assert!(text.contains(part), "{text} does not name {part}");
            assert!(!text.contains(secret), "{text} echoes the password");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let p = PostgresProvider::new("user=a password=hunter2 dbname=c", Clock::system()).unwrap();
        let text = format!("{p:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("a@"), "{text}");
    }
}
