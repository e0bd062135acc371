//! Engine hardening against the real gateway (issue 8, defects 4, 5, 10–13 engine side): a Rust
//! panic in a host function discards its isolate and logs one line; `ctx.waitUntil` work holds
//! the tenant's concurrency slot; stack-trace APIs hand out no internal function; header
//! injection and bad statuses are errors a Worker can catch; poisoned globals are the Worker's
//! `exception`; load() and failing module evaluation are counted.

mod common;

use common::{tenant_yaml, worker, Gateway, ALPHA_KEY};
use serde_json::{json, Value};

const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";
const LIMITS: &str = "cpu_ms: 200, memory_mb: 32, wall_ms: 5000, subrequests: 5, max_concurrency: 16, max_cached_workers: 100, max_body_bytes: 65536";

fn json_of(r: reqwest::blocking::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let text = r.text().expect("body");
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })),
    )
}

/// A real LLRT panic that isogate does not paper over: Buffer#toString with start > end
/// slices `bytes[3..1]`. (If LLRT fixes it, this test says so.)
const PANIC: &str = r#"Buffer.from("abcd").toString("utf8", 3, 1)"#;

#[test]
fn a_host_panic_discards_the_isolate_answers_cleanly_and_logs_one_line() {
    // RUST_BACKTRACE=1 would make the default hook print a full backtrace per panic.
    let g = Gateway::start_with(
        POOL,
        &tenant_yaml("alpha", ALPHA_KEY, LIMITS),
        "",
        &[("RUST_BACKTRACE", "1")],
    );
    let src = format!(
        r#"let count = 0;
        export default {{ async fetch(req) {{
            count += 1;
            const path = new URL(req.url).pathname;
            if (path === "/blob") return new Response(await new Blob(["abc"]).slice(1).text());
            if (path === "/panic") {{
                try {{ {PANIC}; }} catch (e) {{ /* swallowing it must not keep the isolate */ }}
                return Response.json({{ count, survived: true }});
            }}
            return Response.json({{ count }});
        }} }};"#
    );
    assert_eq!(g.put(ALPHA_KEY, "counter", &src), 201);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 2);
    // The original reproduction no longer panics: Blob.slice follows the File API.
    let r = g.get_worker(ALPHA_KEY, "counter", "blob");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "bc");
    let (s, v) = json_of(g.get_worker(ALPHA_KEY, "counter", "panic"));
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"]["kind"], "internal", "{v}");
    // The isolate that panicked was discarded: the Worker starts over.
    assert_eq!(g.count(ALPHA_KEY, "counter"), 1);
    assert_eq!(g.count(ALPHA_KEY, "counter"), 2);

    // A tenant can trigger it at will: each time one clean answer and one log line.
    let panics = 10;
    for _ in 0..panics {
        let code = worker(&format!(
            "export default {{ async fetch() {{ {PANIC}; return new Response('no'); }} }};"
        ));
        let (s, v) = json_of(g.load(ALPHA_KEY, &code, None));
        assert_eq!(s, 500, "{v}");
        assert_eq!(v["error"]["kind"], "internal", "{v}");
    }
    let code = worker("export default { async fetch() { return new Response('still up'); } };");
    assert_eq!(g.load(ALPHA_KEY, &code, None).text().unwrap(), "still up");
    let log = g.log();
    let panic_lines = log.lines().filter(|l| l.contains("panicked")).count();
    assert_eq!(panic_lines, panics + 1, "one line per panic; log:\n{log}");
    assert!(!log.contains("stack backtrace"), "log:\n{log}");
    assert!(
        log.lines().count() <= panics + 1 + 10,
        "the log is flooded:\n{log}"
    );
}

#[test]
fn wait_until_work_holds_the_tenant_slot_until_it_ends() {
    let limits = "cpu_ms: 200, memory_mb: 32, wall_ms: 5000, subrequests: 5, max_concurrency: 4, max_queue: 64, queue_timeout_ms: 60000, max_cached_workers: 10, max_body_bytes: 65536";
    let g = Gateway::start(
        "threads: 2, warm_isolates: 4, max_cached_workers: 100, idle_ttl_s: 300",
        &tenant_yaml("alpha", ALPHA_KEY, limits),
    );
    // Each invocation answers at once and keeps working for 1.5 s in ctx.waitUntil.
    let code = worker(
        r#"export default { async fetch(req, env, ctx) {
            const start = Date.now();
            ctx.waitUntil(new Promise((r) => setTimeout(r, 1500)));
            return Response.json({ start });
        } };"#,
    );
    let n = 32;
    let starts: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let (status, v) = json_of(g.load(ALPHA_KEY, &code, None));
                    assert_eq!(status, 200, "{v}");
                    v["start"].as_f64().expect("start")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // An invocation occupies its slot from `start` until its waitUntil ends (≥ start + 1500):
    // at no instant may more than 4 of these intervals overlap.
    let mut events: Vec<(f64, i32)> = Vec::new();
    for s in &starts {
        events.push((*s, 1));
        events.push((*s + 1500.0, -1));
    }
    // Ends sort before starts at the same instant (half-open intervals).
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut max) = (0, 0);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    assert!(
        max <= 4,
        "{max} invocations ran at once under max_concurrency: 4; starts: {starts:?}"
    );
    assert_eq!(
        g.metric(r#"isogate_invocations_total{outcome="ok",tenant="alpha"}"#),
        n as f64,
        "every load() is counted"
    );
}

#[test]
fn stack_trace_apis_hand_out_no_internal_function() {
    let g = Gateway::start(POOL, &tenant_yaml("alpha", ALPHA_KEY, LIMITS));
    let code = worker(
        r#"const leaked = [];
        function collect(_e, sites) {
            for (const s of sites) {
                for (const m of ["getFunction", "getThis", "getTypeName", "getMethodName", "getEvalOrigin"]) {
                    try {
                        const v = typeof s[m] === "function" ? s[m]() : undefined;
                        if (typeof v === "function") leaked.push(m + " -> " + (v.name || String(v).slice(0, 40)));
                        else if (v !== null && typeof v === "object") leaked.push(m + " -> object");
                    } catch (e) {}
                }
            }
            return "trace";
        }
        export default { async fetch(req, env, ctx) {
            Error.prepareStackTrace = collect;
            new Error("direct").stack;
            await new Promise((r) => setTimeout(() => { new Error("timer").stack; r(); }, 0));
            await new Promise((r) => setInterval(function tick() { new Error("interval").stack; r(); }, 1));
            await new Promise((r) => queueMicrotask(() => { new Error("micro").stack; r(); }));
            ctx.waitUntil({ then(ok) { new Error("thenable").stack; ok(); } });
            await { then(ok) { new Error("await-thenable").stack; ok(); } };
            try { null.x; } catch (e) { e.stack; }
            const holder = {}; Error.captureStackTrace(holder); holder.stack;
            new Headers({ get "x-a"() { new Error("getter").stack; return "1"; } });
            new Response("x", { get status() { new Error("status").stack; return 200; } });
            // Replaced prototypes must not receive the bootstrap's own callbacks either.
            const got = [];
            const then = Promise.prototype.then;
            Promise.prototype.then = function (a, b) { if (a) got.push(a); if (b) got.push(b); return then.call(this, a, b); };
            const forEach = Headers.prototype.forEach;
            Headers.prototype.forEach = function (cb) { got.push(cb); return forEach.call(this, cb); };
            await new Promise((r) => setTimeout(r, 0));
            queueMicrotask(() => {});
            ctx.waitUntil(Promise.resolve(1));
            Promise.prototype.then = then;
            // Old-style walks up the caller chain.
            let caller = "none";
            try { (function sloppy() { return sloppy.caller; }).call(); caller = "reachable"; } catch (e) {}
            Error.prepareStackTrace = undefined;
            return Response.json({ leaked, got: got.map((f) => f.name || "anonymous").filter((n) => n !== "") , gotCount: got.length, caller,
                                   desc: typeof Object.getOwnPropertyDescriptor(Error, "prepareStackTrace").set });
        } };"#,
    );
    let (s, v) = json_of(g.load(ALPHA_KEY, &code, None));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["leaked"], json!([]), "{v}");
    assert_eq!(
        v["gotCount"], 0,
        "the bootstrap called a replaced prototype method: {v}"
    );
    assert_eq!(v["caller"], "none", "{v}");
}

#[test]
fn header_injection_and_bad_statuses_are_catchable_errors() {
    let g = Gateway::start(POOL, &tenant_yaml("alpha", ALPHA_KEY, LIMITS));
    let code = worker(
        r#"export default { async fetch() {
            const out = {};
            const t = (k, f) => { try { f(); out[k] = "accepted"; } catch (e) { out[k] = e.name; } };
            t("crlf", () => new Response("x", { headers: { "x-a": "b\r\nset-cookie: pwn=1" } }));
            t("headers", () => new Headers([["x-a", "b\nc"]]));
            t("set", () => new Headers().set("x-a", "\u0000"));
            t("status999", () => new Response("x", { status: 999 }));
            t("status204", () => new Response("body", { status: 204 }));
            t("redirect", () => Response.redirect("http://example.test/", 200));
            return Response.json(out);
        } };"#,
    );
    let (s, v) = json_of(g.load(ALPHA_KEY, &code, None));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"crlf": "TypeError", "headers": "TypeError", "set": "TypeError",
               "status999": "RangeError", "status204": "TypeError", "redirect": "RangeError"})
    );
    // Uncaught, the original reproductions fail the invocation as the Worker's exception and
    // nothing of them reaches the client.
    for (src, name) in [
        (
            r#"new Response("x", { headers: { "x-a": "b\r\nset-cookie: pwn=1" } })"#,
            "TypeError",
        ),
        (r#"new Response("x", { status: 999 })"#, "RangeError"),
    ] {
        let code = worker(&format!(
            "export default {{ async fetch() {{ return {src}; }} }};"
        ));
        let r = g.load(ALPHA_KEY, &code, None);
        assert!(r.headers().get("set-cookie").is_none());
        let (s, v) = json_of(r);
        assert_eq!(s, 500, "{v}");
        assert_eq!(v["error"]["kind"], "exception", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(name),
            "{v}"
        );
    }
}

#[test]
fn poisoned_globals_and_prototypes_are_the_workers_exception() {
    let g = Gateway::start(POOL, &tenant_yaml("alpha", ALPHA_KEY, LIMITS));
    for poison in [
        "Headers.prototype.forEach = function (cb) { cb({}, 1); };",
        "Headers.prototype.forEach = function () { throw new Error('poisoned'); };",
        "globalThis.Uint8Array = function () { return {}; };",
        "Array.prototype.push = function () { throw new Error('poisoned'); };",
        "Promise.all = () => 1; Promise.resolve = () => 2; Promise.prototype.then = function () { return 3; };",
        "Response.prototype.arrayBuffer = async () => 'not bytes';",
    ] {
        let code = worker(&format!(
            r#"export default {{ async fetch(req, env, ctx) {{
                {poison}
                ctx.waitUntil(1);
                return new Response("ok", {{ headers: {{ "x-a": "1" }} }});
            }} }};"#
        ));
        let (s, v) = json_of(g.load(ALPHA_KEY, &code, None));
        if s != 200 {
            assert_eq!(v["error"]["kind"], "exception", "{poison}: {v}");
        }
    }
    assert_eq!(
        g.metric(r#"isogate_invocations_total{outcome="internal",tenant="alpha"}"#),
        0.0
    );
}

#[test]
fn load_invocations_and_failing_module_evaluation_are_counted() {
    let g = Gateway::start(POOL, &tenant_yaml("alpha", ALPHA_KEY, LIMITS));
    let hello = worker("export default { async fetch() { return new Response('hi'); } };");
    for _ in 0..3 {
        assert_eq!(g.load(ALPHA_KEY, &hello, None).status(), 200);
    }
    let thrower = worker("export default { async fetch() { return new Response('x'); } };\nthrow new Error('top-level');");
    let (s, v) = json_of(g.load(ALPHA_KEY, &thrower, None));
    assert_eq!((s, v["error"]["kind"].clone()), (500, json!("exception")));
    assert_eq!(
        g.metric(r#"isogate_invocations_total{outcome="ok",tenant="alpha"}"#),
        3.0
    );
    assert_eq!(
        g.metric(r#"isogate_invocations_total{outcome="exception",tenant="alpha"}"#),
        1.0
    );
    assert_eq!(
        g.metric(r#"isogate_invocation_cpu_seconds_count{tenant="alpha"}"#),
        4.0
    );

    // A stored Worker whose module evaluation throws is created again on every get(): each one
    // counts as a get_miss start.
    let src = "throw new Error('module evaluation fails');\nexport default { async fetch() { return new Response('x'); } };";
    assert_eq!(g.put(ALPHA_KEY, "broken", src), 201);
    let before = g.metric(r#"isogate_isolate_starts_total{kind="get_miss"}"#);
    for _ in 0..3 {
        let (s, v) = json_of(g.get_worker(ALPHA_KEY, "broken", ""));
        assert_eq!(s, 500, "{v}");
        assert_eq!(v["error"]["kind"], "exception", "{v}");
    }
    let after = g.metric(r#"isogate_isolate_starts_total{kind="get_miss"}"#);
    assert_eq!(after - before, 3.0);
}
