//! The provider conformance suite (`sessioner::testing`), run against every built-in backend
//! through the public macro: one module per backend, one test per clause, so
//! `cargo test --test conformance sled` runs sled's clauses only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broken;

use std::sync::Arc;
use std::time::Duration;

use sessioner::provider::{ProviderContext, file::FileProvider, memory::MemoryProvider};
use sessioner::testing::{block_on, fast_paths_agree};
use sessioner::{Clock, Provider};

fn memory() -> Arc<dyn Provider> {
    Arc::new(MemoryProvider::new(1_000_000, Clock::system()))
}

/// A file provider in a fresh temporary directory, built by name with `config` after the path.
fn file(suffix: &str) -> (Arc<dyn Provider>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{suffix}", dir.path().join("s").display());
    let ctx = ProviderContext::new(config, Clock::system(), Duration::from_secs(3600));
    (sessioner::provider::build("file", &ctx).unwrap(), dir)
}

sessioner::testing::conformance!(memory, (memory(), ()));

sessioner::testing::conformance!(file, {
    let dir = tempfile::tempdir().unwrap();
    let p: Arc<dyn Provider> =
        Arc::new(FileProvider::open(dir.path().join("s"), Clock::system()).unwrap());
    (p, dir)
});

sessioner::testing::conformance!(file_sync_lifecycle, file(",sync=lifecycle"));

#[cfg(feature = "sled")]
sessioner::testing::conformance!(sled, {
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
sessioner::testing::conformance!(
    redis,
    {
        let config = format!(
            "{}?prefix={}",
            redis_server::shared_url(),
            redis_server::unique_prefix("conformance")
        );
        let p: Arc<dyn Provider> = Arc::new(
            sessioner::provider::redis::RedisProvider::new(&config, Clock::system()).unwrap(),
        );
        (p, ())
    },
    expiry = ByBackend
);

#[cfg(feature = "memcache")]
#[path = "../support/memcached_server.rs"]
mod memcached_server;

#[cfg(feature = "memcache")]
sessioner::testing::conformance!(
    memcache,
    {
        let config = format!(
            "{};prefix={}",
            memcached_server::shared_addr(),
            memcached_server::unique_prefix("conformance")
        );
        let p: Arc<dyn Provider> = Arc::new(
            sessioner::provider::memcache::MemcacheProvider::new(&config, Clock::system()).unwrap(),
        );
        (p, ())
    },
    expiry = ByBackend,
    count = Unsupported
);

#[cfg(feature = "postgres")]
#[path = "../support/postgres_server.rs"]
mod postgres_server;

#[cfg(feature = "postgres")]
sessioner::testing::conformance!(postgres, {
    let config = format!(
        "{}?table={}",
        postgres_server::shared().url(),
        postgres_server::unique_table("conformance")
    );
    let p: Arc<dyn Provider> = Arc::new(
        sessioner::provider::postgres::PostgresProvider::new(&config, Clock::system()).unwrap(),
    );
    (p, ())
});

#[cfg(feature = "mysql")]
#[path = "../support/mysql_server.rs"]
mod mysql_server;

#[cfg(feature = "mysql")]
sessioner::testing::conformance!(mysql, {
    let config = format!(
        "{}?table={}",
        mysql_server::shared().url(),
        mysql_server::unique_table("conformance")
    );
    let p: Arc<dyn Provider> =
        Arc::new(sessioner::provider::mysql::MysqlProvider::new(&config, Clock::system()).unwrap());
    (p, ())
});

// The fast paths are optional; these backends promise them, so the clause is not vacuous.

#[test]
fn memory_answers_at_once() {
    assert!(block_on(fast_paths_agree(memory())));
}

#[cfg(feature = "sled")]
#[test]
fn sled_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p: Arc<dyn Provider> = Arc::new(
        sessioner::provider::sled::SledProvider::open(dir.path().join("db"), Clock::system())
            .unwrap(),
    );
    assert!(block_on(fast_paths_agree(p)));
}

#[test]
fn file_answers_at_once_only_with_sync_lifecycle() {
    block_on(async {
        let (always, _a) = file("");
        assert!(!fast_paths_agree(always).await);
        let (lifecycle, _l) = file(",sync=lifecycle");
        assert!(fast_paths_agree(lifecycle).await);
    });
}
