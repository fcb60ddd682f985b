//! SECURITY.md R3 on the stores that keep records on disk (file in both sync modes, sled),
//! through the middleware: a record damaged on disk (here as a crash tears an in-place
//! rewrite: another value of the same length over part of it, the header intact) is logged,
//! removed, and the visitor starts a fresh session; never a 500, never the torn value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Backend, Browser, backend, router};
use salvo::prelude::Service;
use sessioner::{Error, Options, SessionId};

const C: &str = "sessioner";

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The app on `options`' store; a store another handle still holds (sled releases its
/// directory lock from a background thread just after closing) is retried, polling.
fn start(options: &Options) -> Arc<Service> {
    // Bounded by time, not tries: a loaded machine yields slowly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match options.clone().build() {
            Ok(handler) => return Arc::new(Service::new(router(handler))),
            Err(Error::ProviderConfig { reason, .. }) if reason.contains("in use") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot start: {e}"),
        }
    }
    panic!("the store stayed locked after the app stopped");
}

/// Replaces the first `from` in `bytes` by `to` (of the same length).
fn tear(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the value in the record");
    bytes[at..at + to.len()].copy_from_slice(to);
}

/// Tears the stored record of `key` in the stopped app's store.
fn tear_stored(name: &str, config: &str, key: &str) {
    let store = Path::new(config.split(',').next().unwrap());
    if name == "sled" {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = std::iter::repeat_with(std::time::Instant::now)
            .take_while(|now| *now < deadline)
            .find_map(|_| match sled::open(store) {
                Ok(db) => Some(db),
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    std::thread::yield_now();
                    None
                }
                Err(e) => panic!("cannot open {}: {e}", store.display()),
            })
            .expect("the store stayed locked after the app stopped");
        let records = db.open_tree("sessioner/records").unwrap();
        let mut bytes = records.get(key).unwrap().unwrap().to_vec();
        tear(&mut bytes, b"ann-marie", b"eve-marie");
        records.insert(key, bytes).unwrap();
        db.flush().unwrap();
    } else {
        let path = store.join(&key[..2]).join(key);
        let mut bytes = std::fs::read(&path).unwrap();
        tear(&mut bytes, b"ann-marie", b"eve-marie");
        std::fs::write(&path, bytes).unwrap();
    }
}

async fn r3_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh(name: &str) {
    let Backend { options, guard } = backend(name);
    let mut b = Browser::new(start(&options));
    assert_eq!(b.get("/set?key=user&value=ann-marie").await.status, 200);
    let cookie = b.cookie(C).unwrap();
    drop(b); // the app stops, and with it the provider
    let key = SessionId::parse(&cookie, 32).unwrap().storage_key();
    tear_stored(name, &options.provider_config, &key);

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut b = Browser::with_cookie(start(&options), C, &cookie);
    let r = b.get("/get?key=user").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "none"),
        "{name}"
    );
    assert!(r.cookie(C).is_none(), "{name}: a read creates nothing");
    let logged = logs.text();
    assert!(
        logged.contains("corrupt session record removed"),
        "{name}: not logged: {logged}"
    );
    assert!(
        !logged.contains(&cookie),
        "{name}: the log names the session"
    );
    // The torn record's header still says live: a count would see it if it were there.
    assert_eq!(b.get("/count").await.body, "0", "{name}: not removed");
    let again = b.get("/get?key=user").await;
    assert_eq!((again.status.as_u16(), again.body.as_str()), (200, "none"));

    let r = b.get("/set?key=user&value=bob").await;
    assert_eq!(r.status.as_u16(), 200, "{name}");
    let fresh = r.cookie(C).expect("a fresh session").value().to_owned();
    assert_ne!(fresh, cookie, "{name}: the damaged id was adopted");
    assert_eq!(b.get("/get?key=user").await.body, "bob");
    assert_eq!(b.get("/count").await.body, "1", "{name}");
    drop(b);
    drop(guard);
}

#[tokio::test]
async fn r3_file_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh() {
    r3_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh("file").await;
}

#[tokio::test]
async fn r3_file_sync_lifecycle_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh() {
    r3_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh("file_sync_lifecycle").await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn r3_sled_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh() {
    r3_a_torn_record_is_logged_removed_and_the_visitor_starts_afresh("sled").await;
}
