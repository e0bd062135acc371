//! Hostile Worker code against the real gateway: each runaway is stopped with a clear error
//! naming its limit, and the gateway (and other tenants) keep serving.

mod common;

use common::{fixtures, worker, Gateway, ALPHA_KEY, BETA_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const POOL: &str = "threads: 2, warm_isolates: 4, max_cached_workers: 100, idle_ttl_s: 300";

fn body(r: reqwest::blocking::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().expect("json body"))
}

#[test]
fn cpu_bomb_is_killed_and_the_next_request_is_served() {
    let g = Gateway::start(POOL, &common::tenants_yaml());
    let (s, v) = body(g.load(ALPHA_KEY, &worker(fixtures::HOSTILE_CPU), None));
    assert_eq!(s, 503);
    assert_eq!(v["error"]["kind"], "cpu_limit");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("50 ms"),
        "{v}"
    );
    let r = g.load(ALPHA_KEY, &worker(fixtures::HELLO), None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hello from isogate");
}

#[test]
fn memory_bomb_is_stopped_at_the_memory_limit_and_the_process_stays_up() {
    let g = Gateway::start(
        POOL,
        &common::tenant_yaml(
            "alpha",
            ALPHA_KEY,
            "cpu_ms: 5000, memory_mb: 32, wall_ms: 10000",
        ),
    );
    let (s, v) = body(g.load(ALPHA_KEY, &worker(fixtures::HOSTILE_MEMORY), None));
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["kind"], "memory_limit");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("32 MiB"),
        "{v}"
    );
    let r = g.load(ALPHA_KEY, &worker(fixtures::HELLO), None);
    assert_eq!(r.text().unwrap(), "hello from isogate");
}

#[test]
fn escape_attempt_sees_no_host_internals_and_no_network() {
    let g = Gateway::start(POOL, &common::tenants_yaml());
    let (s, v) = body(g.load(ALPHA_KEY, &worker(fixtures::HOSTILE_ESCAPE), None));
    assert_eq!(s, 200);
    assert_eq!(v["Deno"], "undefined");
    assert_eq!(v["process"], "undefined");
    assert_eq!(v["require"], "undefined");
    assert_eq!(v["ops"], "undefined");
    assert_eq!(
        v["metadata"],
        "blocked: network access is disabled for this Worker (the tenant has no egress rules)"
    );
}

#[test]
fn cached_worker_that_breaches_a_limit_is_discarded_and_recreated() {
    let g = Gateway::start(POOL, &common::tenants_yaml());
    let code = worker(
        r#"let count = 0;
        export default { async fetch(request) {
            count += 1;
            if (new URL(request.url).pathname === "/spin") while (true) {}
            return Response.json({ count });
        } }"#,
    );
    assert_eq!(g.put_worker(ALPHA_KEY, "fragile", &code).status(), 201);
    assert_eq!(g.count(ALPHA_KEY, "fragile"), 1);
    assert_eq!(g.count(ALPHA_KEY, "fragile"), 2);
    let (s, v) = body(g.get_worker(ALPHA_KEY, "fragile", "spin"));
    assert_eq!((s, v["error"]["kind"].as_str()), (503, Some("cpu_limit")));
    // The isolate was discarded: a fresh one starts counting again.
    assert_eq!(g.count(ALPHA_KEY, "fragile"), 1);
}

#[test]
fn never_settling_worker_hits_the_wall_limit() {
    let g = Gateway::start(
        POOL,
        &common::tenant_yaml("alpha", ALPHA_KEY, "wall_ms: 300"),
    );
    let (s, v) = body(g.load(
        ALPHA_KEY,
        &worker("export default { fetch() { return new Promise(() => {}); } }"),
        None,
    ));
    assert_eq!((s, v["error"]["kind"].as_str()), (503, Some("wall_limit")));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("300 ms"),
        "{v}"
    );
}

#[test]
fn one_tenants_flood_does_not_starve_another() {
    let flood_limits = "cpu_ms: 50, max_concurrency: 2, max_queue: 2, queue_timeout_ms: 100";
    let g = Gateway::start(
        POOL,
        &(common::tenant_yaml("alpha", ALPHA_KEY, flood_limits)
            + &common::tenant_yaml("beta", BETA_KEY, "cpu_ms: 50")),
    );
    assert_eq!(g.put(ALPHA_KEY, "spin", fixtures::HOSTILE_CPU), 201);
    let stop_at = Instant::now() + Duration::from_secs(3);
    let flooders: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (g.client.clone(), g.url("/w/spin/"));
            std::thread::spawn(move || {
                let (mut limited, mut refused) = (0u32, 0u32);
                while Instant::now() < stop_at {
                    match client
                        .get(&url)
                        .bearer_auth(ALPHA_KEY)
                        .send()
                        .map(|r| r.status().as_u16())
                    {
                        Ok(503) => limited += 1,
                        Ok(429) => refused += 1,
                        other => panic!("unexpected flood answer {other:?}"),
                    }
                }
                (limited, refused)
            })
        })
        .collect();
    let mut served = 0;
    while Instant::now() < stop_at {
        let v = g.execute(BETA_KEY, "async () => 'still here'", json!({}));
        assert_eq!(v["result"], "still here", "{v}");
        served += 1;
    }
    let (mut limited, mut refused) = (0, 0);
    for f in flooders {
        let (l, r) = f.join().unwrap();
        limited += l;
        refused += r;
    }
    assert!(served >= 5, "beta was starved: {served} requests served");
    assert!(limited > 0, "the flood ran");
    assert!(
        refused > 0,
        "the flood was held back by alpha's own concurrency limit"
    );
}
