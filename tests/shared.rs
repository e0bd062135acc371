//! Replicas sharing one real `redis-server` (`shared.redis`): a Worker stored through one
//! replica is served by the others (with empty state directories), concurrent conflicting PUTs
//! of one id across replicas make exactly one 201, a DELETE on one replica evicts the warm
//! copies on the others within a second, and a Redis outage keeps cached Workers serving while
//! PUT answers 503 at once, until Redis is back. The replies to a streamed execute's
//! client-side tool calls reach it through any replica.

mod common;

use common::redis::Redis;
use common::{worker, Gateway, ALPHA_KEY, BETA_KEY};
use serde_json::json;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const POOL: &str = "threads: 1, warm_isolates: 1, max_cached_workers: 20, idle_ttl_s: 300";
const COUNTER: &str =
    "let n = 0; export default { fetch() { n++; return Response.json({ count: n }); } };";

const LIMITS: &str =
    "cpu_ms: 200, memory_mb: 32, wall_ms: 5000, max_concurrency: 32, max_queue: 64";

fn tenants() -> String {
    common::tenant_yaml("alpha", ALPHA_KEY, LIMITS) + &common::tenant_yaml("beta", BETA_KEY, LIMITS)
}

fn replica(redis: &Redis) -> Gateway {
    Gateway::start_with(
        POOL,
        &tenants(),
        &format!(
            "shared: {{ redis: {{ url: \"{}\", command_timeout_ms: 300, connect_timeout_ms: 300 }} }}\n",
            redis.url()
        ),
        &[("RUST_LOG", "warn,isogate_gateway::cluster=info")],
    )
}

fn status(r: reqwest::blocking::Response) -> u16 {
    r.status().as_u16()
}

#[test]
fn replicas_serve_workers_stored_through_any_of_them() {
    let redis = Redis::start();
    let (a, b, c) = (replica(&redis), replica(&redis), replica(&redis));
    assert_eq!(a.put(ALPHA_KEY, "counter", COUNTER), 201);
    for g in [&b, &c] {
        assert_eq!(
            g.count(ALPHA_KEY, "counter"),
            1,
            "served by another replica"
        );
        assert_eq!(g.list(ALPHA_KEY)["workers"][0]["id"], "counter");
    }
    // The same id: identical code is 200 anywhere, different code 409 anywhere.
    assert_eq!(c.put(ALPHA_KEY, "counter", COUNTER), 200);
    assert_eq!(b.put(ALPHA_KEY, "counter", "export default {}"), 409);
    // A new replica with an empty state_dir serves it too.
    let d = replica(&redis);
    assert_eq!(d.count(ALPHA_KEY, "counter"), 1);
    assert_eq!(status(d.get_worker(ALPHA_KEY, "nowhere", "")), 404);
    assert_eq!(d.metric("isogate_shared_store_up"), 1.0);
    // Every replica counts the four that share the Redis (heartbeats every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.metric("isogate_replicas_seen") != 4.0 {
        assert!(
            Instant::now() < deadline,
            "replicas seen: {}",
            a.metric("isogate_replicas_seen")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn concurrent_conflicting_puts_across_replicas_make_one_201() {
    let redis = Redis::start();
    let replicas = [replica(&redis), replica(&redis), replica(&redis)];
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let g = &replicas[i % 3];
                s.spawn(move || {
                    let src =
                        format!("export default {{ fetch() {{ return new Response('v{i}'); }} }};");
                    status(g.put_worker(ALPHA_KEY, "race", &worker(&src)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|&&s| s == 201).count();
    let conflicts = statuses.iter().filter(|&&s| s == 409).count();
    assert_eq!((created, conflicts), (1, 8), "{statuses:?}");
    // Every replica serves the one that won.
    let answers: Vec<String> = replicas
        .iter()
        .map(|g| g.get_worker(ALPHA_KEY, "race", "").text().unwrap())
        .collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
}

#[test]
fn a_delete_on_one_replica_evicts_warm_copies_everywhere_within_a_second() {
    let redis = Redis::start();
    let (a, b, c) = (replica(&redis), replica(&redis), replica(&redis));
    assert_eq!(a.put(ALPHA_KEY, "counter", COUNTER), 201);
    for g in [&a, &c] {
        assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
        assert_eq!(
            g.count(ALPHA_KEY, "counter"),
            2,
            "warm: the isolate keeps its state"
        );
    }
    let r = b
        .client
        .delete(b.url("/v1/workers/counter"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted = Instant::now();
    for g in [&a, &c] {
        while status(g.get_worker(ALPHA_KEY, "counter", "")) != 404 {
            assert!(
                deleted.elapsed() < Duration::from_secs(1),
                "a deleted Worker is still served a second later"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The warm copies are gone, not only the code: the same id stored again starts afresh.
    assert_eq!(b.put(ALPHA_KEY, "counter", COUNTER), 201);
    for g in [&a, &c] {
        assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
    }
    let listed: Value = a.list(ALPHA_KEY);
    assert_eq!(listed["workers"].as_array().unwrap().len(), 1);
}

#[test]
fn a_redis_outage_keeps_cached_workers_serving_and_fails_writes_fast() {
    let mut redis = Redis::start();
    let a = replica(&redis);
    assert_eq!(a.put(ALPHA_KEY, "counter", COUNTER), 201);
    assert_eq!(a.count(ALPHA_KEY, "counter"), 1);
    redis.kill();

    // Cached Workers keep serving.
    assert_eq!(a.count(ALPHA_KEY, "counter"), 2);
    // A write fails fast, with a clear error and Retry-After.
    let t0 = Instant::now();
    let r = a.put_worker(ALPHA_KEY, "other", &worker(COUNTER));
    let took = t0.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["kind"], "store_unavailable", "{body}");
    assert!(took < Duration::from_secs(2), "PUT took {took:?}");
    // A Worker not seen yet cannot be read: 503, not 404.
    assert_eq!(status(a.get_worker(ALPHA_KEY, "unseen", "")), 503);
    // The replica is degraded, not failing: /readyz stays 200 and says so.
    let ready = a
        .client
        .get(format!("http://{}/readyz", a.admin))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().unwrap()["status"], "degraded");
    assert_eq!(a.metric("isogate_shared_store_up"), 0.0);
    assert!(a.log().contains("the shared store (Redis) is unreachable"));

    // Redis comes back (its append-only file kept the data): everything recovers, no restart.
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(a.put_worker(ALPHA_KEY, "other", &worker(COUNTER)));
        if s == 201 {
            break;
        }
        assert_eq!(s, 503);
        assert!(
            Instant::now() < deadline,
            "PUT did not recover after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.count(ALPHA_KEY, "other"), 1);
    assert_eq!(a.metric("isogate_shared_store_up"), 1.0);
    assert!(a.log().contains("the shared store (Redis) is reachable"));
}

#[test]
fn an_egress_burst_is_one_budget_across_replicas() {
    use common::upstream::{Answer, Upstream};
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = hits.clone();
    let upstream = Upstream::start(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Answer::json(200, &serde_json::json!({"ok": true}))
    });
    let mut redis = Redis::start();
    let tenant = format!(
        "{}    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          name: up\n          rate_limit: {{ per_second: 1, burst: 5 }}\n",
        common::tenant_yaml("alpha", ALPHA_KEY, LIMITS),
        upstream.port
    );
    let start = |_| {
        Gateway::start_with(
            POOL,
            &tenant,
            &format!("shared: {{ redis: {{ url: \"{}\" }} }}\n", redis.url()),
            &[],
        )
    };
    let replicas: Vec<Gateway> = (0..3).map(start).collect();
    let fetcher = format!(
        "export default {{ async fetch() {{ const r = await fetch('http://127.0.0.1:{}/x'); return new Response(String(r.status)); }} }};",
        upstream.port
    );
    assert_eq!(replicas[0].put(ALPHA_KEY, "fetcher", &fetcher), 201);
    let t0 = Instant::now();
    let statuses: Vec<String> = (0..15)
        .map(|i| {
            replicas[i % 3]
                .get_worker(ALPHA_KEY, "fetcher", "")
                .text()
                .unwrap()
        })
        .collect();
    let elapsed = t0.elapsed().as_secs();
    let allowed = statuses.iter().filter(|s| *s == "200").count() as u64;
    let limited = statuses.iter().filter(|s| *s == "429").count() as u64;
    assert_eq!(allowed + limited, 15, "{statuses:?}");
    // One burst of 5 for all three replicas (plus what refilled at 1/s meanwhile); each
    // replica on its own would have let 15 through.
    assert!(
        (5..=5 + elapsed).contains(&allowed),
        "{allowed} allowed in {elapsed} s: {statuses:?}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        allowed,
        "the upstream saw what was allowed"
    );

    // Redis gone: each replica falls back to its own limits (said by a metric and a log
    // line), and fetches go on.
    redis.kill();
    let r = replicas[1]
        .get_worker(ALPHA_KEY, "fetcher", "")
        .text()
        .unwrap();
    assert!(r == "200" || r == "429", "{r}");
    assert_eq!(
        replicas[1].metric("isogate_egress_rate_limit_fallback"),
        1.0
    );
    assert!(replicas[1]
        .log()
        .contains("each replica enforces its own limits"));
}

#[test]
fn replies_to_a_streamed_execute_reach_it_through_any_replica() {
    let redis = Redis::start();
    let (a, b) = (replica(&redis), replica(&redis));
    let r = reqwest::blocking::Client::new()
        .post(a.url("/v1/execute"))
        .bearer_auth(ALPHA_KEY)
        .header("accept", "application/x-ndjson")
        .json(&json!({
            "code": "async () => [await ns.f({ n: 1 }), await ns.f({ n: 2 })]",
            "tools": {"ns": ["f"]},
        }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let execution = r.headers()["isogate-execution"]
        .to_str()
        .unwrap()
        .to_string();
    let mut lines = BufReader::new(r).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    for n in [1, 2] {
        let call = next();
        assert_eq!(call["args"]["n"], n, "{call}");
        let path = call["reply_to"].as_str().unwrap();
        // Another tenant's key finds nothing on any replica.
        assert_eq!(
            status(b.post_json(BETA_KEY, path, &json!({"result": 0}))),
            404
        );
        // The first answer reaches the execution through the other replica (relayed by Redis),
        // the second through its own.
        let via = if n == 1 { &b } else { &a };
        assert_eq!(
            status(via.post_json(ALPHA_KEY, path, &json!({"result": n * 10}))),
            200
        );
        if n == 1 {
            // Answered: the owner says so through the relay.
            assert_eq!(
                status(b.post_json(ALPHA_KEY, path, &json!({"result": 0}))),
                404
            );
        }
    }
    let result = next();
    assert_eq!(result["type"], "result");
    assert_eq!(result["result"], json!([10, 20]), "{result}");
    // Ended: 410 through either replica, once the owner has marked it in Redis (right after
    // the result event); never another tenant's to learn.
    let path = format!("/v1/executions/{execution}/calls/1");
    assert_eq!(
        status(a.post_json(ALPHA_KEY, &path, &json!({"result": 0}))),
        410
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(b.post_json(ALPHA_KEY, &path, &json!({"result": 0})));
        if s == 410 {
            break;
        }
        assert_eq!(s, 404, "before the mark, the relay finds no call waiting");
        assert!(Instant::now() < deadline, "the end never reached Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status(b.post_json(BETA_KEY, &path, &json!({"result": 0}))),
        404
    );
}
