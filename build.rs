//! Says, once per build of the tests, which backend features they were built without, so a
//! plain `cargo test` cannot pass for a run of every backend.
//!
//! - It speaks only when the `testing` feature is on, which this package's own
//!   dev-dependency turns on for test builds (`cargo test`, `--all-targets`), and some backend
//!   feature is off: `cargo build`, `cargo test --all-features` and the per-feature checks of
//!   `.ci/run` stay silent.
//! - Cargo shows a build script's warnings only for path dependencies, the packages being
//!   worked on locally; an application depending on sessioner from a registry or git never
//!   sees it.

const BACKENDS: [&str; 7] = [
    "memory", "file", "sled", "redis", "memcache", "postgres", "mysql",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TESTING").is_none() {
        return;
    }
    let off: Vec<&str> = BACKENDS
        .into_iter()
        .filter(|b| std::env::var_os(format!("CARGO_FEATURE_{}", b.to_ascii_uppercase())).is_none())
        .collect();
    if !off.is_empty() {
        println!(
            "cargo::warning=tests built without the backend feature(s) {}: their tests are left out; `cargo test --all-features` (or scripts/test) runs every backend",
            off.join(", ")
        );
    }
}
