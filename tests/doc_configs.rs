//! The README's table of `provider_config` strings printed in the macaron and beego docs:
//! the memory, file and ledis rows (the redis and memcache rows are tested beside their
//! providers). The relative directories the docs print are created under a temporary working
//! directory: this binary holds this one test, so changing the directory disturbs no other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sessioner::Clock;
use sessioner::provider::{ProviderContext, build};

#[tokio::test]
async fn the_docs_memory_file_and_ledis_strings_build_working_providers() {
    let rows = [
        ("memory", ""),
        ("file", "data/sessions"),
        ("file", "./tmp"),
        #[cfg(feature = "sled")]
        ("ledis", "data/sessions"),
    ];
    for (name, config) in rows {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let ctx = ProviderContext::new(config, Clock::system(), Duration::from_secs(60));
        let provider = build(name, &ctx).unwrap_or_else(|e| panic!("{name} `{config}`: {e}"));
        assert_eq!(provider.count().await.unwrap(), 0, "{name} `{config}`");
        if !config.is_empty() {
            assert!(
                dir.path().join(config).is_dir(),
                "{name} `{config}` keeps its sessions there"
            );
        }
    }
}
