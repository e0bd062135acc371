//! Operating isogate: metrics after real traffic, hot reload under load (valid and invalid
//! files, SIGHUP), removed tenants' Workers evicted, graceful shutdown draining in-flight work.

mod common;

use common::{fixtures, sha256_hex, worker, Gateway, ALPHA_KEY};
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";

/// Polls `cond` (a readiness-style signal of the gateway) until it holds, bounded.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn tenant(name: &str, keys: &[&str], extra: &str) -> String {
    let mut t = format!("  - name: {name}\n    api_keys:\n");
    for k in keys {
        t.push_str(&format!("      - sha256: \"{}\"\n", sha256_hex(k)));
    }
    t.push_str(&format!(
        "    limits: {{ cpu_ms: 50, max_concurrency: 1, max_queue: 0 }}\n{extra}"
    ));
    t
}

#[test]
fn metrics_move_with_real_traffic() {
    let egress = "    egress:\n      allow:\n        - host: api.example.com\n";
    let g = Gateway::start(POOL, &tenant("alpha", &[ALPHA_KEY], egress));
    // ok execute, a cpu_limit kill, an egress denial, a get miss then hit, a 401, a 429.
    assert_eq!(
        g.execute(ALPHA_KEY, "async () => 1", json!({}))["result"],
        1
    );
    let v = g.execute(ALPHA_KEY, "async () => { while (true) {} }", json!({}));
    assert_eq!(v["error"]["kind"], "cpu_limit");
    let v = g.execute(
        ALPHA_KEY,
        "async () => { try { await fetch('https://evil.example.net/'); } catch (e) { return e.message; } }",
        json!({}),
    );
    assert!(v["result"].as_str().unwrap().contains("denied"), "{v}");
    assert_eq!(g.put(ALPHA_KEY, "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 2);
    assert_eq!(
        g.post_json("bad-key", "/v1/execute", &json!({})).status(),
        401
    );

    let m = |s: &str| g.metric(s);
    assert_eq!(
        m(r#"isogate_invocations_total{outcome="ok",tenant="alpha"}"#),
        4.0
    );
    assert_eq!(
        m(r#"isogate_invocations_total{outcome="cpu_limit",tenant="alpha"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_egress_requests_total{decision="deny",rule="none",tenant="alpha"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_requests_total{route="execute",status_class="2xx",tenant="alpha"}"#),
        3.0
    );
    assert_eq!(
        m(r#"isogate_requests_total{route="dispatch",status_class="2xx",tenant="alpha"}"#),
        2.0
    );
    assert_eq!(
        m(r#"isogate_requests_total{route="execute",status_class="4xx",tenant="unauthenticated"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_worker_cache_events_total{event="miss",tenant="alpha"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_worker_cache_events_total{event="hit",tenant="alpha"}"#),
        1.0
    );
    assert_eq!(m(r#"isogate_cached_workers{tenant="alpha"}"#), 1.0);
    // The stored Worker was one write to the store, which now takes room in state_dir.
    assert_eq!(
        m(r#"isogate_store_writes_total{op="put",result="ok"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_store_writes_total{op="put",result="error"}"#),
        0.0
    );
    assert!(m("isogate_state_dir_bytes") > 0.0);
    // Error answers by whose failure they are: the tenant's code, the client; none of isogate's.
    assert_eq!(
        m(r#"isogate_request_failures_total{fault="tenant",kind="cpu_limit"}"#),
        1.0
    );
    assert_eq!(
        m(r#"isogate_request_failures_total{fault="client",kind="unauthorized"}"#),
        1.0
    );
    for kind in ["internal", "worker_crashed", "overloaded", "memory_budget"] {
        let sample = format!(r#"isogate_request_failures_total{{fault="platform",kind="{kind}"}}"#);
        assert_eq!(m(&sample), 0.0, "{sample}");
    }
    assert!(m(r#"isogate_isolate_starts_total{kind="warm_refill"}"#) >= 2.0);
    assert!(m("isogate_invocation_cpu_seconds_count{tenant=\"alpha\"}") >= 5.0);
    assert_eq!(m(r#"isogate_config_reloads_total{result="ok"}"#), 1.0);
    assert!(m("isogate_config_last_reload_success_timestamp_seconds") > 1.7e9);
    let text = g.metrics();
    assert!(
        text.contains("isogate_build_info{engine=\"quickjs\""),
        "{text}"
    );
    // Labels are bounded: no URL, host outside the config, or worker id appears.
    assert!(
        !text.contains("evil.example.net") && !text.contains("counter\""),
        "{text}"
    );

    // A 429 from the tenant's concurrency limit is counted.
    let slow = worker("export default { async fetch() { await new Promise(r => setTimeout(r, 1500)); return new Response('slow'); } }");
    assert_eq!(g.put_worker(ALPHA_KEY, "slow", &slow).status(), 201);
    let (client, url) = (g.client.clone(), g.url("/w/slow/"));
    let holder = std::thread::spawn(move || loop {
        let s = client
            .get(&url)
            .bearer_auth(ALPHA_KEY)
            .send()
            .map(|r| r.status().as_u16());
        if !matches!(s, Ok(429)) {
            return s;
        }
    });
    wait_for("a 429", || g.execute_status(ALPHA_KEY) == 429);
    assert_eq!(holder.join().unwrap().unwrap(), 200);
    assert!(m(r#"isogate_tenant_rejections_total{reason="concurrency",tenant="alpha"}"#) >= 1.0);
    assert!(m(r#"isogate_request_failures_total{fault="tenant",kind="too_many_requests"}"#) >= 1.0);
}

/// Sends requests as tenant `alpha` until stopped; counts successes and failures.
fn steady_client(
    g: &Gateway,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    let (client, url) = (g.client.clone(), g.url("/v1/execute"));
    std::thread::spawn(move || {
        let mut ok = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match client
                .post(&url)
                .bearer_auth(ALPHA_KEY)
                .json(&json!({"code": "async () => 'up'"}))
                .send()
            {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failures.push(format!("{} {}", r.status(), r.text().unwrap_or_default())),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (ok, failures)
    })
}

#[test]
fn reload_applies_valid_configs_keeps_the_last_good_one_and_never_fails_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let alpha = |extra_key: bool| {
        let keys: &[&str] = if extra_key {
            &[ALPHA_KEY, "alpha-old-key"]
        } else {
            &[ALPHA_KEY]
        };
        let mut t = "  - name: alpha\n    api_keys:\n".to_string();
        for k in keys {
            t.push_str(&format!("      - sha256: \"{}\"\n", sha256_hex(k)));
        }
        t.push_str("    limits: { max_concurrency: 4 }\n");
        t
    };
    let gamma = tenant("gamma", &["gamma-key"], "");
    let mut g = Gateway::start_in(tmp.path(), POOL, &alpha(true));
    let stop = Arc::new(AtomicBool::new(false));
    let client = steady_client(&g, stop.clone());
    let reloads = |g: &Gateway, result: &str| {
        g.metric(&format!(
            "isogate_config_reloads_total{{result=\"{result}\"}}"
        ))
    };

    // v2: a new tenant, a removed key. Applied when the file changes.
    assert_eq!(g.execute_status("alpha-old-key"), 200);
    g.rewrite_config(POOL, &(alpha(false) + &gamma));
    wait_for("reload of v2", || reloads(&g, "ok") >= 2.0);
    assert_eq!(
        g.execute("gamma-key", "async () => 'gamma'", json!({}))["result"],
        "gamma"
    );
    assert_eq!(g.execute_status("alpha-old-key"), 401);

    // An invalid file is rejected; the last good configuration keeps serving.
    let before = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        before.replace("max_concurrency: 4", "max_concurrency: \"lots\""),
    )
    .unwrap();
    wait_for("rejection", || reloads(&g, "rejected") >= 1.0);
    assert_eq!(
        g.execute("gamma-key", "async () => 'still'", json!({}))["result"],
        "still"
    );

    // gamma caches a Worker; v3 removes gamma (via SIGHUP after the write) → its Workers are
    // evicted: when gamma comes back in v4 the Worker is cold.
    g.rewrite_config(POOL, &(alpha(false) + &gamma));
    wait_for("reload of v2 again", || reloads(&g, "ok") >= 3.0);
    assert_eq!(g.put("gamma-key", "gw", fixtures::COUNTER), 201);
    assert_eq!(g.count("gamma-key", "gw"), 1);
    assert_eq!(g.list("gamma-key")["workers"][0]["state"], "warm");
    g.rewrite_config(POOL, &alpha(false));
    Command::new("kill")
        .args(["-HUP", &g.pid().to_string()])
        .status()
        .unwrap();
    wait_for("reload of v3", || reloads(&g, "ok") >= 4.0);
    assert_eq!(g.execute_status("gamma-key"), 401);
    g.rewrite_config(POOL, &(alpha(false) + &gamma));
    wait_for("reload of v4", || reloads(&g, "ok") >= 5.0);
    assert_eq!(
        g.list("gamma-key")["workers"],
        json!([{"id": "gw", "state": "cold"}])
    );
    assert_eq!(g.count("gamma-key", "gw"), 1);

    // SIGHUP reloads even when the file is unchanged.
    let n = reloads(&g, "ok");
    Command::new("kill")
        .args(["-HUP", &g.pid().to_string()])
        .status()
        .unwrap();
    wait_for("SIGHUP reload", || reloads(&g, "ok") > n);

    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = client.join().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
    assert!(ok > 10, "the steady client made only {ok} requests");
    assert!(g.stop());
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_full(
        tmp.path(),
        POOL,
        &tenant("alpha", &[ALPHA_KEY], "")
            .replace("max_concurrency: 1, max_queue: 0", "max_concurrency: 8"),
        "shutdown: { grace_period_s: 1, drain_timeout_s: 20 }\n",
        &[],
    );
    let slow = worker("export default { async fetch() { await new Promise(r => setTimeout(r, 2000)); return new Response('finished'); } }");
    assert_eq!(g.put_worker(ALPHA_KEY, "slow", &slow).status(), 201);
    let (client, url) = (g.client.clone(), g.url("/w/slow/"));
    let in_flight = std::thread::spawn(move || {
        let r = client.get(&url).bearer_auth(ALPHA_KEY).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    wait_for("the slow request to be in flight", || {
        g.metric("isogate_requests_in_flight") >= 1.0
    });
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &g.pid().to_string()])
        .status()
        .unwrap();
    // Not ready any more, but still serving during the grace period.
    let readyz = format!("http://{}/readyz", g.admin);
    wait_for("/readyz 503", || {
        g.client
            .get(&readyz)
            .send()
            .map(|r| r.status() == 503)
            .unwrap_or(false)
    });
    if started.elapsed() < Duration::from_millis(800) {
        // Well inside the 1 s grace period: new requests are still served.
        let v = g.execute(ALPHA_KEY, "async () => 'grace'", json!({}));
        assert_eq!(v["result"], "grace");
    }
    // The request that was in flight completes.
    assert_eq!(in_flight.join().unwrap(), (200, "finished".to_string()));
    assert!(
        g.wait_exit(Duration::from_secs(20)),
        "isogate did not exit 0 after draining:\n{}",
        g.log()
    );
}
