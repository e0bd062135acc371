//! Native memory (issue 8, defects 1-3) against the real gateway: sizes chosen by a Worker for
//! native (Rust) allocations end that invocation with `memory_limit` instead of aborting the
//! process; memory handed to a Worker never carries another tenant's bytes; bytes held by native
//! objects (Blob, Buffer, ...) count against `memory_mb`.
#![allow(unsafe_code)] // OS APIs in tests; each block has a `// SAFETY:` line

mod common;

use common::{worker, Gateway, ALPHA_KEY, BETA_KEY};
use serde_json::{json, Value};

const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";
const LIMITS: &str = "cpu_ms: 5000, memory_mb: 64, wall_ms: 20000, subrequests: 5, max_concurrency: 4, max_cached_workers: 10, max_body_bytes: 1048576";

fn tenants() -> String {
    common::tenant_yaml("alpha", ALPHA_KEY, LIMITS) + &common::tenant_yaml("beta", BETA_KEY, LIMITS)
}

fn alive(g: &Gateway) {
    let health = g
        .client
        .get(format!("http://{}/healthz", g.admin))
        .send()
        .expect("the gateway process is still up");
    assert_eq!(health.status(), 200);
    let v = g.execute(
        ALPHA_KEY,
        "async () => Buffer.alloc(8).length + 1",
        json!({}),
    );
    assert_eq!(v["result"], 9, "{v}");
}

#[test]
fn one_line_reproductions_end_in_memory_limit_and_the_gateway_survives() {
    let g = Gateway::start(POOL, &tenants());
    let pid = g.pid();
    for code in [
        "async () => Buffer.alloc(2**40).length",
        "async () => Buffer.allocUnsafe(2**40).length",
        "async () => Buffer.allocUnsafeSlow(2**40).length",
        "async () => Buffer.alloc(512 << 20).length",
        "async () => Buffer.concat(Array(4096).fill(new Uint8Array(8 << 20))).length",
        "async () => new Blob(Array(4096).fill(new Uint8Array(8 << 20))).size",
        "async () => new TextEncoder().encode('x'.repeat(40 << 20)).length",
        "async () => atob('QUFB'.repeat(10 << 20)).length",
        "async () => btoa('x'.repeat(30 << 20)).length",
        "async () => { try { return Buffer.alloc(2**40).length; } catch (e) { return 'caught'; } }",
    ] {
        let r = g.post_json(ALPHA_KEY, "/v1/execute", &json!({ "code": code }));
        assert_eq!(r.status(), 200, "{code}");
        let v: Value = r.json().expect("json");
        assert_eq!(v["error"]["kind"], "memory_limit", "{code}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("64 MiB"),
            "{code}: {v}"
        );
        alive(&g);
    }
    assert_eq!(g.pid(), pid);
    assert!(
        !g.log().contains("memory allocation of"),
        "no allocation failure reached the allocator"
    );
}

#[test]
fn alloc_unsafe_never_shows_another_tenants_bytes() {
    // One isolate thread: tenant A's freed memory is the first candidate for tenant B's next
    // allocations.
    let g = Gateway::start(
        "threads: 1, warm_isolates: 1, max_cached_workers: 100, idle_ttl_s: 300",
        &tenants(),
    );
    let secret = "S3CRET-of-alpha-7f1c2e";
    let filler = json!({
        "mainModule": "w.js",
        "modules": { "w.js": r#"export default { async fetch(request, env) {
            const body = await request.text();
            const keep = [];
            for (let i = 0; i < 64; i++) {
                keep.push(Buffer.alloc(50000 + 512 * i, env.SECRET + body));
                keep.push(new Blob([body.repeat(2 + (i % 8))]));
                keep.push(new TextEncoder().encode(env.SECRET.repeat(100 + i)));
            }
            return new Response(String(keep.length));
        } }"# },
        "env": { "SECRET": secret },
    });
    assert_eq!(g.put_worker(ALPHA_KEY, "filler", &filler).status(), 201);
    for _ in 0..4 {
        let r = g
            .client
            .post(g.url("/w/filler/"))
            .bearer_auth(ALPHA_KEY)
            .body(format!("body-{secret}-").repeat(200))
            .send()
            .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "192");
    }
    let v = g.execute(
        ALPHA_KEY,
        r#"async (env) => {
            let n = 0;
            for (let i = 0; i < 64; i++) n += Buffer.alloc(40000 + 999 * i, env.m).length;
            return n > 0;
        }"#,
        json!({ "m": secret }),
    );
    assert_eq!(v["result"], true, "{v}");
    // Evict alpha's Worker so its isolate (and its buffers) are freed.
    let evicted = g
        .client
        .delete(g.url("/v1/workers/filler"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .expect("request");
    assert!(evicted.status().is_success(), "{}", evicted.status());

    let v = g.execute(
        BETA_KEY,
        r#"async () => {
            let nonZero = 0, seen = "";
            const sizes = [];
            for (let i = 0; i < 64; i++) sizes.push(50000 + 512 * i, 40000 + 999 * i, 3000 + 97 * i, 200 + i);
            for (const n of sizes) {
                for (const b of [Buffer.allocUnsafe(n), Buffer.allocUnsafeSlow(n)]) {
                    for (let j = 0; j < b.length; j++) {
                        if (b[j] !== 0) { nonZero++; if (!seen) seen = String.fromCharCode(...b.subarray(j, j + 64)); break; }
                    }
                }
            }
            return { nonZero, seen };
        }"#,
        json!({}),
    );
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["result"]["nonZero"], 0, "{v}");
    assert!(!v.to_string().contains("S3CRET"), "{v}");
}

#[test]
fn cached_worker_growing_blobs_is_stopped_at_memory_mb_and_rss_stays_bounded() {
    let g = Gateway::start(POOL, &tenants());
    let grow = r#"const keep = [];
        export default { async fetch() {
            keep.push(new Blob([new Uint8Array(8 << 20)]));
            return Response.json({ count: keep.length });
        } }"#;
    assert_eq!(g.put_worker(ALPHA_KEY, "grow", &worker(grow)).status(), 201);
    let rss_before = g.rss_kib();
    let mut peak = rss_before;
    let mut served = 0;
    let mut stopped = None;
    for _ in 0..48 {
        let r = g.get_worker(ALPHA_KEY, "grow", "");
        let status = r.status().as_u16();
        let v: Value = r.json().expect("json");
        peak = peak.max(g.rss_kib());
        if status == 200 {
            served += 1;
            continue;
        }
        stopped = Some((status, v));
        break;
    }
    let (status, v) = stopped.expect("the Worker was never stopped");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["kind"], "memory_limit", "{v}");
    // 8 MiB per request under 64 MiB: stopped before the native bytes alone pass the limit.
    assert!(
        served < 8,
        "served {served} requests of 8 MiB under memory_mb: 64"
    );
    let grown_mib = (peak.saturating_sub(rss_before)) / 1024;
    assert!(
        grown_mib < 160,
        "RSS grew by {grown_mib} MiB for a Worker limited to 64 MiB"
    );
    // The breaching isolate was discarded: the Worker starts over.
    let r = g.get_worker(ALPHA_KEY, "grow", "");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["count"], 1, "{v}");
    alive(&g);
}
