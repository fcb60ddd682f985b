//! Memory per session of the `memory` provider: stores N one-value sessions and reads the
//! process's resident set (`VmRSS`) before and after.
//!
//! ```sh
//! cargo run --release --example memory_footprint                 # 1,000,000 sessions
//! SESSIONS=100000 cargo run --release --example memory_footprint
//! ```
//!
//! Each session holds one value, `count` = `1` (6 bytes of key and JSON text), like the
//! benchmark's counter. The report gives the bytes per session beyond those 6 bytes, then
//! what the process still holds after every session expired and GC removed them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sessioner::provider::memory::MemoryProvider;
use sessioner::{Clock, DEFAULT_ID_LENGTH, Provider, Record, SessionId};

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let clock = Clock::manual();
    let provider = MemoryProvider::new(n.max(1), clock.clone());
    let record = Record {
        values: HashMap::from([("count".to_owned(), "1".to_owned())]),
        expires_at: clock.now_ms() + 3_600_000,
        absolute_deadline: None,
    };
    let value_bytes = "count".len() + "1".len();
    // The ids are generated up front so that only what the provider keeps is counted.
    let ids: Vec<SessionId> = (0..n)
        .map(|_| SessionId::generate(DEFAULT_ID_LENGTH).unwrap())
        .collect();

    let before = status_bytes("VmRSS");
    let started = Instant::now();
    for id in &ids {
        assert!(provider.create(id, &record).await.unwrap());
    }
    let elapsed = started.elapsed();
    // The provider keeps its own copy of each id; ours were counted in `before` already.
    drop(ids);
    let after = status_bytes("VmRSS");
    assert_eq!(provider.count().await.unwrap(), n);

    clock.advance(Duration::from_secs(7200));
    let gc_started = Instant::now();
    let removed = provider.gc().await.unwrap();
    let gc_elapsed = gc_started.elapsed();
    let after_gc = status_bytes("VmRSS");

    let grown = after.saturating_sub(before);
    let per_session = grown as f64 / n as f64;
    println!("sessions                  {n}");
    println!(
        "create                    {:.0} ns per session",
        elapsed.as_nanos() as f64 / n as f64
    );
    println!("VmRSS before              {:.1} MiB", mib(before));
    println!("VmRSS after               {:.1} MiB", mib(after));
    println!("grown                     {:.1} MiB", mib(grown));
    println!("per session               {per_session:.0} bytes");
    println!(
        "per session beyond value  {:.0} bytes (value: {value_bytes} bytes of key and JSON)",
        per_session - value_bytes as f64
    );
    println!(
        "gc                        removed {removed} in {:.0} ms",
        gc_elapsed.as_secs_f64() * 1000.0
    );
    println!("VmRSS after gc            {:.1} MiB", mib(after_gc));
    println!(
        "VmHWM                     {:.1} MiB",
        mib(status_bytes("VmHWM"))
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
