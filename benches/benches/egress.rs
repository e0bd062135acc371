//! Criterion micro-benchmarks of the egress hot paths: the policy decision (URL parse + rule
//! match + SSRF address check), a rate-limit check, credential injection + response scrubbing,
//! parsing the example config, and the shared (Redis) rate-limit check against a local
//! `redis-server` (skipped, saying so, when there is none).
//!
//! `cargo bench -p isogate-benches --bench egress`
#![allow(unreachable_pub, missing_docs)] // a benchmark binary (criterion_group! defines undocumented items)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use isogate_config::{Config, Injection};
use isogate_gateway::egress::{limits::TenantLimiters, redact, scrub::Scrubber};
use isogate_policy::{classify_ip, parse_target, EgressPolicy, RateLimit, TargetHost};
use isogate_pool::EgressResponse;
use secrecy::SecretString;

fn example(name: &str) -> String {
    let path = format!("{}/../deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bench(c: &mut Criterion) {
    let config = Config::from_yaml_str(&example("egress.yaml"), "egress.yaml").expect("example");
    let policy = config.policy();
    let tenant = policy.tenants()[0].clone();
    let egress: &EgressPolicy = &tenant.egress;

    c.bench_function("policy_decision", |b| {
        b.iter(|| {
            let target = parse_target(black_box(
                "https://api.github.com/repos/acme/app/issues?per_page=5",
            ))
            .expect("target");
            let decision = egress.decide("GET", &target);
            let checked = match &target.host {
                TargetHost::Ip(ip) => classify_ip(*ip).is_none(),
                TargetHost::Domain(_) => {
                    classify_ip(black_box("140.82.112.6".parse().unwrap())).is_none()
                }
            };
            black_box((decision, checked))
        })
    });

    let limited = EgressPolicy {
        rate_limit: Some(RateLimit {
            per_second: 1_000_000_000,
            burst: 1_000_000_000,
        }),
        ..EgressPolicy::default()
    };
    let limiters = TenantLimiters::new(&limited);
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| black_box(limiters.check(None)))
    });

    shared_rate_limit(c);

    let inject = Injection::Header {
        header: "Authorization".into(),
        value: "Bearer ${secret}".into(),
    };
    let secret = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";
    let injected = vec![("github".to_string(), SecretString::from(secret.to_string()))];
    // The live path caches the automaton per set of credential values.
    let scrubber = Scrubber::new(&injected);
    let body = serde_json::to_vec(&serde_json::json!({
        "items": (0..50).map(|i| serde_json::json!({"number": i, "title": format!("issue {i}")})).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    c.bench_function("inject_and_scrub_4kib", |b| {
        b.iter(|| {
            let header = inject.render(black_box(secret));
            let response = EgressResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.clone(),
                streamed: false,
                hops: 0,
                url: String::new(),
            };
            black_box((header, redact::scrub_with(response, &scrubber, |_| {})))
        })
    });

    let text = example("isogate.yaml");
    c.bench_function("config_parse_example", |b| {
        b.iter(|| black_box(Config::from_yaml_str(black_box(&text), "isogate.yaml").is_ok()))
    });
}

/// The shared limiter's check: one EVALSHA round trip to a `redis-server` on loopback (the
/// rule's and the tenant's GCRA cells), through the gateway's own client.
fn shared_rate_limit(c: &mut Criterion) {
    let server = match isogate_testkit::redis::RedisServer::start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("shared_rate_limit_check: skipped ({e})");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config: isogate_config::RedisConfig = serde_json::from_value(serde_json::json!({
        "url": server.url(),
    }))
    .expect("redis config");
    let shared = {
        let _guard = runtime.enter();
        isogate_gateway::cluster::Shared::open(
            &config,
            None,
            std::sync::Arc::new(isogate_gateway::metrics::Metrics::new()),
        )
        .expect("client")
    };
    let limits = [
        (
            "rule:api".to_string(),
            RateLimit {
                per_second: 1_000_000,
                burst: 1_000_000,
            },
        ),
        (
            "tenant".to_string(),
            RateLimit {
                per_second: 1_000_000,
                burst: 1_000_000,
            },
        ),
    ];
    c.bench_function("shared_rate_limit_check", |b| {
        b.iter(|| {
            let verdict = runtime
                .block_on(shared.throttle("bench", &limits))
                .expect("redis answers");
            black_box(verdict)
        })
    });
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
