//! The provider conformance suite, run against every built-in backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod suite;

use std::sync::Arc;

use sessioner::provider::{file::FileProvider, memory::MemoryProvider};
use sessioner::{Clock, Provider};

conformance!(memory, {
    let p: Arc<dyn Provider> = Arc::new(MemoryProvider::new(1_000_000, Clock::system()));
    (p, ())
});

#[tokio::test]
async fn memory_answers_at_once() {
    let p: Arc<dyn Provider> = Arc::new(MemoryProvider::new(1_000_000, Clock::system()));
    assert!(suite::answers_at_once_agree(p).await);
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p: Arc<dyn Provider> = Arc::new(
        sessioner::provider::sled::SledProvider::open(dir.path().join("db"), Clock::system())
            .unwrap(),
    );
    assert!(suite::answers_at_once_agree(p).await);
}

conformance!(file, {
    let dir = tempfile::tempdir().unwrap();
    let p: Arc<dyn Provider> =
        Arc::new(FileProvider::open(dir.path().join("s"), Clock::system()).unwrap());
    (p, dir)
});

#[tokio::test]
async fn file_answers_at_once_only_with_sync_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let build = |config: String| {
        let ctx = sessioner::provider::ProviderContext::new(
            config,
            Clock::system(),
            std::time::Duration::from_secs(3600),
        );
        sessioner::provider::build("file", &ctx).unwrap()
    };
    let always = build(dir.path().join("a").display().to_string());
    assert!(!suite::answers_at_once_agree(always).await);
    let lifecycle = build(format!("{},sync=lifecycle", dir.path().join("l").display()));
    assert!(suite::answers_at_once_agree(lifecycle).await);
}

conformance!(file_sync_lifecycle, {
    let dir = tempfile::tempdir().unwrap();
    let ctx = sessioner::provider::ProviderContext::new(
        format!("{},sync=lifecycle", dir.path().join("s").display()),
        Clock::system(),
        std::time::Duration::from_secs(3600),
    );
    let p = sessioner::provider::build("file", &ctx).unwrap();
    (p, dir)
});

#[cfg(feature = "sled")]
conformance!(sled, {
    let dir = tempfile::tempdir().unwrap();
    let p: Arc<dyn Provider> = Arc::new(
        sessioner::provider::sled::SledProvider::open(dir.path().join("db"), Clock::system())
            .unwrap(),
    );
    (p, dir)
});

#[cfg(feature = "redis")]
#[path = "../support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
conformance!(redis, {
    let server = redis_server::RedisServer::start();
    let config = format!(
        "{}?prefix={}",
        server.url(),
        redis_server::unique_prefix("conformance")
    );
    let p: Arc<dyn Provider> =
        Arc::new(sessioner::provider::redis::RedisProvider::new(&config, Clock::system()).unwrap());
    (p, server)
});
