//! The memcache provider's ProviderConfig: servers and settings separated by `;`.
//!
//! - An item with `=` is a setting (`prefix`, `timeout_ms`); any other is a server address,
//!   `host:port`, `host` (port 11211) or `[v6 address]:port`. Blank items are skipped, so a
//!   trailing `;` is allowed.
//! - No server at all means `127.0.0.1:11211`.
//! - Invalid input is [`Error::ProviderConfig`] naming the item: an unknown setting, an
//!   address with a bad port or a space, a prefix memcached cannot take in a key (a space, a
//!   control character, longer than [`MAX_PREFIX`]), a zero or non-numeric `timeout_ms`.

use std::fmt;
use std::time::Duration;

use super::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, NAME};
use crate::error::{Error, Result};
use crate::provider::ProviderContext;

/// memcached's limit on a key (250 bytes) less a storage key (64 hex characters).
pub const MAX_PREFIX: usize = 250 - 64;
const DEFAULT_PORT: u16 = 11211;

/// A parsed ProviderConfig.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) servers: Vec<String>,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
}

impl Config {
    pub(super) fn parse(config: &str) -> Result<Self> {
        let mut servers = Vec::new();
        let mut prefix = DEFAULT_PREFIX.to_owned();
        let mut timeout = DEFAULT_TIMEOUT;
        for item in config.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((name, value)) => match name.trim() {
                    "prefix" => prefix = parse_prefix(value.trim())?,
                    "timeout_ms" => timeout = parse_timeout(value.trim())?,
                    other => return Err(bad(format!("unknown setting `{other}`"))),
                },
                None => servers.push(parse_addr(item)?),
            }
        }
        if servers.is_empty() {
            servers.push(format!("127.0.0.1:{DEFAULT_PORT}"));
        }
        Ok(Config {
            servers,
            prefix,
            timeout,
        })
    }
}

/// `host:port`, `host` or `[v6]:port`, as `host:port` for connecting.
fn parse_addr(item: &str) -> Result<String> {
    let invalid = |why: &str| bad(format!("server `{item}` {why}"));
    if item.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains a space"));
    }
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("lacks its closing `]`"))?;
        match after {
            "" => (format!("[{host}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{host}]"), Some(port)),
                None => return Err(invalid("is not `[address]:port`")),
            },
        }
    } else {
        match item.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(invalid("is an IPv6 address without `[ ]`"));
            }
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (item.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid("has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("has an invalid port"))?,
    };
    Ok(format!("{host}:{port}"))
}

fn parse_prefix(value: &str) -> Result<String> {
    if value.len() > MAX_PREFIX {
        return Err(bad(format!(
            "prefix is longer than {MAX_PREFIX} bytes (memcached keys hold 250)"
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "prefix may hold only printable ASCII without spaces (memcached keys)",
        ));
    }
    Ok(value.to_owned())
}

fn parse_timeout(value: &str) -> Result<Duration> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| bad(format!("timeout_ms `{value}` is not a positive integer")))
}

fn bad(reason: impl fmt::Display) -> Error {
    ProviderContext::error(NAME, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(config: &str) -> Vec<String> {
        Config::parse(config).unwrap().servers
    }

    #[test]
    fn the_docs_addresses() {
        // macaron's and beego's examples.
        assert_eq!(servers("127.0.0.1:9090"), ["127.0.0.1:9090"]);
        assert_eq!(servers("127.0.0.1:7080"), ["127.0.0.1:7080"]);
        assert_eq!(
            servers("127.0.0.1:11211;10.0.0.2:11212; cache.local ;"),
            ["127.0.0.1:11211", "10.0.0.2:11212", "cache.local:11211"]
        );
        assert_eq!(servers(""), ["127.0.0.1:11211"]);
        assert_eq!(servers("[::1]:11300;[::1]"), ["[::1]:11300", "[::1]:11211"]);
    }

    #[test]
    fn settings() {
        let c = Config::parse("127.0.0.1:9090;prefix=app:s:;timeout_ms=250").unwrap();
        assert_eq!(c.servers, ["127.0.0.1:9090"]);
        assert_eq!(c.prefix, "app:s:");
        assert_eq!(c.timeout, Duration::from_millis(250));
        let d = Config::parse("127.0.0.1:9090").unwrap();
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn nonsense_is_an_error_naming_the_part() {
        for (config, named) in [
            ("127.0.0.1:99999", "127.0.0.1:99999"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:x", "127.0.0.1:x"),
            (":11211", ":11211"),
            ("::1", "::1"),
            ("[::1", "[::1"),
            ("[::1]x", "[::1]x"),
            ("127.0.0.1:9090;color=red", "color"),
            ("timeout_ms=0", "timeout_ms"),
            ("timeout_ms=soon", "timeout_ms"),
            ("prefix=a b", "prefix"),
            (&format!("prefix={}", "p".repeat(MAX_PREFIX + 1)), "prefix"),
            ("127.0.0.1:6379,100,macaron", "127.0.0.1:6379,100,macaron"),
        ] {
            let err = Config::parse(config).unwrap_err().to_string();
            assert!(err.contains(named), "{config}: {err}");
        }
    }
}
