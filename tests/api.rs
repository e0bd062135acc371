//! The HTTP API end to end: every endpoint, every error status, tenant isolation and
//! persistence across a restart, against the real binary on loopback.

mod common;

use common::{fixtures, worker, Gateway, ALPHA_KEY, BETA_KEY};
use serde_json::{json, Value};

const POOL: &str = "threads: 2, warm_isolates: 4, max_cached_workers: 100, idle_ttl_s: 300";

fn gateway() -> Gateway {
    Gateway::start(POOL, &common::tenants_yaml())
}

/// alpha, beta and a tenant `tiny` (key `tiny-key`) with the given limits.
fn gateway_with_tiny(limits: &str) -> Gateway {
    Gateway::start(
        POOL,
        &(common::tenants_yaml() + &common::tenant_yaml("tiny", "tiny-key", limits)),
    )
}

fn error_kind(r: reqwest::blocking::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().expect("error body is JSON");
    (
        status,
        v["error"]["kind"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn execute_runs_a_codemode_snippet_with_result_and_logs() {
    let g = gateway();
    let v = g.execute(ALPHA_KEY, fixtures::CODEMODE, json!({}));
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["result"]["total"], 14);
    assert_eq!(v["result"]["results"][2], json!({"id": 3, "square": 9}));
    let logs = v["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0], json!({"level": "log", "message": "looking up 1"}));

    let v = g.execute(
        ALPHA_KEY,
        "async (env) => env.a + env.b",
        json!({"a": 2, "b": 3}),
    );
    assert_eq!(v["result"], 5);

    // User-code failures are 200 with an error object.
    let v = g.execute(
        ALPHA_KEY,
        "async () => { throw new Error('nope') }",
        json!({}),
    );
    assert_eq!(v["result"], Value::Null);
    assert_eq!(v["error"]["kind"], "exception");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    let v = g.execute(ALPHA_KEY, "async () => {", json!({}));
    assert_eq!(v["error"]["kind"], "syntax");
    let v = g.execute(ALPHA_KEY, "async () => { while (true) {} }", json!({}));
    assert_eq!(v["error"]["kind"], "cpu_limit");
}

#[test]
fn execute_limits_can_be_lowered_but_not_raised() {
    let g = gateway();
    // Busy work for up to 2 s of wall time: cut at a requested 5 ms of CPU (even on a loaded
    // machine, where 30 ms of wall time may be less than 5 ms of CPU).
    let code =
        "async () => { const end = Date.now() + 2000; while (Date.now() < end) {} return 'done'; }";
    let r = g.post_json(
        ALPHA_KEY,
        "/v1/execute",
        &json!({"code": code, "limits": {"cpu_ms": 5}}),
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["kind"], "cpu_limit", "{v}");
    let r = g.post_json(
        ALPHA_KEY,
        "/v1/execute",
        &json!({"code": "async () => { while (true) {} }", "limits": {"cpu_ms": 100000}}),
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["kind"], "cpu_limit");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("50 ms"),
        "{v}"
    );
}

#[test]
fn load_runs_hello_and_echo_json_workers() {
    let g = gateway();
    let r = g.load(ALPHA_KEY, &worker(fixtures::HELLO), None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().unwrap(), "hello from isogate");

    let r = g.load(
        ALPHA_KEY,
        &worker(fixtures::ECHO_JSON),
        Some(json!({"method": "POST", "url": "/items?x=1&y=two", "headers": {"content-type": "application/json"}, "body": "{\"n\":[1,2]}"})),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(
        v,
        json!({"method": "POST", "path": "/items", "query": {"x": "1", "y": "two"}, "body": {"n": [1, 2]}})
    );
}

#[test]
fn load_reports_exceptions_as_500_and_limits_as_503() {
    let g = gateway();
    let (s, kind, msg) = error_kind(g.load(
        ALPHA_KEY,
        &worker("export default { async fetch() { throw new TypeError('bad thing') } }"),
        None,
    ));
    assert_eq!((s, kind.as_str()), (500, "exception"));
    assert!(msg.contains("bad thing"));
    let (s, kind, _) = error_kind(g.load(ALPHA_KEY, &worker("export default {"), None));
    assert_eq!((s, kind.as_str()), (500, "syntax"));
    let (s, kind, msg) = error_kind(g.load(ALPHA_KEY, &worker(fixtures::HOSTILE_CPU), None));
    assert_eq!((s, kind.as_str()), (503, "cpu_limit"));
    assert!(msg.contains("CPU"), "{msg}");
}

#[test]
fn counter_counts_with_get_and_restarts_with_load() {
    let g = gateway();
    for _ in 0..3 {
        let r = g.load(ALPHA_KEY, &worker(fixtures::COUNTER), None);
        assert_eq!(
            r.json::<Value>().unwrap()["count"],
            1,
            "load() never reuses an isolate"
        );
    }
    assert_eq!(g.put(ALPHA_KEY, "counter", fixtures::COUNTER), 201);
    for expected in 1..=5 {
        let r = g.get_worker(ALPHA_KEY, "counter", "");
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().unwrap()["count"], expected);
    }
    // Eviction (DELETE forgets the code too) and re-creation start the count again.
    assert_eq!(
        g.client
            .delete(g.url("/v1/workers/counter"))
            .bearer_auth(ALPHA_KEY)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(g.get_worker(ALPHA_KEY, "counter", "").status(), 404);
    assert_eq!(g.put(ALPHA_KEY, "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
}

#[test]
fn put_is_201_then_200_for_same_code_then_409_for_different_code() {
    let g = gateway();
    assert_eq!(g.put(ALPHA_KEY, "hello@v1", fixtures::HELLO), 201);
    assert_eq!(g.put(ALPHA_KEY, "hello@v1", fixtures::HELLO), 200);
    let (s, kind, msg) =
        error_kind(g.put_worker(ALPHA_KEY, "hello@v1", &worker(fixtures::COUNTER)));
    assert_eq!((s, kind.as_str()), (409, "conflict"));
    assert!(msg.contains("versioned"), "{msg}");
    // The original code still serves.
    assert_eq!(
        g.get_worker(ALPHA_KEY, "hello@v1", "").text().unwrap(),
        "hello from isogate"
    );
}

#[test]
fn dispatch_passes_method_path_query_headers_body_but_not_the_api_key() {
    let g = gateway();
    let code = worker(
        r#"export default { async fetch(request) {
            const url = new URL(request.url);
            return Response.json({ method: request.method, path: url.pathname, q: url.search,
                                   auth: request.headers.get("authorization"), custom: request.headers.get("x-custom"),
                                   body: await request.text() }, { status: 202, headers: { "x-from-worker": "yes" } });
        } }"#,
    );
    assert_eq!(g.put_worker(ALPHA_KEY, "inspect", &code).status(), 201);
    let r = g
        .client
        .post(g.url("/w/inspect/a/b?c=d"))
        .bearer_auth(ALPHA_KEY)
        .header("x-custom", "42")
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-from-worker"], "yes");
    let v: Value = r.json().unwrap();
    assert_eq!(
        v,
        json!({"method": "POST", "path": "/a/b", "q": "?c=d", "auth": null, "custom": "42", "body": "payload"})
    );
}

#[test]
fn list_shows_warm_and_cold_workers() {
    let g = gateway();
    assert_eq!(g.put(ALPHA_KEY, "a", fixtures::HELLO), 201);
    assert_eq!(g.put(ALPHA_KEY, "b", fixtures::HELLO), 201);
    assert_eq!(g.get_worker(ALPHA_KEY, "a", "").status(), 200);
    let v = g.list(ALPHA_KEY);
    assert_eq!(
        v,
        json!({"workers": [{"id": "a", "state": "warm"}, {"id": "b", "state": "cold"}]})
    );
}

#[test]
fn error_statuses_are_json_with_kind_and_message() {
    let g =
        gateway_with_tiny("max_body_bytes: 1024, max_concurrency: 1, max_queue: 0, wall_ms: 10000");
    // 401: missing and unknown keys.
    let r = g
        .client
        .post(g.url("/v1/execute"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_kind(r).0, 401);
    let r = g.post_json(
        "wrong-key",
        "/v1/execute",
        &json!({"code": "async () => 1"}),
    );
    assert_eq!(error_kind(r).1, "unauthorized");
    // 400: malformed JSON, unknown field, wrong type naming the field, bad WorkerCode.
    let r = g
        .client
        .post(g.url("/v1/execute"))
        .bearer_auth(ALPHA_KEY)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(error_kind(r).0, 400);
    let (s, _, msg) =
        error_kind(g.post_json(ALPHA_KEY, "/v1/execute", &json!({"code": "x", "cod": 1})));
    assert_eq!(s, 400);
    assert!(msg.contains("cod"), "{msg}");
    let (s, _, msg) = error_kind(g.post_json(ALPHA_KEY, "/v1/execute", &json!({"code": 5})));
    assert_eq!(s, 400);
    assert!(msg.contains("code"), "{msg}");
    let (s, _, msg) = error_kind(g.load(
        ALPHA_KEY,
        &json!({"mainModule": "x.js", "modules": {"w.js": ""}}),
        None,
    ));
    assert_eq!(s, 400);
    assert!(msg.contains("mainModule"), "{msg}");
    let (s, _, msg) = error_kind(g.put_worker(
        ALPHA_KEY,
        "w",
        &json!({"mainModule": "w.js", "modules": {"w.js": ""}, "globalOutbound": "x"}),
    ));
    assert_eq!(s, 400);
    assert!(msg.contains("globalOutbound"), "{msg}");
    let (s, _, msg) = error_kind(g.put_worker(ALPHA_KEY, "bad%20id", &worker(fixtures::HELLO)));
    assert_eq!(s, 400);
    assert!(msg.contains("worker id"), "{msg}");
    // 404: unknown route and unknown worker.
    assert_eq!(error_kind(g.get_worker(ALPHA_KEY, "nope", "")).0, 404);
    let r = g
        .client
        .get(g.url("/v2/whatever"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .unwrap();
    assert_eq!(error_kind(r).1, "not_found");
    let r = g
        .client
        .delete(g.url("/v1/workers/nope"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .unwrap();
    assert_eq!(error_kind(r).0, 404);
    // 405 with Allow.
    let r = g
        .client
        .get(g.url("/v1/execute"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(error_kind(r).0, 405);
    // 413: over the tenant's max_body_bytes.
    let big = json!({"code": "x".repeat(4096)});
    let r = g.post_json("tiny-key", "/v1/execute", &big);
    assert_eq!(
        error_kind(r),
        (
            413,
            "payload_too_large".into(),
            "request body exceeds this tenant's limit of 1024 bytes".into()
        )
    );
    // The same body is fine for a tenant with a larger limit.
    assert_eq!(g.post_json(ALPHA_KEY, "/v1/execute", &big).status(), 200);
}

#[test]
fn tenant_over_its_concurrency_gets_429_with_retry_after() {
    let g = gateway_with_tiny("max_concurrency: 1, max_queue: 0, wall_ms: 10000");
    let slow = worker("export default { async fetch() { await new Promise(r => setTimeout(r, 1500)); return new Response('slow'); } }");
    assert_eq!(g.put_worker("tiny-key", "slow", &slow).status(), 201);
    let (client, url) = (g.client.clone(), g.url("/w/slow/"));
    // The holder retries until it is admitted (our probes below may hold the slot for a moment
    // and get it refused); then it holds the only slot for 1.5 s.
    let holder = std::thread::spawn(move || loop {
        let status = client
            .get(&url)
            .bearer_auth("tiny-key")
            .send()
            .map(|r| r.status().as_u16());
        if !matches!(status, Ok(429)) {
            return status;
        }
    });
    // While the slow request holds the only slot, further requests are refused at once.
    let started = std::time::Instant::now();
    let mut refused = None;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let r = g
            .client
            .post(g.url("/v1/execute"))
            .bearer_auth("tiny-key")
            .json(&json!({"code": "async () => 1"}))
            .send()
            .unwrap();
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a 429 while the slot was held");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_kind(r).1, "too_many_requests");
    assert_eq!(holder.join().unwrap().unwrap(), 200);
    // Other tenants are not affected.
    assert_eq!(
        g.execute(ALPHA_KEY, "async () => 7", json!({}))["result"],
        7
    );
}

#[test]
fn tenant_b_cannot_reach_tenant_a_workers() {
    let g = gateway();
    assert_eq!(g.put(ALPHA_KEY, "secret-worker", fixtures::COUNTER), 201);
    assert_eq!(g.get_worker(ALPHA_KEY, "secret-worker", "").status(), 200);
    assert_eq!(
        error_kind(g.get_worker(BETA_KEY, "secret-worker", "")).0,
        404
    );
    let r = g
        .client
        .delete(g.url("/v1/workers/secret-worker"))
        .bearer_auth(BETA_KEY)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let v = g.list(BETA_KEY);
    assert_eq!(v, json!({"workers": []}));
    // Beta's own worker of the same id is a different Worker with its own state.
    assert_eq!(g.put(BETA_KEY, "secret-worker", fixtures::COUNTER), 201);
    assert_eq!(g.count(BETA_KEY, "secret-worker"), 1);
    assert_eq!(g.count(ALPHA_KEY, "secret-worker"), 2);
}

#[test]
fn stored_workers_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = common::tenants_yaml();
    {
        let mut g = Gateway::start_in(tmp.path(), POOL, &tenants);
        assert_eq!(g.put(ALPHA_KEY, "persisted", fixtures::COUNTER), 201);
        assert_eq!(g.count(ALPHA_KEY, "persisted"), 1);
        assert_eq!(g.count(ALPHA_KEY, "persisted"), 2);
        assert!(g.stop(), "graceful stop exits 0");
    }
    let g = Gateway::start_in(tmp.path(), POOL, &tenants);
    // The code survived; the isolate (and its module state) did not.
    assert_eq!(g.count(ALPHA_KEY, "persisted"), 1);
    assert_eq!(g.put(ALPHA_KEY, "persisted", fixtures::COUNTER), 200);
}

#[test]
fn idle_workers_expire_after_the_ttl_and_restart_from_scratch() {
    let g = Gateway::start(
        "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 1",
        &common::tenants_yaml(),
    );
    assert_eq!(g.put(ALPHA_KEY, "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 2);
    // Watch the listing until the idle Worker turns cold (bounded).
    let started = std::time::Instant::now();
    loop {
        let v = g.list(ALPHA_KEY);
        if v["workers"][0]["state"] == "cold" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "never expired: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
}

#[test]
fn admin_listener_answers_health_and_readiness() {
    let g = gateway();
    let r = g
        .client
        .get(format!("http://{}/healthz", g.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = g
        .client
        .get(format!("http://{}/readyz", g.admin))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "ready");
    assert!(v["warm_isolates"].as_u64().unwrap() > 0);
    let r = g
        .client
        .get(format!("http://{}/nope", g.admin))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}
