//! Micro benchmarks of sessioner's public building blocks: session ids, the record encoding,
//! provider load/save per backend, and GC of expired sessions.
//!
//! ```sh
//! cargo bench --bench providers                       # short default run
//! cargo bench --bench providers -- provider/memory    # one group
//! SESSIONER_BENCH_GC_1M=1 cargo bench --bench providers -- gc   # adds GC of 1M sessions
//! ```
//!
//! Samples and measurement time are kept small so that a default run is quick; pass
//! criterion's own flags (`-- --sample-size 50 --measurement-time 10`) for tighter numbers.
//! `cargo test --all-targets` runs each benchmark once, as a smoke test.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use sessioner::provider::memory::MemoryProvider;
use sessioner::{ChangeSet, Clock, DEFAULT_ID_LENGTH, Provider, Record, SessionId};
use tokio::runtime::Runtime;

const HOUR_MS: u64 = 3_600_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn id() -> SessionId {
    SessionId::generate(DEFAULT_ID_LENGTH).unwrap()
}

/// A session holding `n` small values, like a logged-in user's.
fn record(clock: &Clock, n: usize) -> Record {
    let mut values = HashMap::from([("count".to_owned(), "1".to_owned())]);
    for i in 1..n {
        values.insert(format!("key{i}"), format!("\"value number {i}\""));
    }
    Record {
        values,
        expires_at: clock.now_ms() + HOUR_MS,
        absolute_deadline: None,
    }
}

/// What `/counter` saves: one key set, the idle deadline moved.
fn counter_change(clock: &Clock, n: u64) -> ChangeSet {
    ChangeSet {
        set: vec![("count".to_owned(), n.to_string())],
        expires_at: clock.now_ms() + HOUR_MS,
        ..Default::default()
    }
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("id");
    g.bench_function("generate", |b| {
        b.iter(|| SessionId::generate(black_box(DEFAULT_ID_LENGTH)).unwrap())
    });
    let value = id().as_str().to_owned();
    g.bench_function("parse", |b| {
        b.iter(|| SessionId::parse(black_box(&value), DEFAULT_ID_LENGTH).unwrap())
    });
    let id = id();
    g.bench_function("storage_key", |b| b.iter(|| black_box(&id).storage_key()));
    g.finish();
}

fn records(c: &mut Criterion) {
    let clock = Clock::system();
    let mut g = c.benchmark_group("record");
    for n in [1, 10] {
        let r = record(&clock, n);
        let bytes = r.encode();
        g.bench_function(format!("encode/{n}"), |b| b.iter(|| black_box(&r).encode()));
        g.bench_function(format!("decode/{n}"), |b| {
            b.iter(|| Record::decode(black_box(&bytes)).unwrap())
        });
    }
    g.finish();
}

/// `load` of a live session and `save` of a counter change, as one `/counter` request does.
fn load_save(c: &mut Criterion, name: &str, provider: Arc<dyn Provider>, clock: &Clock) {
    let rt = runtime();
    let id = id();
    rt.block_on(provider.create(&id, &record(clock, 1)))
        .unwrap();
    let mut g = c.benchmark_group(format!("provider/{name}"));
    g.bench_function("load", |b| {
        b.to_async(&rt)
            .iter(|| async { provider.load(black_box(&id)).await.unwrap().unwrap() })
    });
    let mut n = 0;
    g.bench_function("save", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let changes = counter_change(clock, n);
            let provider = &provider;
            let id = &id;
            async move { assert!(provider.save(id, &changes).await.unwrap()) }
        })
    });
    g.bench_function("create", |b| {
        let r = record(clock, 1);
        b.to_async(&rt)
            .iter(|| async { assert!(provider.create(&self::id(), &r).await.unwrap()) })
    });
    g.finish();
}

fn providers(c: &mut Criterion) {
    let clock = Clock::system();
    load_save(
        c,
        "memory",
        Arc::new(MemoryProvider::new(10_000_000, clock.clone())),
        &clock,
    );
    #[cfg(feature = "file")]
    {
        let dir = tempfile::tempdir().unwrap();
        let file = sessioner::provider::file::FileProvider::open(dir.path(), clock.clone());
        load_save(c, "file", Arc::new(file.unwrap()), &clock);
    }
    #[cfg(feature = "sled")]
    {
        let dir = tempfile::tempdir().unwrap();
        let sled = sessioner::provider::sled::SledProvider::open(dir.path(), clock.clone());
        load_save(c, "sled", Arc::new(sled.unwrap()), &clock);
    }
}

/// A memory provider holding `n` one-value sessions, all expired by the time GC runs.
fn expired_store(rt: &Runtime, n: usize) -> MemoryProvider {
    let clock = Clock::manual();
    let provider = MemoryProvider::new(n, clock.clone());
    let r = record(&clock, 1);
    rt.block_on(async {
        for _ in 0..n {
            provider.create(&id(), &r).await.unwrap();
        }
    });
    clock.advance(Duration::from_millis(2 * HOUR_MS));
    provider
}

fn gc(c: &mut Criterion) {
    let rt = runtime();
    let mut sizes = vec![100_000];
    if std::env::var_os("SESSIONER_BENCH_GC_1M").is_some() {
        sizes.push(1_000_000);
    }
    let mut g = c.benchmark_group("gc");
    // Flat sampling: the fewest iterations, since every one first fills a store.
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in sizes {
        g.bench_function(format!("memory/{n}_expired"), |b| {
            // Filling the store is not timed; each iteration gets a fresh one.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let provider = expired_store(&rt, n);
                    let started = std::time::Instant::now();
                    assert_eq!(rt.block_on(provider.gc()).unwrap(), n);
                    total += started.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = ids, records, providers, gc
}
criterion_main!(benches);
