//! The README's "Options" section, through real requests: every key of its table read from
//! the ini file and from the environment, each with an effect a browser sees; environment
//! before ini, code before both; `MAX_LIFE_TIME` defaulting to `GC_INTERVAL_TIME`; and
//! `sessioner()` panicking where `try_sessioner` returns the typed error.
//!
//! - Environment variables are process-wide and setting one is `unsafe` (which the crate
//!   forbids), so an `env` test runs its check in a child process of this test binary (the
//!   ignored `env_child` test next to it), with `<SECTION>_<KEY>` set for that child only.
//! - Every test reads a section of its own (`opt_<module>`), so neither parallel tests nor
//!   `SESSION_*` variables in the developer's shell reach it.
//! - Lifetimes are judged by a `Clock::manual()` the test moves: no test waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Browser, service};
use salvo::http::cookie::SameSite as CookieSameSite;
use salvo::test::TestClient;
use sessioner::{Clock, Error, Options, try_sessioner};

/// `(KEY, value)` pairs, as the ini file and the environment carry them.
type Settings = Vec<(&'static str, String)>;

/// A bad configuration, the typed error it must give, and a piece of its message.
type BadCase = (Options, fn(&Error) -> bool, &'static str);

/// Set in a child's environment: the directory its parent made for it. Its absence means
/// "not run by a parent": the child test then does nothing.
const CHILD_DIR: &str = "SESSIONER_OPTIONS_TEST_DIR";

/// The section a test module reads: `opt_` and the module's name.
fn section(module: &str) -> String {
    format!("opt_{module}")
}

/// The environment variable prefix of `section`: upper-cased (the crate maps every other
/// character to `_`, which the sections here, `opt_` and a module name, do not hold).
fn env_prefix(section: &str) -> String {
    section.to_ascii_uppercase()
}

/// Writes `settings` as the `[section]` of `dir/app.ini`; its path.
fn write_ini(dir: &Path, section: &str, settings: &Settings) -> PathBuf {
    let mut text =
        format!("; written by tests/options.rs\n[other]\nCOOKIE_NAME = wrong\n[{section}]\n");
    for (key, value) in settings {
        text.push_str(&format!("{key} = {value}\n"));
    }
    let path = dir.join("app.ini");
    std::fs::write(&path, text).unwrap();
    path
}

/// Options reading `module`'s section from `dir/app.ini`, which holds `settings`.
fn ini_options(module: &str, dir: &Path, settings: &Settings) -> Options {
    let section = section(module);
    Options {
        config_file: Some(write_ini(dir, &section, settings)),
        section,
        ..Default::default()
    }
}

/// Runs the ignored test `<module>::env_child` of this binary in a child process whose
/// environment holds `settings` under `module`'s section, and `CHILD_DIR=dir`; asserts that
/// exactly that test ran and passed.
fn run_env_child(module: &str, dir: &Path, settings: &Settings) {
    let prefix = env_prefix(&section(module));
    let test = format!("{module}::env_child");
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .envs(settings.iter().map(|(k, v)| (format!("{prefix}_{k}"), v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in a child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// In a child started by [`run_env_child`]: options reading `module`'s section (from the
/// environment), and the parent's directory. `None` when not started that way.
fn env_child_options(module: &str) -> Option<(Options, PathBuf)> {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR)?);
    let options = Options {
        section: section(module),
        ..Default::default()
    };
    Some((options, dir))
}

/// The module's name: the last segment of `module_path!()`.
fn module_name(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// In a module defining `fn settings(dir: &Path) -> Settings` and
/// `async fn check(options: Options, dir: &Path)`: the tests `ini` (the settings in an ini
/// file), `env` (in the environment of a child process) and the child's `env_child`.
macro_rules! from_both_sources {
    () => {
        #[tokio::test]
        async fn ini() {
            let dir = tempfile::tempdir().unwrap();
            let module = super::module_name(module_path!());
            let options = super::ini_options(module, dir.path(), &settings(dir.path()));
            check(options, dir.path()).await;
        }

        #[test]
        fn env() {
            let dir = tempfile::tempdir().unwrap();
            let module = super::module_name(module_path!());
            super::run_env_child(module, dir.path(), &settings(dir.path()));
        }

        #[tokio::test]
        #[ignore = "run by `env` in a child process, with the settings in its environment"]
        async fn env_child() {
            let module = super::module_name(module_path!());
            if let Some((options, dir)) = super::env_child_options(module) {
                check(options, &dir).await;
            }
        }
    };
}

/// One visitor writes a value; the session cookie it gets.
async fn first_cookie(options: Options) -> salvo::http::cookie::Cookie<'static> {
    let mut b = Browser::new(service(options));
    let r = b.get("/set?key=k&value=v").await;
    assert_eq!(r.status, 200);
    r.set_cookies.into_iter().next().expect("a session cookie")
}

/// Two visitors write at the same instant: one is alive 1 s before `lifetime` has passed,
/// the other gone 1 s after (each read only once, since a read may refresh the deadline).
async fn idle_lifetime_is(mut options: Options, lifetime: Duration) {
    let clock = Clock::manual();
    options.clock = clock.clone();
    let service = service(options);
    let (mut early, mut late) = (Browser::new(service.clone()), Browser::new(service));
    assert_eq!(early.get("/set?key=k&value=v").await.status, 200);
    assert_eq!(late.get("/set?key=k&value=v").await.status, 200);
    clock.advance(lifetime - Duration::from_secs(1));
    assert_eq!(
        early.get("/get?key=k").await.body,
        "v",
        "gone before {lifetime:?}"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        late.get("/get?key=k").await.body,
        "none",
        "alive after {lifetime:?}"
    );
}

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `PROVIDER` and `PROVIDER_CONFIG`: the file provider stores the session in the directory.
mod provider {
    use super::*;

    fn settings(dir: &Path) -> Settings {
        vec![
            ("PROVIDER", "file".into()),
            ("PROVIDER_CONFIG", dir.join("store").display().to_string()),
        ]
    }

    async fn check(options: Options, dir: &Path) {
        first_cookie(options).await;
        assert_eq!(
            files_below(&dir.join("store")).len(),
            1,
            "one session record in the configured directory"
        );
    }

    from_both_sources!();
}

mod cookie_name {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("COOKIE_NAME", "promise_cookie".into())]
    }

    async fn check(options: Options, _: &Path) {
        assert_eq!(first_cookie(options).await.name(), "promise_cookie");
    }

    from_both_sources!();
}

mod cookie_path {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("COOKIE_PATH", "/app".into())]
    }

    async fn check(options: Options, _: &Path) {
        assert_eq!(first_cookie(options).await.path(), Some("/app"));
    }

    from_both_sources!();
}

/// `GC_INTERVAL_TIME`, seen through the idle lifetime it gives when `MAX_LIFE_TIME` is unset.
mod gc_interval {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("GC_INTERVAL_TIME", "100".into())]
    }

    async fn check(options: Options, _: &Path) {
        idle_lifetime_is(options, Duration::from_secs(100)).await;
    }

    from_both_sources!();
}

mod max_lifetime {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("MAX_LIFE_TIME", "100".into())]
    }

    async fn check(options: Options, _: &Path) {
        idle_lifetime_is(options, Duration::from_secs(100)).await;
    }

    from_both_sources!();
}

mod secure {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("SECURE", "true".into())]
    }

    async fn check(options: Options, _: &Path) {
        assert_eq!(first_cookie(options).await.secure(), Some(true));
    }

    from_both_sources!();
}

mod cookie_lifetime {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("COOKIE_LIFE_TIME", "120".into())]
    }

    async fn check(options: Options, _: &Path) {
        let cookie = first_cookie(options).await;
        assert_eq!(cookie.max_age().map(|a| a.whole_seconds()), Some(120));
    }

    from_both_sources!();
}

mod domain {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("DOMAIN", "example.com".into())]
    }

    async fn check(options: Options, _: &Path) {
        assert_eq!(first_cookie(options).await.domain(), Some("example.com"));
    }

    from_both_sources!();
}

mod id_length {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("ID_LENGTH", "48".into())]
    }

    async fn check(options: Options, _: &Path) {
        assert_eq!(first_cookie(options).await.value().len(), 48);
    }

    from_both_sources!();
}

mod same_site {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("SAME_SITE", "strict".into())]
    }

    async fn check(options: Options, _: &Path) {
        let cookie = first_cookie(options).await;
        assert_eq!(cookie.same_site(), Some(CookieSameSite::Strict));
    }

    from_both_sources!();
}

/// `SAME_SITE=none` is accepted with `SECURE` (README: "`None` requires `secure`").
mod same_site_none {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("SAME_SITE", "none".into()), ("SECURE", "true".into())]
    }

    async fn check(options: Options, _: &Path) {
        let cookie = first_cookie(options).await;
        assert_eq!(cookie.same_site(), Some(CookieSameSite::None));
        assert_eq!(cookie.secure(), Some(true));
    }

    from_both_sources!();
}

/// `ABSOLUTE_LIFE_TIME`: a session written again and again is still gone once it has passed.
mod absolute_lifetime {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("ABSOLUTE_LIFE_TIME", "100".into())]
    }

    async fn check(mut options: Options, _: &Path) {
        let clock = Clock::manual();
        options.clock = clock.clone();
        let mut b = Browser::new(service(options));
        assert_eq!(b.get("/set?key=k&value=1").await.status, 200);
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.get("/set?key=k&value=2").await.status, 200);
        clock.advance(Duration::from_secs(39));
        assert_eq!(b.get("/get?key=k").await.body, "2");
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            b.get("/get?key=k").await.body,
            "none",
            "activity extended the absolute lifetime"
        );
    }

    from_both_sources!();
}

/// `IGNORE_RELEASE_FOR_WEBSOCKET`: a WebSocket upgrade request's changes are not saved.
mod ignore_release_for_websocket {
    use super::*;

    fn settings(_: &Path) -> Settings {
        vec![("IGNORE_RELEASE_FOR_WEBSOCKET", "true".into())]
    }

    async fn check(options: Options, _: &Path) {
        let mut b = Browser::new(service(options));
        assert_eq!(b.get("/set?key=k&value=1").await.status, 200);
        let upgrade = TestClient::get("http://127.0.0.1:5800/set?key=k&value=2").add_header(
            "upgrade",
            "websocket",
            true,
        );
        assert_eq!(b.send(upgrade).await.status, 200);
        assert_eq!(
            b.get("/get?key=k").await.body,
            "1",
            "the upgrade request's change was saved"
        );
    }

    from_both_sources!();
}

/// Environment before ini, code before both, and the ini filling what neither sets.
mod precedence {
    use super::*;

    #[test]
    fn env() {
        let dir = tempfile::tempdir().unwrap();
        let section = section("precedence");
        write_ini(
            dir.path(),
            &section,
            &vec![
                ("COOKIE_NAME", "from_ini".into()),
                ("COOKIE_PATH", "/ini".into()),
                ("DOMAIN", "ini.example.com".into()),
            ],
        );
        let env = vec![
            ("COOKIE_NAME", "from_env".into()),
            ("COOKIE_PATH", "/env".into()),
        ];
        run_env_child("precedence", dir.path(), &env);
    }

    #[tokio::test]
    #[ignore = "run by `env` in a child process, with the settings in its environment"]
    async fn env_child() {
        let Some((mut options, dir)) = env_child_options("precedence") else {
            return;
        };
        options.config_file = Some(dir.join("app.ini"));
        options.cookie_path = "/code".into();
        let cookie = first_cookie(options).await;
        assert_eq!(
            cookie.name(),
            "from_env",
            "the environment beats the ini file"
        );
        assert_eq!(cookie.path(), Some("/code"), "code beats both");
        assert_eq!(cookie.domain(), Some("ini.example.com"));
    }

    /// Code beats the ini file (the `env` test above covers code over the environment).
    #[tokio::test]
    async fn code_beats_ini() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ini_options(
            "precedence_ini",
            dir.path(),
            &vec![
                ("COOKIE_NAME", "from_ini".into()),
                ("ID_LENGTH", "40".into()),
            ],
        );
        options.cookie_name = "from_code".into();
        let cookie = first_cookie(options).await;
        assert_eq!(cookie.name(), "from_code");
        assert_eq!(cookie.value().len(), 40);
    }
}

/// README: "`MAX_LIFE_TIME` ... default = `gc_interval`", set in code (the `gc_interval`
/// module covers the ini file and the environment).
#[tokio::test]
async fn max_lifetime_defaults_to_gc_interval() {
    let options = Options {
        section: section("max_lifetime_default"),
        gc_interval: Some(Duration::from_secs(100)),
        ..Default::default()
    };
    idle_lifetime_is(options, Duration::from_secs(100)).await;
}

/// README: "`sessioner(options)` panics on a bad configuration; `try_sessioner(options)` and
/// `options.build()` return the typed error instead".
#[test]
fn sessioner_panics_on_a_bad_config_where_try_sessioner_returns_the_typed_error() {
    let options = |f: fn(&mut Options)| {
        let mut o = Options {
            section: section("panics"),
            ..Default::default()
        };
        f(&mut o);
        o
    };
    let cases: [BadCase; 3] = [
        (
            options(|o| o.provider = "nope".into()),
            |e| matches!(e, Error::UnknownProvider(p) if p == "nope"),
            "unknown session provider `nope`",
        ),
        (
            options(|o| o.cookie_name = "a;b".into()),
            |e| {
                matches!(
                    e,
                    Error::InvalidOption {
                        option: "COOKIE_NAME",
                        ..
                    }
                )
            },
            "invalid session option COOKIE_NAME",
        ),
        (
            options(|o| o.provider_config = "max_sessions=many".into()),
            |e| matches!(e, Error::ProviderConfig { provider, .. } if provider == "memory"),
            "session provider `memory` rejected its configuration",
        ),
    ];
    for (options, expected, message) in cases {
        let e = try_sessioner(options.clone()).unwrap_err();
        assert!(expected(&e), "try_sessioner: {e:?}");
        let e = options.clone().build().unwrap_err();
        assert!(expected(&e), "build: {e:?}");
        let panic = catch_unwind(AssertUnwindSafe(|| sessioner::sessioner(options)))
            .expect_err("sessioner() accepted a bad configuration");
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        assert!(
            text.starts_with("invalid sessioner options: ") && text.contains(message),
            "panic message {text:?}"
        );
    }
}
