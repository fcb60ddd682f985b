//! The session middleware through real HTTP requests (salvo's `TestClient`): macaron's own test
//! flows, every macaron bug we fix, and SECURITY.md's lifecycle and cookie rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Browser, Slow, router, service};
use salvo::http::StatusCode;
use salvo::http::header::HeaderValue;
use salvo::prelude::*;
use salvo::test::TestClient;
use sessioner::provider::memory::MemoryProvider;
use sessioner::{
    ChangeSet, Clock, Error, Options, Provider, Record, Regenerated, SameSite, SessionDepotExt,
    SessionId, register,
};
use tempfile::TempDir;
use tokio::sync::{Barrier, Notify};

const C: &str = "sessioner";

// The flows every built-in backend must pass: `memory::<flow>`, `sled::<flow>`, ...
common::per_backend!(
    macaron_flow_set_regenerate_then_read_delete_destroy,
    regenerating_a_session_created_in_the_same_request,
    gc_removes_sessions_idle_past_their_lifetime,
    s2_hostile_cookies_reach_no_provider_call,
    s3_a_planted_id_is_never_adopted,
    s5_a_store_dump_holds_no_cookie_value,
    s6_the_id_is_read_from_the_cookie_only,
    l1_bug2_regenerate_kills_the_old_id_and_moves_everything,
    l2_bug3_destroy_is_final_and_the_deletion_cookie_repeats_every_attribute,
    bug4_flush_and_deleting_the_last_key_are_saved,
    bug6_odd_id_lengths_keep_their_session,
    l6_bug9_visitors_who_only_read_create_nothing,
    l4_bug10_expired_sessions_are_unreadable_before_gc,
    reads_keep_an_active_session_alive,
    l5_the_absolute_lifetime_is_not_extended_by_activity,
    l7_bug14_overlapping_requests_changing_different_keys_all_persist,
    l1_a_regenerate_racing_a_save_moves_everything_and_kills_the_old_id,
    l3_a_slow_request_cannot_revive_a_logged_out_session,
    l3_a_slow_request_cannot_revive_a_regenerated_session,
    values_set_read_and_deleted_in_one_request_are_saved_as_last_seen,
    c1_bug7_every_cookie_carries_the_full_attribute_set,
    c1_defaults_are_httponly_lax_path_root_and_a_browser_session_cookie,
    c2_responses_that_set_or_clear_the_cookie_are_not_cached,
);

fn memory() -> Options {
    Options {
        provider: "memory".into(),
        section: common::SECTION.into(),
        ..Default::default()
    }
}

fn file(dir: &TempDir) -> Options {
    Options {
        provider: "file".into(),
        provider_config: dir.path().join("s").to_string_lossy().into_owned(),
        section: common::SECTION.into(),
        ..Default::default()
    }
}

/// What a developer's shell may hold for macaron's default section `session`.
const SHELL_SESSION_VARIABLES: [(&str, &str); 10] = [
    ("SESSION_PROVIDER", "bogus"),
    ("SESSION_PROVIDER_CONFIG", "/nonexistent/sessions"),
    ("SESSION_COOKIE_NAME", "hijacked"),
    ("SESSION_COOKIE_PATH", "/elsewhere"),
    ("SESSION_ID_LENGTH", "20"),
    ("SESSION_SECURE", "true"),
    ("SESSION_DOMAIN", "evil.example"),
    ("SESSION_COOKIE_LIFE_TIME", "5"),
    ("SESSION_SAME_SITE", "strict"),
    ("SESSION_MAX_LIFE_TIME", "1"),
];
/// Set (to `1`) only in the child process of the hygiene test.
const HYGIENE_CHILD: &str = "SESSIONER_TEST_HYGIENE_CHILD";

/// Hygiene: `SESSION_*` variables in the developer's shell change no result. The variables
/// are process-global and `set_var` is unsafe, so the test binary runs itself as a child
/// with them set: a few flows over every option (their services read the private section
/// [`common::SECTION`]), plus a probe proving the variables do reach a service that reads
/// the default section.
#[test]
fn hygiene_session_variables_in_the_shell_change_nothing() {
    let tests = [
        "hygiene_probe_the_shell_variables_reach_the_default_section",
        "memory::macaron_flow_set_regenerate_then_read_delete_destroy",
        "file::l2_bug3_destroy_is_final_and_the_deletion_cookie_repeats_every_attribute",
        "memory::c1_defaults_are_httponly_lax_path_root_and_a_browser_session_cookie",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads=1"])
        .envs(SHELL_SESSION_VARIABLES)
        .env(HYGIENE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{} passed", tests.len())),
        "with SESSION_* set in the environment:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn hygiene_probe_the_shell_variables_reach_the_default_section() {
    if std::env::var_os(HYGIENE_CHILD).is_none() {
        return;
    }
    let svc = Arc::new(Service::new(router(
        Options {
            provider: "memory".into(),
            provider_config: "max_sessions=10".into(),
            ..Default::default()
        }
        .build()
        .unwrap(),
    )));
    let r = Browser::new(svc).get("/set?key=k&value=v").await;
    assert!(
        r.cookie("hijacked").is_some(),
        "the child did not get the SESSION_* variables"
    );
}

/// An error body may be Salvo's generic error page, but never carries backend or session detail.
fn assert_opaque(body: &str) {
    for leak in [
        "secret",
        "10.0.0.7",
        "disk full",
        "flaky",
        "memory",
        "session",
        "full",
        "invalid",
    ] {
        assert!(
            !body.to_lowercase().contains(leak),
            "error body leaks {leak:?}: {body}"
        );
    }
}

async fn macaron_flow_set_regenerate_then_read_delete_destroy(options: Options) {
    let svc = service(options);
    let mut b = Browser::new(svc.clone());
    let r = b.get("/set?key=uname&value=unknwon").await;
    assert_eq!(r.status, StatusCode::OK);
    let a = b.cookie(C).expect("a new session sets its cookie");
    assert_eq!(a.len(), 32);
    let r = b.get("/get?key=uname").await;
    assert_eq!(r.body, "unknwon");
    assert!(
        r.set_cookies.is_empty(),
        "an existing session must not re-send its cookie"
    );

    let r = b.get("/regenerate").await;
    let new = b.cookie(C).unwrap();
    assert_ne!(new, a);
    assert_eq!(r.body, new);
    assert_eq!(
        b.get("/get?key=uname").await.body,
        "unknwon",
        "data carried over"
    );
    assert_eq!(
        Browser::with_cookie(svc.clone(), C, &a)
            .get("/get?key=uname")
            .await
            .body,
        "none",
        "old id dead"
    );

    b.get("/delete?key=uname").await;
    assert_eq!(b.get("/get?key=uname").await.body, "none");
    b.get("/set?key=uname&value=again").await;
    assert_eq!(b.get("/count").await.body, "1");
    let r = b.get("/destroy").await;
    assert!(
        r.cookie(C).is_some_and(|c| c.value().is_empty()),
        "destroy clears the cookie"
    );
    assert_eq!(
        Browser::with_cookie(svc.clone(), C, &new)
            .get("/get?key=uname")
            .await
            .body,
        "none"
    );
    assert_eq!(Browser::new(svc).get("/count").await.body, "0");
}

async fn regenerating_a_session_created_in_the_same_request(options: Options) {
    let svc = service(options);
    let mut b = Browser::new(svc);
    let r = b.get("/set_then_regenerate?key=k&value=v").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        b.cookie(C).unwrap(),
        r.body,
        "the cookie names the regenerated id"
    );
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert_eq!(b.get("/count").await.body, "1");
}

async fn gc_removes_sessions_idle_past_their_lifetime(options: Options) {
    let provider = options.provider.clone();
    let clock = Clock::manual();
    let svc = service(Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(60)),
        ..options
    });
    for i in 0..5 {
        Browser::new(svc.clone())
            .get(&format!("/set?key=k&value={i}"))
            .await;
    }
    let mut admin = Browser::new(svc);
    assert_eq!(admin.get("/count").await.body, "5");
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        admin.get("/count").await.body,
        "0",
        "count sees only live sessions"
    );
    // redis and memcached expire records by themselves: their gc finds nothing.
    let expected = if provider == "redis" || provider.starts_with("memcache") {
        "0"
    } else {
        "5"
    };
    assert_eq!(
        admin.get("/gc").await.body,
        expected,
        "gc removes every expired record"
    );
    assert_eq!(admin.get("/gc").await.body, "0");
    assert_eq!(admin.get("/count").await.body, "0");
}

#[tokio::test]
async fn background_gc_runs_every_gc_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let svc = service(Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(60)),
        gc_interval: Some(Duration::from_millis(20)),
        ..file(&dir)
    });
    Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    let files = || walk(&dir.path().join("s"));
    assert_eq!(files(), 1);
    clock.advance(Duration::from_secs(61));
    // Nothing but the background task deletes the file: wait for it, bounded at 10 s.
    for _ in 0..500 {
        if files() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the background GC never removed the expired record");
}

/// Record files below a file-provider root.
fn walk(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

#[tokio::test]
async fn read_parses_the_id_strictly() {
    let svc = service(memory());
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=k&value=secret").await;
    let sid = b.cookie(C).unwrap();
    let r = Browser::new(svc.clone())
        .get(&format!("/read?sid={sid}&key=k"))
        .await;
    assert_eq!(r.body, "secret");
    let r = Browser::new(svc.clone()).get("/read?sid=../x&key=k").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_opaque(&r.body);
    assert_eq!(
        Browser::new(svc)
            .get(&format!("/read?sid={}&key=k", "0".repeat(32)))
            .await
            .body,
        "absent"
    );
}

const HOSTILE: [&str; 7] = [
    "../../etc/passwd",
    "..\\x",
    "%2e%2e%2f",
    "a",
    "%00",
    "0123456789ABCDEF0123456789ABCDEF",
    "../s/../../x",
];

/// Cookie values that must never reach a provider with a 32-character id length, as raw
/// header bytes: the [`HOSTILE`] set, wrong lengths, a non-hex letter, non-ASCII, 10 KB.
fn hostile_cookie_values() -> Vec<Vec<u8>> {
    let mut values: Vec<Vec<u8>> = HOSTILE.iter().map(|v| v.as_bytes().to_vec()).collect();
    let hex = "0123456789abcdef".repeat(8);
    for value in [
        &hex[..31],
        &hex[..33],
        &hex[..64],
        "0123456789abcdeg0123456789abcdef",
    ] {
        values.push(value.as_bytes().to_vec());
    }
    values.push(b"caf\xc3\xa9".to_vec());
    values.push(b"0123456789abcdef0123456789abcd\xc3\xa9".to_vec());
    values.push(vec![b'a'; 10_000]);
    values
}

/// S2, counted: with every hostile cookie, the routes that only read, delete or destroy make
/// no provider call at all, and a write makes exactly one `create` (of a fresh id, which the
/// response sets); every answer is a `200`. A well-formed cookie does reach the provider.
async fn s2_hostile_cookies_reach_no_provider_call(options: Options) {
    let (options, calls) = common::counting(options);
    let svc = service(options);
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=k&value=v").await;
    assert_eq!(calls.take(), ["create"]);
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert!(!calls.take().is_empty(), "a well-formed cookie is loaded");

    for value in hostile_cookie_values() {
        let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
        let mut cookie = format!("{C}=").into_bytes();
        cookie.extend(&value);
        let cookie = HeaderValue::from_bytes(&cookie).unwrap();
        for path in [
            "/get?key=k",
            "/id",
            "/delete?key=k",
            "/flush",
            "/destroy",
            "/set?key=k&value=v",
        ] {
            let r = Browser::new(svc.clone())
                .send(
                    TestClient::get(format!("http://127.0.0.1:5800{path}")).add_header(
                        "cookie",
                        cookie.clone(),
                        true,
                    ),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{shown:?} {path}");
            let reached = calls.take();
            if path.starts_with("/set") {
                assert_eq!(reached, ["create"], "{shown:?} {path}");
                let issued = r
                    .cookie(C)
                    .expect("a fresh id is issued")
                    .value()
                    .to_owned();
                assert!(SessionId::parse(&issued, 32).is_ok());
            } else {
                assert_eq!(
                    reached,
                    [] as [&str; 0],
                    "{shown:?} {path} reached the provider"
                );
                assert!(
                    ["none", "ok"].contains(&r.body.as_str()),
                    "{shown:?} {path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn s2_hostile_cookies_write_nothing_outside_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(file(&dir));
    for value in HOSTILE {
        Browser::with_cookie(svc.clone(), C, value)
            .get("/set?key=k&value=v")
            .await;
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        ["s"],
        "nothing is written outside the store directory"
    );
    assert_eq!(walk(&dir.path().join("s")), HOSTILE.len());
}

/// Whether `needle` occurs in `haystack`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// S5 on what each backend really stores: after logins, a regenerate, a flash and a logout,
/// no file name or content, sled key or value, redis key, field or value holds any cookie
/// value issued (as text or as the bytes its hex spells). The search finds what is there:
/// each live session's storage key and the values written.
async fn s5_a_store_dump_holds_no_cookie_value(options: Options) {
    let storage = options.clone();
    let svc = service(options);
    let mut issued = Vec::new();
    let mut ann = Browser::new(svc.clone());
    ann.get("/set?key=user&value=marker-ann").await;
    issued.push(ann.cookie(C).unwrap());
    ann.get("/regenerate?key=role&value=marker-admin").await;
    issued.push(ann.cookie(C).unwrap());
    let mut bob = Browser::new(svc.clone());
    bob.get("/set_then_regenerate?key=user&value=marker-bob")
        .await;
    issued.push(bob.cookie(C).unwrap());
    let mut gone = Browser::new(svc.clone());
    gone.get("/set?key=user&value=marker-gone").await;
    issued.push(gone.cookie(C).unwrap());
    gone.get("/destroy").await;
    let live = [ann.cookie(C).unwrap(), bob.cookie(C).unwrap()];
    assert_eq!(ann.get("/count").await.body, "2");
    drop((svc, ann, bob, gone));

    let Some(dump) = common::dump(&storage) else {
        return; // memory: nothing leaves the process
    };
    for id in &issued {
        let raw: Vec<u8> = (0..id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap())
            .collect();
        for (place, bytes) in &dump {
            assert!(!holds(bytes, id.as_bytes()), "{place} holds a cookie value");
            assert!(!holds(bytes, &raw), "{place} holds a cookie's bytes");
        }
    }
    let found = |needle: &[u8]| dump.iter().any(|(_, bytes)| holds(bytes, needle));
    for id in &live {
        let key = SessionId::parse(id, 32).unwrap().storage_key();
        assert_ne!(&key, id);
        assert!(found(key.as_bytes()), "the dump misses a live storage key");
    }
    for value in ["marker-ann", "marker-admin", "marker-bob"] {
        assert!(found(value.as_bytes()), "the dump misses the value {value}");
    }
}

async fn s3_a_planted_id_is_never_adopted(options: Options) {
    let planted = "0123456789abcdef0123456789abcdef";
    let mut b = Browser::with_cookie(service(options), C, planted);
    let r = b.get("/set?key=k&value=v").await;
    let issued = r.cookie(C).expect("a new id").value().to_owned();
    assert_ne!(issued, planted);
    assert_eq!(b.get("/get?key=k").await.body, "v");
}

/// S6: a live id sent anywhere but the cookie (query, form body, headers) is ignored: reads
/// see no session, and a write starts a new one under a fresh id.
async fn s6_the_id_is_read_from_the_cookie_only(options: Options) {
    let svc = service(options);
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=k&value=v").await;
    let sid = b.cookie(C).unwrap();
    let in_form = [(C, sid.as_str())];
    assert_eq!(
        b.post_form("/form_get?key=k", &[]).await.body,
        "v (form field: absent)",
        "the form route reads the cookie's session"
    );

    let mut stranger = Browser::new(svc.clone());
    let r = stranger.get(&format!("/get?key=k&{C}={sid}")).await;
    assert_eq!(r.body, "none", "query");
    let r = stranger.post_form("/form_get?key=k", &in_form).await;
    assert_eq!(r.body, "none (form field: present)", "form");
    assert!(r.set_cookies.is_empty(), "form");
    for header in [C, "x-session-id", "authorization", "x-sessioner"] {
        let r = stranger
            .send(
                TestClient::get("http://127.0.0.1:5800/get?key=k").add_header(
                    header,
                    sid.as_str(),
                    true,
                ),
            )
            .await;
        assert_eq!(r.body, "none", "header {header}");
    }
    let r = stranger
        .post_form("/form_set?key=k&value=stranger", &in_form)
        .await;
    let issued = r.cookie(C).expect("a write starts a new session");
    assert_ne!(issued.value(), sid, "the form's id was adopted");
    assert_eq!(
        b.get("/get?key=k").await.body,
        "v",
        "the real session is untouched"
    );
    assert_eq!(b.get("/count").await.body, "2");
}

async fn l1_bug2_regenerate_kills_the_old_id_and_moves_everything(options: Options) {
    let svc = service(options);
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=before&value=1").await;
    let old = b.cookie(C).unwrap();
    b.get("/regenerate?key=after&value=2").await;
    let new = b.cookie(C).unwrap();
    assert_ne!(old, new);
    assert_eq!(b.get("/get?key=before").await.body, "1");
    assert_eq!(b.get("/get?key=after").await.body, "2");
    let mut replay = Browser::with_cookie(svc.clone(), C, &old);
    assert_eq!(replay.get("/get?key=before").await.body, "none");
    assert_eq!(replay.get("/get?key=after").await.body, "none");
    assert_eq!(b.get("/count").await.body, "1", "one session, not two");
}

async fn l2_bug3_destroy_is_final_and_the_deletion_cookie_repeats_every_attribute(
    options: Options,
) {
    let svc = service(Options {
        secure: Some(true),
        domain: "example.com".into(),
        cookie_path: "/".into(),
        same_site: Some(SameSite::Strict),
        ..options
    });
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=user&value=ann").await;
    let old = b.cookie(C).unwrap();
    assert_eq!(b.get("/count").await.body, "1");
    let r = b.get("/destroy").await;
    let gone = r.cookie(C).expect("a deletion cookie");
    assert_eq!(gone.value(), "");
    assert_eq!(
        gone.max_age(),
        Some(salvo::http::cookie::time::Duration::ZERO)
    );
    assert_eq!(gone.path(), Some("/"));
    assert_eq!(gone.domain(), Some("example.com"));
    assert_eq!(gone.secure(), Some(true));
    assert_eq!(gone.http_only(), Some(true));
    assert_eq!(
        gone.same_site(),
        Some(salvo::http::cookie::SameSite::Strict)
    );
    let mut replay = Browser::with_cookie(svc.clone(), C, &old);
    assert_eq!(replay.get("/get?key=user").await.body, "none");
    assert_eq!(replay.get("/count").await.body, "0");
}

async fn bug4_flush_and_deleting_the_last_key_are_saved(options: Options) {
    let mut b = Browser::new(service(options));
    b.get("/set?key=only&value=1").await;
    b.get("/delete?key=only").await;
    assert_eq!(b.get("/get?key=only").await.body, "none");
    b.get("/set?key=a&value=1").await;
    b.get("/set?key=b&value=2").await;
    b.get("/flush").await;
    assert_eq!(b.get("/get?key=a").await.body, "none");
    assert_eq!(b.get("/get?key=b").await.body, "none");
    assert_ne!(b.get("/id").await.body, "none", "flush keeps the session");
}

async fn bug6_odd_id_lengths_keep_their_session(options: Options) {
    let mut b = Browser::new(service(Options {
        id_length: Some(17),
        ..options
    }));
    b.get("/set?key=k&value=v").await;
    assert_eq!(b.cookie(C).unwrap().len(), 17);
    let r = b.get("/get?key=k").await;
    assert_eq!(r.body, "v");
    assert!(
        r.set_cookies.is_empty(),
        "the odd-length id was accepted back"
    );
}

async fn c1_bug7_every_cookie_carries_the_full_attribute_set(options: Options) {
    let svc = service(Options {
        secure: Some(true),
        domain: "example.com".into(),
        cookie_path: "/app".into(),
        same_site: Some(SameSite::Strict),
        cookie_lifetime: Some(Duration::from_secs(600)),
        cookie_name: "sid".into(),
        ..options
    });
    let mut b = Browser::new(svc);
    let created = b
        .get("/set?key=k&value=v")
        .await
        .cookie("sid")
        .unwrap()
        .clone();
    let regenerated = b.get("/regenerate").await.cookie("sid").unwrap().clone();
    let deleted = b.get("/destroy").await.cookie("sid").unwrap().clone();
    for c in [&created, &regenerated, &deleted] {
        assert_eq!(c.http_only(), Some(true), "{c}");
        assert_eq!(c.secure(), Some(true), "{c}");
        assert_eq!(c.domain(), Some("example.com"), "{c}");
        assert_eq!(c.path(), Some("/app"), "{c}");
        assert_eq!(
            c.same_site(),
            Some(salvo::http::cookie::SameSite::Strict),
            "{c}"
        );
    }
    let ten_minutes = Some(salvo::http::cookie::time::Duration::seconds(600));
    assert_eq!(created.max_age(), ten_minutes);
    assert_eq!(regenerated.max_age(), ten_minutes);
    assert_eq!(
        deleted.max_age(),
        Some(salvo::http::cookie::time::Duration::ZERO)
    );
}

async fn c1_defaults_are_httponly_lax_path_root_and_a_browser_session_cookie(options: Options) {
    let mut b = Browser::new(service(options));
    let r = b.get("/set?key=k&value=v").await;
    let c = r.cookie(C).unwrap();
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(c.same_site(), Some(salvo::http::cookie::SameSite::Lax));
    assert_eq!(c.path(), Some("/"));
    assert_eq!(c.secure(), None);
    assert_eq!(c.domain(), None);
    assert_eq!(c.max_age(), None, "no Max-Age: a browser-session cookie");
}

async fn c2_responses_that_set_or_clear_the_cookie_are_not_cached(options: Options) {
    let mut b = Browser::new(service(options));
    for path in ["/set?key=k&value=v", "/regenerate", "/destroy"] {
        let r = b.get(path).await;
        assert!(!r.set_cookies.is_empty(), "{path}");
        assert_eq!(
            r.headers.get("cache-control").unwrap(),
            "no-store",
            "{path}"
        );
    }
    assert!(b.get("/hello").await.headers.get("cache-control").is_none());
}

#[tokio::test]
async fn c3_bad_cookie_options_are_configuration_errors() {
    for name in ["a;b", "a b", "", "a=b"] {
        let r = sessioner::try_sessioner(Options {
            cookie_name: name.into(),
            ..Options {
                cookie_name: "x".into(),
                ..memory()
            }
        });
        if name.is_empty() {
            continue; // empty means "unset": the default name applies
        }
        assert!(
            matches!(
                r,
                Err(Error::InvalidOption {
                    option: "COOKIE_NAME",
                    ..
                })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        sessioner::try_sessioner(Options {
            cookie_path: "/a;b".into(),
            ..memory()
        }),
        Err(Error::InvalidOption { .. })
    ));
    assert!(matches!(
        sessioner::try_sessioner(Options {
            domain: "a b".into(),
            ..memory()
        }),
        Err(Error::InvalidOption { .. })
    ));
    assert!(matches!(
        sessioner::try_sessioner(Options {
            provider: "nope".into(),
            ..memory()
        }),
        Err(Error::UnknownProvider(_))
    ));
    assert!(matches!(
        sessioner::try_sessioner(Options {
            id_length: Some(8),
            ..memory()
        }),
        Err(Error::InvalidOption {
            option: "ID_LENGTH",
            ..
        })
    ));
    assert!(matches!(
        sessioner::try_sessioner(Options {
            provider_config: "max_sessions=lots".into(),
            ..memory()
        }),
        Err(Error::ProviderConfig { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("f");
    std::fs::write(&not_a_dir, "x").unwrap();
    let r = sessioner::try_sessioner(Options {
        provider: "file".into(),
        provider_config: not_a_dir.join("s").to_string_lossy().into(),
        ..Default::default()
    });
    assert!(matches!(r, Err(Error::ProviderConfig { .. })));
}

#[tokio::test]
async fn options_come_from_an_ini_section_and_code_wins() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("app.ini");
    std::fs::write(&ini, "[web]\nPROVIDER = memory\nCOOKIE_NAME = from_ini\nID_LENGTH = 20\nCOOKIE_LIFE_TIME = 60\nSECURE = true\n").unwrap();
    let opts = Options {
        section: "web".into(),
        config_file: Some(ini),
        ..Default::default()
    };
    let mut b = Browser::new(service(opts.clone()));
    let r = b.get("/set?key=k&value=v").await;
    let c = r.cookie("from_ini").expect("cookie name from the ini");
    assert_eq!(c.value().len(), 20);
    assert_eq!(
        c.max_age(),
        Some(salvo::http::cookie::time::Duration::seconds(60))
    );
    assert_eq!(c.secure(), Some(true));
    let mut b = Browser::new(service(Options {
        cookie_name: "from_code".into(),
        secure: Some(false),
        ..opts
    }));
    let r = b.get("/set?key=k&value=v").await;
    assert!(r.cookie("from_code").is_some_and(|c| c.secure().is_none()));
}

#[tokio::test]
async fn s5_r4_bug8_file_records_are_private_atomic_and_named_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Browser::new(service(file(&dir)));
    b.get("/set?key=k&value=v").await;
    b.get("/set?key=k2&value=v2").await;
    let sid = b.cookie(C).unwrap();
    let root = dir.path().join("s");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    let mut files = 0;
    for sub in std::fs::read_dir(&root).unwrap() {
        let sub = sub.unwrap().path();
        assert_eq!(mode(&sub), 0o700);
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(mode(&f), 0o600);
            assert!(
                !name.contains(&sid),
                "file names never derive from the cookie"
            );
            assert!(!name.ends_with(".tmp"), "no temporary file left behind");
            files += 1;
        }
    }
    assert_eq!(files, 1);
}

async fn l6_bug9_visitors_who_only_read_create_nothing(options: Options) {
    let svc = service(options);
    for i in 0..300 {
        let mut b = Browser::new(svc.clone());
        let r = b
            .get(if i % 2 == 0 { "/get?key=k" } else { "/hello" })
            .await;
        assert!(r.set_cookies.is_empty());
    }
    let mut b = Browser::with_cookie(svc.clone(), C, &"ab".repeat(16));
    assert!(b.get("/get?key=k").await.set_cookies.is_empty());
    assert_eq!(Browser::new(svc).get("/count").await.body, "0");
}

async fn l4_bug10_expired_sessions_are_unreadable_before_gc(options: Options) {
    let clock = Clock::manual();
    let svc = service(Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(1)),
        gc_interval: Some(Duration::from_secs(3600)),
        ..options
    });
    let mut b = Browser::new(svc);
    b.get("/set?key=k&value=v").await;
    assert_eq!(b.get("/get?key=k").await.body, "v");
    clock.advance(Duration::from_secs(2));
    assert_eq!(b.get("/get?key=k").await.body, "none");
    // Writing now starts a new session under a new id.
    let old = b.cookie(C).unwrap();
    b.get("/set?key=k&value=w").await;
    assert_ne!(b.cookie(C).unwrap(), old);
}

async fn reads_keep_an_active_session_alive(options: Options) {
    let clock = Clock::manual();
    let mut b = Browser::new(service(Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(10)),
        ..options
    }));
    b.get("/set?key=k&value=v").await;
    for _ in 0..5 {
        clock.advance(Duration::from_secs(6));
        assert_eq!(
            b.get("/get?key=k").await.body,
            "v",
            "a read refreshes the idle deadline"
        );
    }
}

async fn l5_the_absolute_lifetime_is_not_extended_by_activity(options: Options) {
    let clock = Clock::manual();
    let mut b = Browser::new(service(Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(10)),
        absolute_lifetime: Some(Duration::from_secs(5)),
        ..options
    }));
    b.get("/set?key=k&value=v").await;
    for _ in 0..4 {
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.get("/get?key=k").await.body, "v");
        b.get("/set?key=touch&value=1").await;
    }
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        b.get("/get?key=k").await.body,
        "none",
        "gone after the absolute lifetime"
    );
}

/// 20 requests on one session, each held at a barrier after its load until all 20 have
/// loaded, then released together: each saves its own key, and every key persists.
async fn l7_bug14_overlapping_requests_changing_different_keys_all_persist(options: Options) {
    const N: usize = 20;
    let held = Slow::Barrier(Arc::new(Barrier::new(N)));
    let svc = Arc::new(Service::new(
        router(common::build(options)).push(Router::with_path("held").get(held)),
    ));
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=base&value=0").await;
    let sid = b.cookie(C).unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (svc, sid) = (svc.clone(), sid.clone());
            tokio::spawn(async move {
                Browser::with_cookie(svc, C, &sid)
                    .get(&format!("/held?key=k{i}&value={i}"))
                    .await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
        assert!(r.set_cookies.is_empty(), "the session kept its id");
    }
    for i in 0..N {
        assert_eq!(
            b.get(&format!("/get?key=k{i}")).await.body,
            i.to_string(),
            "k{i} was lost"
        );
    }
    assert_eq!(b.get("/get?key=base").await.body, "0");
    assert_eq!(b.get("/count").await.body, "1");
}

/// A service over `options` with `/slow` ([`Slow`]), held between its load and its write
/// until `proceed` is notified.
fn service_with_slow_route(options: Options) -> (Arc<Service>, Arc<Notify>, Arc<Notify>) {
    let (loaded, proceed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = Slow::Signal {
        loaded: loaded.clone(),
        proceed: proceed.clone(),
    };
    let svc = Arc::new(Service::new(
        router(common::build(options)).push(Router::with_path("slow").get(slow)),
    ));
    (svc, loaded, proceed)
}

/// A new visitor on `svc` with a session holding `user=ann`, and its id.
async fn ann(svc: &Arc<Service>) -> (Browser, String) {
    let mut b = Browser::new(svc.clone());
    b.get("/set?key=user&value=ann").await;
    let sid = b.cookie(C).unwrap();
    (b, sid)
}

/// Starts `path` as a request of its own with the cookie `sid`.
fn spawn_get(svc: &Arc<Service>, sid: &str, path: &str) -> tokio::task::JoinHandle<common::Reply> {
    let (svc, sid, path) = (svc.clone(), sid.to_owned(), path.to_owned());
    tokio::spawn(async move { Browser::with_cookie(svc, C, &sid).get(&path).await })
}

/// L1 through the middleware, a save against a regenerate (a login) on one session:
/// - the regenerate loads first and the save completes while it is held: the saved key
///   moves to the new id with everything else;
/// - both really race, 20 times: whatever the order, the old id is dead once the regenerate
///   answered, the new id holds the data, and a save that lost the race reached no session
///   that holds the login (it was dropped, kept under the new id, or started a session of
///   its own holding only its own key).
async fn l1_a_regenerate_racing_a_save_moves_everything_and_kills_the_old_id(options: Options) {
    let (svc, loaded, proceed) = service_with_slow_route(options);
    let (_, old) = ann(&svc).await;
    let login = spawn_get(&svc, &old, "/slow?then=regenerate&key=role&value=admin");
    loaded.notified().await;
    let r = Browser::with_cookie(svc.clone(), C, &old)
        .get("/set?key=cart&value=1")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    proceed.notify_one();
    let r = login.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let new = r
        .cookie(C)
        .expect("the login sets the new id")
        .value()
        .to_owned();
    assert_ne!(new, old);
    let mut after = Browser::with_cookie(svc.clone(), C, &new);
    for (key, value) in [("user", "ann"), ("role", "admin"), ("cart", "1")] {
        assert_eq!(
            after.get(&format!("/get?key={key}")).await.body,
            value,
            "{key}"
        );
    }
    let mut replay = Browser::with_cookie(svc.clone(), C, &old);
    assert_eq!(replay.get("/get?key=user").await.body, "none");
    assert_eq!(replay.get("/count").await.body, "1");

    for round in 0..20 {
        let (_, old) = ann(&svc).await;
        let save = spawn_get(&svc, &old, &format!("/set?key=cart&value={round}"));
        let login = spawn_get(&svc, &old, "/regenerate");
        let (save, login) = (save.await.unwrap(), login.await.unwrap());
        assert_eq!(save.status, StatusCode::OK, "round {round}");
        assert_eq!(login.status, StatusCode::OK, "round {round}");
        let new = login.cookie(C).expect("a new id").value().to_owned();
        assert_ne!(new, old);
        let mut replay = Browser::with_cookie(svc.clone(), C, &old);
        assert_eq!(
            replay.get("/get?key=user").await.body,
            "none",
            "round {round}"
        );
        assert_eq!(
            replay.get("/get?key=cart").await.body,
            "none",
            "round {round}"
        );
        let mut after = Browser::with_cookie(svc.clone(), C, &new);
        assert_eq!(
            after.get("/get?key=user").await.body,
            "ann",
            "round {round}"
        );
        let cart = after.get("/get?key=cart").await.body;
        assert!(
            cart == "none" || cart == round.to_string(),
            "round {round}: cart {cart}"
        );
        if let Some(own) = save.cookie(C) {
            // The save came after the regenerate: it was anonymous and started afresh.
            assert!(own.value() != old && own.value() != new, "round {round}");
            let mut own = Browser::with_cookie(svc.clone(), C, own.value());
            assert_eq!(own.get("/get?key=user").await.body, "none", "round {round}");
            assert_eq!(own.get("/get?key=cart").await.body, round.to_string());
            own.get("/destroy").await;
        }
        after.get("/destroy").await;
    }
    assert_eq!(replay.get("/count").await.body, "1");
}

/// L3's race: a session holding `user=ann`; a slow request loads it, then `interrupt` (a
/// logout or a login) runs to completion, then the slow request sets `cart=1`. The slow
/// request answers `200` without handing out a session and its change is dropped; the old id
/// stays dead. Returns the service, the interrupting browser and the old id.
async fn slow_write_after(options: Options, interrupt: &str) -> (Arc<Service>, Browser, String) {
    let (svc, loaded, proceed) = service_with_slow_route(options);
    let (mut b, old) = ann(&svc).await;
    let slow = spawn_get(&svc, &old, "/slow?key=cart&value=1");
    loaded.notified().await;
    assert_eq!(b.get(interrupt).await.status, StatusCode::OK);
    proceed.notify_one();
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    assert!(
        r.set_cookies.is_empty(),
        "the slow request must not hand out a session"
    );
    let mut replay = Browser::with_cookie(svc.clone(), C, &old);
    assert_eq!(replay.get("/get?key=user").await.body, "none");
    assert_eq!(replay.get("/get?key=cart").await.body, "none");
    (svc, b, old)
}

async fn l3_a_slow_request_cannot_revive_a_logged_out_session(options: Options) {
    let (svc, _, _) = slow_write_after(options, "/destroy").await;
    assert_eq!(Browser::new(svc).get("/count").await.body, "0");
}

/// L3 with a login (a regenerate) instead of a logout: the new id holds the login only; the
/// slow request's change is dropped, not moved to the new id.
async fn l3_a_slow_request_cannot_revive_a_regenerated_session(options: Options) {
    let (_, mut b, old) = slow_write_after(options, "/regenerate?key=user&value=bob").await;
    assert_ne!(b.cookie(C).unwrap(), old);
    assert_eq!(b.get("/get?key=user").await.body, "bob");
    assert_eq!(
        b.get("/get?key=cart").await.body,
        "none",
        "the slow request's change is dropped, not moved"
    );
    assert_eq!(b.get("/count").await.body, "1");
}

#[tokio::test]
async fn websocket_upgrades_can_skip_the_save() {
    let svc = service(Options {
        ignore_release_for_websocket: Some(true),
        ..memory()
    });
    let res = TestClient::get("http://127.0.0.1:5800/set?key=k&value=v")
        .add_header("upgrade", "websocket", true)
        .send(&*svc)
        .await;
    assert!(res.cookies().get(C).is_none());
    assert_eq!(Browser::new(svc).get("/count").await.body, "0");
}

#[tokio::test]
async fn r6_a_full_memory_store_refuses_newcomers_and_keeps_everyone_else() {
    let svc = service(Options {
        provider_config: "max_sessions=3".into(),
        ..memory()
    });
    let mut first = Browser::new(svc.clone());
    first.get("/set?key=user&value=ann").await;
    for _ in 0..2 {
        Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    }
    let r = Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_opaque(&r.body);
    assert!(r.set_cookies.is_empty());
    assert_eq!(first.get("/get?key=user").await.body, "ann");
    first.get("/set?key=more&value=1").await;
    assert_eq!(first.get("/get?key=more").await.body, "1");
}

#[tokio::test]
async fn r6_a_full_memory_store_makes_room_from_expired_sessions() {
    let clock = Clock::manual();
    let svc = service(Options {
        provider_config: "max_sessions=2".into(),
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(60)),
        ..memory()
    });
    for _ in 0..2 {
        Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    }
    let full = Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    clock.advance(Duration::from_secs(61));
    let mut newcomer = Browser::new(svc);
    let r = newcomer.get("/set?key=k&value=w").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "expired sessions were swept to make room"
    );
    assert_eq!(newcomer.get("/get?key=k").await.body, "w");
    assert_eq!(newcomer.get("/count").await.body, "1");
}

#[tokio::test]
async fn r3_a_corrupt_record_is_removed_and_the_visitor_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Browser::new(service(file(&dir)));
    b.get("/set?key=k&value=v").await;
    let sid = b.cookie(C).unwrap();
    let key = SessionId::parse(&sid, 32).unwrap().storage_key();
    let path = dir.path().join("s").join(&key[..2]).join(&key);
    std::fs::write(&path, b"garbage").unwrap();
    let r = b.get("/get?key=k").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
    assert!(!path.exists(), "the corrupt record was removed");
    let r = b.get("/set?key=k&value=w").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(b.cookie(C).unwrap(), sid);
    assert_eq!(b.get("/get?key=k").await.body, "w");
}

/// A memory provider behind switches and counters: `down` makes every call unavailable,
/// `save_fails` breaks saves, `collide` makes the next `create` report a taken id, and
/// `loads` / `writes` count the calls that reach it (`writes`: create, save, destroy,
/// regenerate). It answers nothing at once, so every call goes through the async methods.
#[derive(Debug, Default)]
struct Probe {
    down: AtomicBool,
    save_fails: AtomicBool,
    collide: AtomicBool,
    loads: AtomicUsize,
    writes: AtomicUsize,
}

/// A provider built from a shared [`Probe`] and a memory provider on the handler's clock.
#[derive(Debug)]
struct Probed {
    probe: Arc<Probe>,
    inner: MemoryProvider,
}

impl Probed {
    /// Registers `name` as a provider that goes through `probe`.
    fn register(name: &str, probe: &Arc<Probe>) {
        let probe = Arc::clone(probe);
        register(name, move |ctx| {
            Ok(Arc::new(Probed {
                probe: Arc::clone(&probe),
                inner: MemoryProvider::new(100, ctx.clock.clone()),
            }) as Arc<dyn Provider>)
        })
        .unwrap();
    }

    fn check(&self) -> sessioner::Result<()> {
        if self.probe.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                provider: "flaky",
                source: "connection refused: 10.0.0.7:6379 secret".into(),
            });
        }
        Ok(())
    }

    fn write(&self) -> sessioner::Result<()> {
        self.check()?;
        self.probe.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Provider for Probed {
    async fn load(&self, id: &SessionId) -> sessioner::Result<Option<Record>> {
        self.check()?;
        self.probe.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(id).await
    }
    async fn create(&self, id: &SessionId, record: &Record) -> sessioner::Result<bool> {
        self.write()?;
        if self.probe.collide.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.create(id, record).await
    }
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> sessioner::Result<bool> {
        self.write()?;
        if self.probe.save_fails.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                provider: "flaky",
                source: "disk full at /secret/path".into(),
            });
        }
        self.inner.save(id, changes).await
    }
    async fn destroy(&self, id: &SessionId) -> sessioner::Result<()> {
        self.write()?;
        self.inner.destroy(id).await
    }
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> sessioner::Result<Regenerated> {
        self.write()?;
        self.inner.regenerate(old, new).await
    }
    async fn count(&self) -> sessioner::Result<usize> {
        self.inner.count().await
    }
}

#[tokio::test]
async fn r1_r2_r9_bug12_backend_failures_are_opaque_http_errors_and_recover() {
    let probe = Arc::new(Probe::default());
    Probed::register("flaky-test", &probe);
    assert!(matches!(
        register("flaky-test", |_| unreachable!()),
        Err(Error::DuplicateProvider(_))
    ));
    let svc = service(Options {
        provider: "flaky-test".into(),
        ..Default::default()
    });
    let mut b = Browser::new(svc);
    b.get("/set?key=user&value=ann").await;
    let sid = b.cookie(C).unwrap();

    probe.down.store(true, Ordering::SeqCst);
    let r = b.get("/get?key=user").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_opaque(&r.body);
    assert!(r.set_cookies.is_empty(), "the cookie is kept");
    assert_eq!(
        b.get("/hello").await.body,
        "hello",
        "routes that never touch the session still work"
    );

    probe.down.store(false, Ordering::SeqCst);
    assert_eq!(
        b.get("/get?key=user").await.body,
        "ann",
        "recovers when the backend returns"
    );
    assert_eq!(b.cookie(C).unwrap(), sid);

    probe.save_fails.store(true, Ordering::SeqCst);
    let r = b.get("/set?key=user&value=bob").await;
    assert_eq!(
        r.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a failed save is never a silent 200"
    );
    assert_opaque(&r.body);
    assert!(!r.body.contains("ok"), "the handler's body is not sent");
    probe.save_fails.store(false, Ordering::SeqCst);
    assert_eq!(b.get("/get?key=user").await.body, "ann");
}

#[tokio::test]
async fn s4_a_colliding_id_is_replaced_not_overwritten() {
    let probe = Arc::new(Probe {
        collide: AtomicBool::new(true),
        ..Default::default()
    });
    Probed::register("collide-once-test", &probe);
    let mut b = Browser::new(service(Options {
        provider: "collide-once-test".into(),
        ..Default::default()
    }));
    let r = b.get("/set?key=k&value=v").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.cookie(C).is_some());
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert_eq!(b.get("/count").await.body, "1");
    assert_eq!(
        probe.writes.load(Ordering::SeqCst),
        2,
        "one refused create, one that stored"
    );
}

#[tokio::test]
async fn a_request_that_never_asks_for_its_session_never_reaches_the_backend() {
    let probe = Arc::new(Probe::default());
    Probed::register("lazy-test", &probe);
    let mut b = Browser::new(service(Options {
        provider: "lazy-test".into(),
        ..Default::default()
    }));
    b.get("/set?key=k&value=v").await;
    let (loads, writes) = (&probe.loads, &probe.writes);
    assert_eq!(
        (loads.load(Ordering::SeqCst), writes.load(Ordering::SeqCst)),
        (0, 1)
    );
    for _ in 0..3 {
        let r = b.get("/hello").await;
        assert_eq!(r.body, "hello");
        assert!(r.set_cookies.is_empty());
    }
    assert_eq!(
        (loads.load(Ordering::SeqCst), writes.load(Ordering::SeqCst)),
        (0, 1),
        "a route that never asks loaded or wrote the session"
    );
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert_eq!(
        (loads.load(Ordering::SeqCst), writes.load(Ordering::SeqCst)),
        (1, 1),
        "a read is one load and no write"
    );
}

#[tokio::test]
async fn a_read_only_request_writes_at_most_once_per_tenth_of_max_lifetime() {
    let probe = Arc::new(Probe::default());
    Probed::register("touch-test", &probe);
    let clock = Clock::manual();
    let mut b = Browser::new(service(Options {
        provider: "touch-test".into(),
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(100)),
        ..Default::default()
    }));
    b.get("/set?key=k&value=v").await;
    let writes = || probe.writes.load(Ordering::SeqCst);
    assert_eq!(writes(), 1);
    // Within a tenth (10 s) of the lifetime since the last write: reads write nothing.
    for _ in 0..4 {
        clock.advance(Duration::from_secs(2));
        assert_eq!(b.get("/get?key=k").await.body, "v");
    }
    assert_eq!(
        writes(),
        1,
        "a read refreshed a deadline that gained under a tenth"
    );
    // 11 s after the last write the refresh gains more than a tenth: one write, then quiet.
    clock.advance(Duration::from_secs(3));
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert_eq!(
        writes(),
        2,
        "the read did not refresh a deadline a tenth old"
    );
    assert_eq!(b.get("/get?key=k").await.body, "v");
    assert_eq!(writes(), 2);
    // The refreshed deadline holds: 95 s after that write the session is still alive.
    clock.advance(Duration::from_secs(95));
    assert_eq!(b.get("/get?key=k").await.body, "v");
}

#[tokio::test]
async fn a_route_without_the_middleware_gets_a_clear_error() {
    #[handler]
    async fn orphan(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
        depot.session()?;
        Ok("unreachable")
    }
    let mut res = TestClient::get("http://127.0.0.1:5800/")
        .send(Router::new().get(orphan))
        .await;
    assert_eq!(res.status_code, Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_opaque(
        &salvo::test::ResponseExt::take_string(&mut res)
            .await
            .unwrap(),
    );
}

/// `key=value` as the session holds it now, `key=none` if absent.
async fn shown(s: &sessioner::Store, key: &str) -> Result<String, Error> {
    Ok(format!(
        "{key}={}",
        s.get::<String>(key).await?.unwrap_or_else(|| "none".into())
    ))
}

/// One request that sets, reads, deletes and sets again, answering what it saw at each step.
#[handler]
async fn edit_in_one_request(depot: &mut Depot) -> Result<String, Error> {
    let s = depot.session()?;
    let mut seen = vec![shown(s, "kept").await?];
    s.set("a", "1").await?;
    s.set("a", "2").await?;
    seen.push(shown(s, "a").await?);
    s.delete("a").await?;
    seen.push(shown(s, "a").await?);
    s.set("b", "3").await?;
    s.delete("kept").await?;
    seen.push(shown(s, "kept").await?);
    s.set("kept", "4").await?;
    s.set("gone", "5").await?;
    s.delete("gone").await?;
    seen.push(shown(s, "kept").await?);
    Ok(seen.join(" "))
}

async fn values_set_read_and_deleted_in_one_request_are_saved_as_last_seen(options: Options) {
    let svc = Arc::new(Service::new(
        router(common::build(options)).push(Router::with_path("edit").get(edit_in_one_request)),
    ));
    let mut b = Browser::new(svc);
    b.get("/set?key=kept&value=9").await;
    b.get("/set?key=b&value=8").await;
    assert_eq!(
        b.get("/edit").await.body,
        "kept=9 a=2 a=none kept=none kept=4"
    );
    assert_eq!(b.get("/get?key=a").await.body, "none");
    assert_eq!(b.get("/get?key=gone").await.body, "none");
    assert_eq!(b.get("/get?key=b").await.body, "3");
    assert_eq!(b.get("/get?key=kept").await.body, "4");
    // A new session (no cookie) made in one request holds the same result.
    let mut fresh = Browser::new(Arc::clone(&b.service));
    assert_eq!(
        fresh.get("/edit").await.body,
        "kept=none a=2 a=none kept=none kept=4"
    );
    assert_eq!(fresh.get("/get?key=b").await.body, "3");
    assert_eq!(fresh.get("/get?key=gone").await.body, "none");
}
