//! [`Options`]: macaron's option set under Rust names, filled from a config section.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::{DEFAULT_ID_LENGTH, check_length};
use crate::provider;

/// The `SameSite` attribute of the session cookie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Sent on same-site requests and top-level navigations (the default).
    #[default]
    Lax,
    /// Sent everywhere; browsers require `secure` with it, so sessioner does too.
    None,
}

/// Session middleware options: macaron's `session.Options`, field for field.
///
/// Every field starts *unset* (`""` or `None`, which is what `Default` gives). An unset field
/// is read from the config [`section`](Options::section): first from the environment variable
/// `<SECTION>_<KEY>` (e.g. `SESSION_PROVIDER`), then from the `[section]` of the ini file
/// [`config_file`](Options::config_file), with macaron's key names; failing both it takes the
/// default listed below. Values set in code always win.
///
/// | field | ini key | default |
/// |---|---|---|
/// | `provider` | `PROVIDER` | `"memory"` |
/// | `provider_config` | `PROVIDER_CONFIG` | the provider's own (`file`: `data/sessions`) |
/// | `cookie_name` | `COOKIE_NAME` | `"sessioner"` |
/// | `cookie_path` | `COOKIE_PATH` | `"/"` |
/// | `gc_interval` | `GC_INTERVAL_TIME` (seconds) | 3600 s |
/// | `max_lifetime` | `MAX_LIFE_TIME` (seconds) | = `gc_interval` |
/// | `secure` | `SECURE` | `false` |
/// | `cookie_lifetime` | `COOKIE_LIFE_TIME` (seconds, 0 = browser session) | browser session |
/// | `domain` | `DOMAIN` | none (host-only cookie) |
/// | `id_length` | `ID_LENGTH` (hex characters, 16..=128) | 32 (128 bits) |
/// | `same_site` | `SAME_SITE` (`strict`, `lax`, `none`) | `Lax` |
/// | `absolute_lifetime` | `ABSOLUTE_LIFE_TIME` (seconds, 0 = none) | none |
/// | `ignore_release_for_websocket` | `IGNORE_RELEASE_FOR_WEBSOCKET` | `false` |
/// | `section` | | `"session"` |
///
/// ```
/// use std::time::Duration;
/// use sessioner::Options;
///
/// let options = Options {
///     provider: "file".into(),
///     provider_config: "data/sessions".into(),
///     max_lifetime: Some(Duration::from_secs(30 * 60)),
///     ..Default::default()
/// };
/// # let _ = options;
/// ```
#[derive(Clone, Default)]
pub struct Options {
    /// Registered provider name: `memory` (the default: nothing to set up), `file`, and
    /// whatever the enabled features and [`register`](crate::register) add.
    pub provider: String,
    /// Provider-specific configuration (a directory for `file`); empty means the provider's
    /// default. Redacted in `Debug`, since it may hold a password.
    pub provider_config: String,
    /// Name of the session cookie. Default `sessioner`: short, and says what set it.
    pub cookie_name: String,
    /// `Path` of the session cookie. Default `/`: the whole site shares one session.
    pub cookie_path: String,
    /// How often expired sessions are swept. Default one hour, as macaron.
    pub gc_interval: Option<Duration>,
    /// Idle lifetime of a session on the server, checked on every read. Default: `gc_interval`.
    pub max_lifetime: Option<Duration>,
    /// Send the cookie over HTTPS only. Default `false` so plain-HTTP development works;
    /// turn it on in production.
    pub secure: Option<bool>,
    /// `Max-Age` of the cookie; zero means a browser-session cookie (the default).
    pub cookie_lifetime: Option<Duration>,
    /// `Domain` of the cookie. Default empty: a host-only cookie, the narrowest scope.
    pub domain: String,
    /// Session id length in hex characters. Default 32 (128 bits, OWASP's minimum).
    pub id_length: Option<usize>,
    /// The config section unset options are read from. Default `session`, as macaron.
    pub section: String,
    /// `SameSite` of the cookie. Default `Lax`: no cross-site POSTs carry the session.
    pub same_site: Option<SameSite>,
    /// Optional absolute lifetime, never extended by activity. Default: none.
    pub absolute_lifetime: Option<Duration>,
    /// Skip saving the session on WebSocket upgrade requests. Default `false`.
    pub ignore_release_for_websocket: Option<bool>,
    /// An ini file whose `[section]` supplies unset options. Default: none.
    pub config_file: Option<PathBuf>,
    /// The clock expiry is judged by. Default: the system clock.
    pub clock: Clock,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("provider", &self.provider)
            .field("provider_config", &"<redacted>")
            .field("cookie_name", &self.cookie_name)
            .field("cookie_path", &self.cookie_path)
            .field("gc_interval", &self.gc_interval)
            .field("max_lifetime", &self.max_lifetime)
            .field("secure", &self.secure)
            .field("cookie_lifetime", &self.cookie_lifetime)
            .field("domain", &self.domain)
            .field("id_length", &self.id_length)
            .field("section", &self.section)
            .field("same_site", &self.same_site)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field(
                "ignore_release_for_websocket",
                &self.ignore_release_for_websocket,
            )
            .field("config_file", &self.config_file)
            .finish()
    }
}

/// Options with every value decided and validated.
#[derive(Clone)]
pub(crate) struct Config {
    pub provider: String,
    pub provider_config: String,
    pub cookie_name: String,
    pub cookie_path: String,
    pub gc_interval: Duration,
    pub max_lifetime: Duration,
    pub secure: bool,
    pub cookie_lifetime: Option<Duration>,
    pub domain: Option<String>,
    pub id_length: usize,
    pub same_site: SameSite,
    pub absolute_lifetime: Option<Duration>,
    pub ignore_release_for_websocket: bool,
    pub clock: Clock,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("provider", &self.provider)
            .field("cookie_name", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

/// Where unset options come from: environment variables, then an ini section.
struct Source<'a> {
    env_prefix: String,
    ini: HashMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.env)(&format!("{}_{key}", self.env_prefix))
            .or_else(|| self.ini.get(key).cloned())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn string(&self, set: &str, key: &str, default: &str) -> String {
        if set.is_empty() {
            self.get(key).unwrap_or_else(|| default.to_owned())
        } else {
            set.to_owned()
        }
    }

    fn parsed<T: std::str::FromStr>(&self, set: Option<T>, key: &'static str) -> Result<Option<T>> {
        match set {
            Some(v) => Ok(Some(v)),
            None => self
                .get(key)
                .map(|v| {
                    v.parse()
                        .map_err(|_| Error::invalid(key, format!("cannot parse `{v}`")))
                })
                .transpose(),
        }
    }

    fn seconds(&self, set: Option<Duration>, key: &'static str) -> Result<Option<Duration>> {
        match set {
            Some(v) => Ok(Some(v)),
            None => Ok(self.parsed::<u64>(None, key)?.map(Duration::from_secs)),
        }
    }

    fn flag(&self, set: Option<bool>, key: &'static str) -> Result<bool> {
        match set {
            Some(v) => Ok(v),
            None => match self.get(key).map(|v| v.to_ascii_lowercase()) {
                None => Ok(false),
                Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
                Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
                Some(v) => Err(Error::invalid(key, format!("`{v}` is not a boolean"))),
            },
        }
    }
}

impl Options {
    /// Decides every value (code, then `<SECTION>_<KEY>` variables, then the ini file, then
    /// defaults) and validates the result.
    pub(crate) fn resolve(&self) -> Result<Config> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    pub(crate) fn resolve_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let section = if self.section.is_empty() {
            "session"
        } else {
            self.section.as_str()
        };
        let ini = match &self.config_file {
            Some(path) => read_ini_section(path, section)?,
            None => HashMap::new(),
        };
        let env_prefix = section
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        let src = Source {
            env_prefix,
            ini,
            env,
        };

        let gc_interval = src
            .seconds(self.gc_interval, "GC_INTERVAL_TIME")?
            .unwrap_or(Duration::from_secs(3600));
        let max_lifetime = src
            .seconds(self.max_lifetime, "MAX_LIFE_TIME")?
            .unwrap_or(gc_interval);
        let same_site = match self.same_site {
            Some(s) => s,
            None => match src
                .get("SAME_SITE")
                .map(|v| v.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("lax") => SameSite::Lax,
                Some("strict") => SameSite::Strict,
                Some("none") => SameSite::None,
                Some(v) => {
                    return Err(Error::invalid(
                        "SAME_SITE",
                        format!("`{v}` is not strict, lax or none"),
                    ));
                }
            },
        };
        let config = Config {
            provider: src.string(&self.provider, "PROVIDER", "memory"),
            provider_config: src.string(&self.provider_config, "PROVIDER_CONFIG", ""),
            cookie_name: src.string(&self.cookie_name, "COOKIE_NAME", "sessioner"),
            cookie_path: src.string(&self.cookie_path, "COOKIE_PATH", "/"),
            gc_interval,
            max_lifetime,
            secure: src.flag(self.secure, "SECURE")?,
            cookie_lifetime: src
                .seconds(self.cookie_lifetime, "COOKIE_LIFE_TIME")?
                .filter(|d| !d.is_zero()),
            domain: Some(src.string(&self.domain, "DOMAIN", "")).filter(|d| !d.is_empty()),
            id_length: src
                .parsed(self.id_length, "ID_LENGTH")?
                .unwrap_or(DEFAULT_ID_LENGTH),
            same_site,
            absolute_lifetime: src
                .seconds(self.absolute_lifetime, "ABSOLUTE_LIFE_TIME")?
                .filter(|d| !d.is_zero()),
            ignore_release_for_websocket: src.flag(
                self.ignore_release_for_websocket,
                "IGNORE_RELEASE_FOR_WEBSOCKET",
            )?,
            clock: self.clock.clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> Result<()> {
        check_length(self.id_length)?;
        if !is_token(&self.cookie_name) {
            return Err(Error::invalid(
                "COOKIE_NAME",
                "must be a non-empty token without spaces, `;`, `=` or other separators",
            ));
        }
        if !self.cookie_path.starts_with('/')
            || !self
                .cookie_path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';')
        {
            return Err(Error::invalid(
                "COOKIE_PATH",
                "must start with `/` and hold no spaces, `;` or control characters",
            ));
        }
        if let Some(domain) = &self.domain
            && !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(Error::invalid(
                "DOMAIN",
                "may hold only letters, digits, `.` and `-`",
            ));
        }
        if self.gc_interval.is_zero() {
            return Err(Error::invalid("GC_INTERVAL_TIME", "must be positive"));
        }
        if self.max_lifetime.is_zero() {
            return Err(Error::invalid("MAX_LIFE_TIME", "must be positive"));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(Error::invalid(
                "SAME_SITE",
                "`none` requires `secure`, as browsers do",
            ));
        }
        if !provider::is_registered(&self.provider) {
            return Err(Error::UnknownProvider(self.provider.clone()));
        }
        Ok(())
    }
}

/// RFC 6265 cookie-name: a token of visible ASCII without separators.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Reads `[section]` of an ini file into upper-cased keys.
fn read_ini_section(path: &Path, section: &str) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            "config_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    Ok(parse_ini_section(&text, section))
}

fn parse_ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut current = String::new();
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current.eq_ignore_ascii_case(section)
            && let Some((key, value)) = line.split_once('=')
        {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('`').and_then(|v| v.strip_suffix('`')))
                .unwrap_or(value);
            out.insert(key.trim().to_ascii_uppercase(), value.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_section_is_parsed_with_macaron_keys() {
        let text = "; comment\n[other]\nPROVIDER = file\n[session]\nPROVIDER = file\nprovider_config = \"data/x\"\nCOOKIE_NAME=my\n";
        let map = parse_ini_section(text, "session");
        assert_eq!(map["PROVIDER"], "file");
        assert_eq!(map["PROVIDER_CONFIG"], "data/x");
        assert_eq!(map["COOKIE_NAME"], "my");
        assert_eq!(parse_ini_section(text, "other").len(), 1);
    }

    #[test]
    fn code_beats_env_beats_ini_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("app.ini");
        std::fs::write(
            &ini,
            "[web]\nCOOKIE_NAME = from_ini\nCOOKIE_PATH = /ini\nID_LENGTH = 20\n",
        )
        .unwrap();
        let env = |k: &str| (k == "WEB_COOKIE_PATH").then(|| "/env".to_owned());
        let opts = Options {
            section: "web".into(),
            config_file: Some(ini),
            ..Default::default()
        };
        let c = opts.resolve_with(&env).unwrap();
        assert_eq!(
            (c.cookie_name.as_str(), c.cookie_path.as_str(), c.id_length),
            ("from_ini", "/env", 20)
        );
        let c = Options {
            cookie_path: "/code".into(),
            ..opts
        }
        .resolve_with(&env)
        .unwrap();
        assert_eq!(c.cookie_path, "/code");
        let c = Options::default().resolve_with(&|_| None).unwrap();
        assert_eq!(
            (c.provider.as_str(), c.cookie_name.as_str(), c.id_length),
            ("memory", "sessioner", 32)
        );
        assert_eq!(c.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn bad_options_are_typed_errors() {
        let none = |_: &str| None;
        let bad = [
            Options {
                provider: "nope".into(),
                ..Default::default()
            },
            Options {
                cookie_name: "a b".into(),
                ..Default::default()
            },
            Options {
                cookie_name: "a;b".into(),
                ..Default::default()
            },
            Options {
                cookie_path: "x".into(),
                ..Default::default()
            },
            Options {
                domain: "a;b".into(),
                ..Default::default()
            },
            Options {
                id_length: Some(15),
                ..Default::default()
            },
            Options {
                same_site: Some(SameSite::None),
                ..Default::default()
            },
            Options {
                gc_interval: Some(Duration::ZERO),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(o.resolve_with(&none).is_err(), "{o:?} accepted");
        }
        let env = |k: &str| (k == "SESSION_ID_LENGTH").then(|| "abc".to_owned());
        assert!(matches!(
            Options::default().resolve_with(&env),
            Err(Error::InvalidOption {
                option: "ID_LENGTH",
                ..
            })
        ));
    }
}
