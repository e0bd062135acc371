//! Criterion micro-benchmarks of the isolate pool, in process (no HTTP): starting one isolate,
//! what one isolate thread does per `load()` (start an isolate, evaluate a Worker, dispatch,
//! discard) and per warm `get()`.
//!
//! `cargo bench -p isogate-benches --bench pool`
#![allow(unreachable_pub, missing_docs)] // a benchmark binary (criterion_group! defines undocumented items)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use isogate_pool::{
    DisabledEgress, Hold, HttpRequest, Invoker, Limits, NoopObserver, Pool, PoolSettings,
    SealedCode, WorkerCode,
};
use std::sync::Arc;
use std::time::Duration;

const HELLO: &str =
    r#"export default { async fetch() { return new Response("hello from isogate"); } }"#;

fn pool(warm: usize) -> Pool {
    Pool::start(
        PoolSettings {
            threads: 1,
            warm_isolates: warm,
            max_cached_workers: 100,
            idle_ttl: Duration::from_secs(3600),
            queue_capacity: 1024,
        },
        Arc::new(DisabledEgress),
        Arc::new(NoopObserver),
    )
    .expect("pool")
}

fn code() -> WorkerCode {
    serde_json::from_value(serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}}))
        .expect("code")
}

fn request() -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: "http://bench/".into(),
        headers: vec![],
        body: vec![],
    }
}

const LIMITS: Limits = Limits {
    cpu_ms: 1000,
    memory_mb: 64,
    wall_ms: 10_000,
    subrequests: 10,
    worker_concurrency: 32,
};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(1));

    // No warm isolates: every load() starts its isolate on the request path, so this is the
    // sustained isolate creation rate of one isolate thread (one core).
    let cold = pool(0);
    let code_arc = Arc::new(code());
    let invoker = Invoker {
        tenant: "bench".into(),
        worker_id: None,
        invocation: 0,
        apis: Vec::new(),
        trace: 0,
        tools: Vec::new(),
    };
    // An isolate with the Worker API installed, started and dropped (what a warm isolate costs
    // the pool; streams, Intl and crypto.subtle load later, on first use).
    group.bench_function("isolate_start", |b| {
        b.iter(|| {
            tokio::task::LocalSet::new()
                .block_on(&rt, isogate_pool::start_and_drop_isolate())
                .expect("isolate")
        })
    });
    // The start alone (the pool starts warm isolates ahead; a load() that finds none waits for
    // this), each isolate dropped outside the measurement.
    group.bench_function("isolate_create", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                let started = std::time::Instant::now();
                let iso = tokio::task::LocalSet::new()
                    .block_on(&rt, isogate_pool::start_isolate())
                    .expect("isolate");
                spent += started.elapsed();
                tokio::task::LocalSet::new().block_on(&rt, async move { drop(iso) });
            }
            spent
        })
    });
    group.bench_function("load_hello_cold_isolate", |b| {
        b.iter(|| {
            let inv = rt
                .block_on(cold.load(
                    invoker.clone(),
                    code_arc.clone(),
                    request(),
                    LIMITS,
                    Hold::none(),
                ))
                .expect("load");
            assert!(inv.outcome.is_ok());
        })
    });
    drop(cold);

    let warm = pool(0);
    let sealed = SealedCode::new(code());
    let get_invoker = Invoker {
        tenant: "bench".into(),
        worker_id: Some("hello".into()),
        invocation: 0,
        apis: Vec::new(),
        trace: 0,
        tools: Vec::new(),
    };
    group.bench_function("get_hello_warm", |b| {
        b.iter(|| {
            let inv = rt
                .block_on(warm.get(
                    get_invoker.clone(),
                    sealed.clone(),
                    request(),
                    LIMITS,
                    100,
                    Hold::none(),
                ))
                .expect("get");
            assert!(inv.outcome.is_ok());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
