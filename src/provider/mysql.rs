//! `mysql`: sessions in a MySQL or MariaDB table, through [`sqlx`](https://docs.rs/sqlx/0.9).
//!
//! ProviderConfig, either the Go driver's DSN (macaron's and beego's docs):
//!
//! ```text
//! username:password@protocol(address)/dbname?param=value
//! root:@tcp(127.0.0.1:3306)/test?charset=utf8&table=session
//! user:pw@unix(/run/mysqld/mysqld.sock)/db
//! ```
//!
//! (`tcp` with no address is `localhost:3306`; as in Go, the password runs to the last `@`
//! and the database name starts after the last `/`), or a URL:
//!
//! ```text
//! mysql://user:password@localhost:3306/db?ssl-mode=required&table=session
//! ```
//!
//! Parameters, the same names in both forms:
//! - TLS through rustls with the system's root certificates: `tls` (Go's `true`, `false`,
//!   `skip-verify`, `preferred`) or `ssl-mode` (`disabled`, `preferred`, the default,
//!   `required`, `verify_ca`, `verify_identity`), `ssl-ca`, `ssl-cert`, `ssl-key`; `socket`
//!   (URL form) for a Unix socket;
//! - Go driver parameters without a meaning here (`charset`, `collation`, `parseTime`, `loc`,
//!   `timeout`, `readTimeout`, `writeTimeout`, `allowNativePasswords`, ...) are accepted and
//!   ignored: keys are ASCII and records binary, and `timeout_ms` bounds every call;
//! - sessioner's own: `table` (default `session`, `[schema.]name`), `pool_size` (default 10),
//!   `timeout_ms` (default 3000: the pool wait and each call), `create_table` (default `true`).
//!
//! Any other name is [`Error::ProviderConfig`] naming it; no error echoes the password.
//!
//! The table (created at first use unless `create_table=false`; InnoDB for row locks):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `session` (
//!     session_key    CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
//!     session_data   LONGBLOB   NOT NULL,
//!     session_expiry BIGINT NOT NULL,
//!     PRIMARY KEY (session_key),
//!     INDEX `session_expiry_idx` (session_expiry)
//! ) ENGINE=InnoDB
//! ```
//!
//! Round trips as the `postgres` provider's: `load` one statement, `save` one `UPDATE` after a
//! `load` by this provider, `gc` one `DELETE ... LIMIT 1000` per batch.

use std::fmt;
use std::sync::Arc;

use sqlx::MySql;
use sqlx::error::DatabaseError;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlQueryResult, MySqlSslMode};

use super::sql::{Dialect, SqlOptions, SqlStore, Table, query_pairs, sql_provider};
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

const NAME: &str = "mysql";

/// Go driver parameters accepted and ignored.
const IGNORED: [&str; 22] = [
    "charset",
    "collation",
    "parseTime",
    "loc",
    "timeout",
    "readTimeout",
    "writeTimeout",
    "allowNativePasswords",
    "allowCleartextPasswords",
    "allowOldPasswords",
    "allowAllFiles",
    "clientFoundRows",
    "columnsWithAlias",
    "interpolateParams",
    "maxAllowedPacket",
    "multiStatements",
    "rejectReadOnly",
    "checkConnLiveness",
    "serverPubKey",
    "connectionAttributes",
    "timezone",
    "statement-cache-capacity",
];

/// The MySQL / MariaDB SQL dialect.
pub(crate) struct My;

impl Dialect for My {
    type Db = MySql;
    const NAME: &'static str = NAME;
    const QUOTE: char = '`';

    fn placeholder(_: usize, _: bool) -> String {
        "?".into()
    }

    fn ddl(table: &Table) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {} (session_key CHAR(64) CHARACTER SET ascii COLLATE \
             ascii_bin NOT NULL, session_data LONGBLOB NOT NULL, session_expiry BIGINT NOT \
             NULL, PRIMARY KEY (session_key), INDEX `{}` (session_expiry)) ENGINE=InnoDB",
            table.quoted('`'),
            table.index_name()
        )]
    }

    fn gc(table: &str, batch: u64) -> String {
        format!("DELETE FROM {table} WHERE session_expiry <= ? LIMIT {batch}")
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn is_transient(error: &dyn DatabaseError) -> bool {
        // Too many connections, shutdown, query interrupted, lock wait timeout, deadlock,
        // connection killed, statement timeouts (MariaDB, MySQL).
        error
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| {
                matches!(
                    e.number(),
                    1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 1969 | 3024
                )
            })
    }
}

/// The MySQL / MariaDB provider.
pub struct MysqlProvider {
    store: SqlStore<My>,
}

impl MysqlProvider {
    /// A provider for `config` (see the [module docs](self) for the forms). Does not
    /// connect: the pool connects, and creates the table, on first use.
    pub fn new(config: &str, clock: Clock) -> Result<Self> {
        let (connect, options) = parse(config)?;
        let summary = format!(
            "{}@{}/{}",
            connect.get_username(),
            connect.get_socket().map_or_else(
                || format!("{}:{}", connect.get_host(), connect.get_port()),
                |s| s.display().to_string()
            ),
            connect.get_database().unwrap_or_default()
        );
        Ok(MysqlProvider {
            store: SqlStore::new(connect, options, clock, summary),
        })
    }

    /// The statement that creates its table and index, for teams that manage schemas.
    pub fn ddl(&self) -> Vec<String> {
        self.store.ddl().to_vec()
    }
}

sql_provider!(MysqlProvider);

fn bad(reason: impl fmt::Display) -> Error {
    ProviderContext::error(NAME, reason)
}

/// The server part of either form, before the parameters.
struct Server {
    user: String,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    socket: Option<String>,
    dbname: String,
}

fn parse(config: &str) -> Result<(MySqlConnectOptions, SqlOptions)> {
    let config = config.trim();
    let (server, params) = if config.starts_with("mysql://") || config.starts_with("mariadb://") {
        url(config)?
    } else {
        go_dsn(config)?
    };
    let mut connect = MySqlConnectOptions::new().username(&server.user);
    if let Some(password) = &server.password {
        connect = connect.password(password);
    }
    if let Some(host) = &server.host {
        connect = connect.host(host);
    }
    if let Some(port) = server.port {
        connect = connect.port(port);
    }
    if let Some(socket) = &server.socket {
        connect = connect.socket(socket);
    }
    if !server.dbname.is_empty() {
        connect = connect.database(&server.dbname);
    }
    let mut options = SqlOptions::default();
    for (key, value) in params {
        if options.take(NAME, &key, &value)? {
            continue;
        }
        connect = match key.as_str() {
            "tls" => connect.ssl_mode(match value.as_str() {
                "true" => MySqlSslMode::VerifyIdentity,
                "false" => MySqlSslMode::Disabled,
                "skip-verify" => MySqlSslMode::Required,
                "preferred" => MySqlSslMode::Preferred,
                _ => return Err(bad("tls must be true, false, skip-verify or preferred")),
            }),
            "ssl-mode" | "sslmode" => connect.ssl_mode(value.parse().map_err(|_| {
                bad("ssl-mode must be disabled, preferred, required, verify_ca or verify_identity")
            })?),
            "ssl-ca" | "sslca" => connect.ssl_ca(&value),
            "ssl-cert" | "sslcert" => connect.ssl_client_cert(&value),
            "ssl-key" | "sslkey" => connect.ssl_client_key(&value),
            "socket" => connect.socket(&value),
            ignored if IGNORED.contains(&ignored) => {
                tracing::debug!(parameter = %key, "mysql parameter ignored");
                connect
            }
            other => return Err(bad(format!("unknown parameter `{other}`"))),
        };
    }
    Ok((connect, options))
}

type Parsed = (Server, Vec<(String, String)>);

/// `[user[:password]@][protocol[(address)]]/dbname[?params]`, split as the Go driver does.
fn go_dsn(dsn: &str) -> Result<Parsed> {
    let slash = dsn.rfind('/').ok_or_else(|| {
        bad("the DSN has no `/` before the database name (user:pw@tcp(host:port)/dbname)")
    })?;
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let (dbname, query) = tail.split_once('?').unwrap_or((tail, ""));
    let (credentials, address) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let (user, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((user, password)) => (user, Some(password.to_owned())),
            None => (c, None),
        },
        None => ("root", None),
    };
    let (protocol, addr) = match address.split_once('(') {
        Some((protocol, rest)) => (
            protocol,
            rest.strip_suffix(')')
                .ok_or_else(|| bad("the DSN's address lacks its closing `)`"))?,
        ),
        None => (address, ""),
    };
    let mut server = Server {
        user: user.to_owned(),
        password: password.filter(|p| !p.is_empty()),
        host: None,
        port: None,
        socket: None,
        dbname: percent_encoding::percent_decode_str(dbname)
            .decode_utf8()
            .map_err(|_| bad("the database name is not UTF-8 once percent-decoded"))?
            .into_owned(),
    };
    match protocol {
        "" | "tcp" => {
            let addr = if addr.is_empty() {
                "localhost:3306"
            } else {
                addr
            };
            let (host, port) = match addr.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') => (h, Some(p)),
                _ => (addr, None),
            };
            server.host = Some(host.trim_start_matches('[').trim_end_matches(']').into());
            server.port = port.map(parse_port).transpose()?;
        }
        "unix" => server.socket = Some(addr.into()),
        _ => return Err(bad("the DSN's protocol must be tcp or unix")),
    }
    Ok((server, query_pairs(NAME, query)?))
}

fn parse_port(port: &str) -> Result<u16> {
    port.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("port must be a number from 1 to 65535"))
}

/// `mysql://user:password@host:port/dbname?params`.
fn url(config: &str) -> Result<Parsed> {
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
    let user = if url.username().is_empty() {
        "root".into()
    } else {
        decode(url.username(), "user")?
    };
    let server = Server {
        user,
        password: url.password().map(|p| decode(p, "password")).transpose()?,
        host: url
            .host_str()
            .filter(|h| !h.is_empty())
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()),
        port: url.port(),
        socket: None,
        dbname: decode(url.path().trim_start_matches('/'), "database name")?,
    };
    Ok((server, query_pairs(NAME, url.query().unwrap_or(""))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(config: &str) -> MySqlConnectOptions {
        parse(config).unwrap().0
    }

    #[test]
    fn go_dsns_from_the_docs() {
        let o = options("root:@tcp(127.0.0.1:3306)/test?charset=utf8");
        assert_eq!(o.get_username(), "root");
        assert_eq!((o.get_host(), o.get_port()), ("127.0.0.1", 3306));
        assert_eq!(o.get_database(), Some("test"));
        let u = options("user:pw@unix(/run/mysqld/mysqld.sock)/db");
        assert_eq!(u.get_username(), "user");
        assert_eq!(
            u.get_socket().map(|p| p.display().to_string()).as_deref(),
            Some("/run/mysqld/mysqld.sock")
        );
        let t = options("u:p@a:ss@tcp/db?parseTime=true&loc=Local&tls=false");
        assert_eq!((t.get_host(), t.get_port()), ("localhost", 3306));
        assert!(matches!(t.get_ssl_mode(), MySqlSslMode::Disabled));
        let (_, s) =
            parse("u@tcp(h:1)/db?table=app.s&pool_size=2&timeout_ms=9&create_table=0").unwrap();
        assert_eq!(
            (
                s.table.to_string(),
                s.pool_size,
                s.timeout.as_millis(),
                s.create_table
            ),
            ("app.s".into(), 2, 9, false)
        );
    }

    #[test]
    fn urls() {
        let (o, s) =
            parse("mysql://us%40er:p%2Fw@db.local:3307/app?ssl-mode=required&table=t").unwrap();
        assert_eq!(o.get_username(), "us@er");
        assert_eq!((o.get_host(), o.get_port()), ("db.local", 3307));
        assert_eq!(o.get_database(), Some("app"));
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Required));
        assert_eq!(s.table.to_string(), "t");
    }

    #[test]
    fn errors_name_the_part_and_never_the_password() {
        let secret = "hunter2secret";
        for (config, part) in [
            (format!("u:{secret}@tcp(h:1)/db?colour=red"), "colour"),
            (format!("u:{secret}@tcp(h:1)/db?table=a;b"), "table"),
            (format!("u:{secret}@tcp(h:x)/db"), "port"),
            (format!("u:{secret}@udp(h:1)/db"), "protocol"),
            (format!("u:{secret}@tcp(h:1"), "/"),
            (format!("u:{secret}@tcp(h:1)/db?tls=maybe"), "tls"),
            (format!("mysql://u:{secret}@h/db?pool_size=x"), "pool_size"),
        ] {
            let err = parse(&config).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::ProviderConfig { .. }), "{config}");
            assert!(text.contains(part), "{text} does not name {part}");
            assert!(!text.contains(secret), "{text} echoes the password");
        }
        let p = MysqlProvider::new(&format!("u:{secret}@tcp(h:1)/db"), Clock::system()).unwrap();
        assert!(!format!("{p:?}").contains(secret));
    }
}
