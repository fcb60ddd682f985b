//! The redis provider's ProviderConfig: macaron's comma-separated settings, the docs'
//! positional form, or a URL.
//!
//! - A config containing `://` is a URL (`redis`, `rediss`, `redis+unix`, `unix`); anything
//!   else is parts separated by commas (a trailing `;` is allowed).
//! - Leading parts without `=` are positional, as macaron's and beego's docs print them
//!   (`127.0.0.1:6379,100,macaron`, `127.0.0.1:6379`): address, pool size (ignored),
//!   password, db, idle timeout (ignored); at most five, each may be empty. `name=value`
//!   settings may follow; a positional part after a setting is an error. A password holding
//!   `,` or `=` needs the `password=` setting or a URL.
//! - Both forms give the same [`Config`]: the connection info, the key prefix (default
//!   [`DEFAULT_PREFIX`]) and the timeout (default [`DEFAULT_TIMEOUT`]).
//! - `prefix` and `timeout_ms` are sessioner's own settings, also as URL query parameters
//!   (taken out of the URL before the redis crate reads it); `pool_size` and `idle_timeout`
//!   are accepted and ignored.
//! - Invalid input is [`Error::ProviderConfig`]: an unknown setting, a setting without `=`,
//!   an `addr` that is not `host:port`, a negative `db`, a zero or non-numeric `timeout_ms`,
//!   another URL scheme, a URL fragment (`#insecure` would skip certificate checks).

use std::fmt;
use std::time::Duration;

use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, NAME};
use crate::error::{Error, Result};
use crate::provider::ProviderContext;

/// The positional parts, in order, by the setting each one stands for.
const POSITIONAL: [&str; 5] = ["addr", "pool_size", "password", "db", "idle_timeout"];

/// A parsed ProviderConfig.
pub(super) struct Config {
    pub(super) info: ConnectionInfo,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
}

impl Config {
    pub(super) fn parse(config: &str) -> Result<Self> {
        let config = config.trim();
        if config.contains("://") {
            Self::parse_url(config)
        } else {
            Self::parse_settings(config)
        }
    }

    fn parse_settings(config: &str) -> Result<Self> {
        let mut host = "127.0.0.1".to_owned();
        let mut port = 6379u16;
        let mut unix = false;
        let mut addr = None;
        let mut settings = ::redis::RedisConnectionInfo::default();
        let mut prefix = DEFAULT_PREFIX.to_owned();
        let mut timeout = DEFAULT_TIMEOUT;
        let parts: Vec<&str> = config
            .trim_end_matches(';')
            .split(',')
            .map(str::trim)
            .collect();
        let positional = parts.iter().take_while(|p| !p.contains('=')).count();
        if positional > POSITIONAL.len() {
            return Err(bad(format!(
                "`{}` is not `name=value`, and the positional form has at most {} parts ({})",
                parts[POSITIONAL.len()],
                POSITIONAL.len(),
                POSITIONAL.join(", ")
            )));
        }
        let named = parts[positional..].iter().filter(|p| !p.is_empty());
        let positional: Vec<(&str, &str)> = parts[..positional]
            .iter()
            .zip(POSITIONAL)
            .filter(|(value, _)| !value.is_empty())
            .map(|(value, name)| (name, *value))
            .collect();
        for (name, value) in &positional {
            if matches!(*name, "pool_size" | "idle_timeout") && value.parse::<u64>().is_err() {
                return Err(bad(format!("`{value}` (the {name} part) is not a number")));
            }
        }
        for (name, value) in positional.into_iter().chain(named.map(|part| {
            // Every part after the first `name=value` must be one too.
            part.split_once('=').unwrap_or(("", part))
        })) {
            if name.is_empty() {
                return Err(bad(format!(
                    "`{value}` is not `name=value` (positional parts come first)"
                )));
            }
            let value = value.trim();
            match name.trim() {
                "network" => match value {
                    "tcp" => unix = false,
                    "unix" => unix = true,
                    _ => return Err(bad("network must be `tcp` or `unix`")),
                },
                "addr" => addr = Some(value.to_owned()),
                "password" if !value.is_empty() => settings = settings.set_password(value),
                "username" if !value.is_empty() => settings = settings.set_username(value),
                "password" | "username" => {}
                "db" => {
                    let db = value
                        .parse::<i64>()
                        .ok()
                        .filter(|db| *db >= 0)
                        .ok_or_else(|| {
                            bad(format!("db `{value}` is not a non-negative integer"))
                        })?;
                    settings = settings.set_db(db);
                }
                "prefix" => prefix = value.to_owned(),
                "timeout_ms" => timeout = parse_timeout(value)?,
                // One multiplexed connection replaces macaron's pool; nothing to tune.
                "pool_size" | "idle_timeout" => {}
                other => return Err(bad(format!("unknown setting `{other}`"))),
            }
        }
        let addr = match (unix, addr) {
            (true, Some(path)) => ConnectionAddr::Unix(path.into()),
            (true, None) => return Err(bad("network=unix needs addr=<socket path>")),
            (false, Some(addr)) => {
                let (h, p) = addr
                    .rsplit_once(':')
                    .ok_or_else(|| bad(format!("addr `{addr}` is not host:port")))?;
                port = p
                    .parse()
                    .map_err(|_| bad(format!("addr `{addr}` has an invalid port")))?;
                host = h.trim_start_matches('[').trim_end_matches(']').to_owned();
                ConnectionAddr::Tcp(host, port)
            }
            (false, None) => ConnectionAddr::Tcp(host, port),
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?
            .set_redis_settings(settings);
        Ok(Config {
            info,
            prefix,
            timeout,
        })
    }

    fn parse_url(config: &str) -> Result<Self> {
        let mut url = url::Url::parse(config).map_err(|e| bad(format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(bad(
                "the URL scheme must be redis, rediss, redis+unix or unix",
            ));
        }
        if url.fragment().is_some() {
            return Err(bad(
                "URL fragments (such as #insecure) are refused: certificates are always checked",
            ));
        }
        let mut prefix = DEFAULT_PREFIX.to_owned();
        let mut timeout = DEFAULT_TIMEOUT;
        let mut rest = Vec::new();
        for (name, value) in url.query_pairs() {
            match &*name {
                "prefix" => prefix = value.into_owned(),
                "timeout_ms" => timeout = parse_timeout(&value)?,
                "pool_size" | "idle_timeout" => {}
                _ => rest.push((name.into_owned(), value.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let info = url
            .into_connection_info()
            .map_err(|e| bad(format!("invalid URL: {e}")))?;
        Ok(Config {
            info,
            prefix,
            timeout,
        })
    }
}

fn parse_timeout(value: &str) -> Result<Duration> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| bad("timeout_ms must be a positive integer"))
}

fn bad(reason: impl fmt::Display) -> Error {
    ProviderContext::error(NAME, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macaron_settings() {
        let c = Config::parse(
            "network=tcp,addr=10.0.0.1:6380,password=pw,db=2,pool_size=100,idle_timeout=180,prefix=app:;",
        )
        .unwrap();
        assert_eq!(c.info.addr().to_string(), "10.0.0.1:6380");
        assert_eq!(c.info.redis_settings().db(), 2);
        assert_eq!(c.info.redis_settings().password(), Some("pw"));
        assert_eq!(c.prefix, "app:");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        let d = Config::parse("").unwrap();
        assert_eq!(d.info.addr().to_string(), "127.0.0.1:6379");
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        for bad in [
            "addr=nope",
            "db=-1",
            "color=red",
            "timeout_ms=0",
            "network=udp",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// The positional forms macaron's and beego's docs print: address, pool size, password,
    /// and beego's db and idle timeout; `name=value` settings may follow.
    #[test]
    fn the_docs_positional_forms() {
        let c = Config::parse("127.0.0.1:6379,100,macaron").unwrap();
        assert_eq!(c.info.addr().to_string(), "127.0.0.1:6379");
        assert_eq!(c.info.redis_settings().password(), Some("macaron"));
        assert_eq!(c.info.redis_settings().db(), 0);
        let c = Config::parse("127.0.0.1:6379,100,astaxie").unwrap();
        assert_eq!(c.info.redis_settings().password(), Some("astaxie"));
        for bare in ["127.0.0.1:6379", "127.0.0.1:7070"] {
            let c = Config::parse(bare).unwrap();
            assert_eq!(c.info.addr().to_string(), bare);
            assert_eq!(c.info.redis_settings().password(), None);
            assert_eq!(c.prefix, DEFAULT_PREFIX);
        }
        let c = Config::parse("10.0.0.1:6380,,pw,3,30,prefix=app:,timeout_ms=250").unwrap();
        assert_eq!(c.info.addr().to_string(), "10.0.0.1:6380");
        assert_eq!(c.info.redis_settings().password(), Some("pw"));
        assert_eq!(c.info.redis_settings().db(), 3);
        assert_eq!(c.prefix, "app:");
        assert_eq!(c.timeout, Duration::from_millis(250));
        let c = Config::parse("127.0.0.1:6379,100,").unwrap();
        assert_eq!(c.info.redis_settings().password(), None);
    }

    /// Nonsense is an error naming the part, never a panic; a password is never echoed.
    #[test]
    fn nonsense_names_the_part() {
        for (config, named) in [
            ("127.0.0.1", "`127.0.0.1`"),
            ("127.0.0.1:http,100,pw", "`127.0.0.1:http`"),
            ("127.0.0.1:6379,many,pw", "`many`"),
            ("127.0.0.1:6379,100,pw,zero", "`zero`"),
            ("127.0.0.1:6379,100,pw,0,30,extra", "`extra`"),
            ("prefix=a:,127.0.0.1:6379", "`127.0.0.1:6379`"),
            ("127.0.0.1:6379,colour=red", "`colour`"),
        ] {
            let err = Config::parse(config).err().unwrap().to_string();
            assert!(err.contains(named), "{config}: {err}");
            assert!(!err.contains("pw"), "{config} echoed the password: {err}");
        }
    }

    #[test]
    fn urls() {
        let c =
            Config::parse("redis://:s%2Cecret@127.0.0.1:7000/3?prefix=x:&timeout_ms=250").unwrap();
        assert_eq!(c.info.addr().to_string(), "127.0.0.1:7000");
        assert_eq!(c.info.redis_settings().db(), 3);
        assert_eq!(c.info.redis_settings().password(), Some("s,ecret"));
        assert_eq!(c.prefix, "x:");
        assert_eq!(c.timeout, Duration::from_millis(250));
        let tls = Config::parse("rediss://example.com").unwrap();
        assert!(matches!(
            tls.info.addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
        assert!(Config::parse("rediss://example.com#insecure").is_err());
        assert!(Config::parse("http://example.com").is_err());
    }
}
