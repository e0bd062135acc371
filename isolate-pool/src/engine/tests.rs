//! Containment and Worker-API tests against real QuickJS isolates (one named test per runaway
//! pattern, each asserting the limit fires and the isolate's host survives).
#![allow(unsafe_code)] // tests of the engine APIs above; each block has a `// SAFETY:` line

use super::*;
use crate::api::{ModuleSource, Outbound};
use crate::egress::{
    body_channel, Authorization, BodyWriter, Delivered, DisabledEgress, Egress, EgressError,
    EgressResponse, Verdict, BODY_WINDOW,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use sha2::Digest;
use std::collections::BTreeMap;

const LIMITS: Limits = Limits {
    cpu_ms: 50,
    memory_mb: 16,
    wall_ms: 2_000,
    subrequests: 3,
    worker_concurrency: 32,
};

fn worker(src: &str) -> WorkerCode {
    let mut modules = BTreeMap::new();
    modules.insert("w.js".to_string(), ModuleSource::Js(src.to_string()));
    WorkerCode {
        main_module: "w.js".into(),
        modules,
        env: serde_json::json!({"NAME": "isogate"}),
        limits: None,
        global_outbound: Outbound::Default,
        compatibility_date: None,
        compatibility_flags: vec![],
    }
}

fn get(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: vec![("x-test".into(), "1".into())],
        body: vec![],
    }
}

fn invoker() -> Invoker {
    Invoker {
        tenant: "t".into(),
        worker_id: None,
        invocation: 1,
        apis: Vec::new(),
        trace: 0,
        tools: Vec::new(),
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

async fn fetch_with(
    iso: &Isolate,
    code: &WorkerCode,
    req: HttpRequest,
    limits: Limits,
) -> (Result<HttpResponse, WorkerError>, Vec<LogEntry>) {
    let mut out = None;
    iso.fetch(code, req, invoker(), limits, None, |o, _, _| out = Some(o))
        .await;
    out.expect("respond called")
}

async fn fetch_once(src: &str) -> (Result<HttpResponse, WorkerError>, Vec<LogEntry>) {
    let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
    fetch_with(&iso, &worker(src), get("http://w/path?q=1"), LIMITS).await
}

/// One request with room for work a debug build does slowly (5 s CPU, 128 MiB).
async fn fetch_roomy(code: &WorkerCode) -> (Result<HttpResponse, WorkerError>, Vec<LogEntry>) {
    let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
    let limits = Limits {
        cpu_ms: 5_000,
        wall_ms: 20_000,
        memory_mb: 128,
        ..LIMITS
    };
    fetch_with(&iso, code, get("http://w/"), limits).await
}

fn body(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn hello_worker_returns_its_response() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch(req, env, ctx) {
                return new Response("hello " + env.NAME, { status: 201, headers: { "content-type": "text/plain" } });
            } }"#,
        )
        .await;
        let res = res.unwrap();
        assert_eq!(res.status, 201);
        assert_eq!(body(&res), "hello isogate");
        assert!(res
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "text/plain"));
    });
}

#[test]
fn request_fields_and_json_reach_the_worker() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"export default { async fetch(request) {
                const url = new URL(request.url);
                const body = await request.json();
                return Response.json({ m: request.method, p: url.pathname, q: url.searchParams.get("q"),
                                       h: request.headers.get("x-test"), body });
            } }"#,
        );
        let req = HttpRequest {
            method: "POST".into(),
            url: "http://w/a/b?q=z".into(),
            headers: vec![
                ("x-test".into(), "yes".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: br#"{"n":1}"#.to_vec(),
        };
        let (res, _) = fetch_with(&iso, &code, req, LIMITS).await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"m":"POST","p":"/a/b","q":"z","h":"yes","body":{"n":1}})
        );
    });
}

#[test]
fn web_apis_are_available() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch() {
                const out = {};
                out.enc = new TextDecoder().decode(new TextEncoder().encode("héllo"));
                out.b64 = btoa("hi") + "/" + atob("aGk=");
                const a = new Uint8Array(8); crypto.getRandomValues(a);
                out.rand = a.length;
                out.uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID());
                out.clone = structuredClone({ d: [1, { e: 2 }] }).d[1].e;
                out.perf = typeof performance.now();
                const ac = new AbortController(); ac.abort(); out.aborted = ac.signal.aborted;
                out.timer = await new Promise((r) => setTimeout(() => r("fired"), 5));
                const cleared = setTimeout(() => { out.cleared = "should not fire"; }, 1); clearTimeout(cleared);
                out.micro = await new Promise((r) => queueMicrotask(() => r("ok")));
                const sig = AbortSignal.timeout(5);
                await new Promise((r) => setTimeout(r, 30));
                out.timeoutAborted = sig.aborted;
                out.headers = new Headers({ A: "1" }).get("a");
                out.url = new URLSearchParams("x=1&y=2").get("y");
                const r = new Response("abc"); out.ab = (await r.arrayBuffer()).byteLength;
                out.text = await new Response("t").text();
                out.json = (await new Response('{"k":1}').json()).k;
                console.log("a", 1, { b: 2 }); console.error("bad");
                await new Promise((r) => setTimeout(r, 5));
                return Response.json(out);
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(v["enc"], "héllo");
        assert_eq!(v["b64"], "aGk=/hi");
        assert_eq!(v["rand"], 8);
        assert_eq!(v["uuid"], true);
        assert_eq!(v["clone"], 2);
        assert_eq!(v["perf"], "number");
        assert_eq!(v["aborted"], true);
        assert_eq!(v["timer"], "fired");
        assert!(v.get("cleared").is_none(), "a cleared timer fired: {v}");
        assert_eq!(v["micro"], "ok");
        assert_eq!(v["timeoutAborted"], true);
        assert_eq!(v["headers"], "1");
        assert_eq!(v["url"], "2");
        assert_eq!(v["ab"], 3);
        assert_eq!(v["text"], "t");
        assert_eq!(v["json"], 1);
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].level, "log");
        assert!(logs[0].message.starts_with("a 1"), "{:?}", logs[0]);
        assert_eq!(logs[1].level, "error");
    });
}

#[test]
fn web_api_details_follow_the_standards() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                const out = {};
                const err = (f) => { try { f(); return "no error"; } catch (e) { return `${e.constructor.name}/${e.name}`; } };
                out.cloneUndefined = structuredClone({ a: 1 }, undefined).a + structuredClone({ a: 2 }, null).a;
                out.cloneBadOptions = err(() => structuredClone(1, 5));
                out.atobBad = err(() => atob("!!"));
                out.atobLength = err(() => atob("YWJjZ"));
                out.atobForgiving = atob(" YW Jj\n") + atob("YQ") + atob("YQ==");
                out.self = self === globalThis;
                out.lone = Array.from(new TextEncoder().encode("a\ud800")).join(",");
                const into = new Uint8Array(8);
                out.loneInto = new TextEncoder().encodeInto("\udc00", into).written;
                const urlenc = await new Request("http://x/", { method: "POST", body: "a=1&b=2+3&c=%C3%A9",
                    headers: { "content-type": "application/x-www-form-urlencoded;charset=UTF-8" } }).formData();
                out.urlencoded = [...urlenc];
                const body = "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nline1\r\nline2\r\n" +
                    "--B\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n" +
                    "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x \\\"q\\\".txt\"\r\nContent-Type: text/csv\r\n\r\n1,2\r\n" +
                    "--B--\r\nepilogue";
                const multi = await new Response(body, { headers: { "content-type": 'multipart/form-data; boundary="B"' } }).formData();
                out.multiA = multi.get("a");
                out.multiEmpty = multi.get("empty");
                const f = multi.get("f");
                out.file = [f instanceof File, f.name, f.type, await f.text()];
                out.notForm = await new Response("x", { headers: { "content-type": "text/plain" } }).formData()
                    .then(() => "no error", (e) => e.name);
                out.noBoundary = await new Response("x", { headers: { "content-type": "multipart/form-data" } }).formData()
                    .then(() => "no error", (e) => e.name);
                out.truncated = await new Response("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv", {
                    headers: { "content-type": "multipart/form-data; boundary=B" } }).formData()
                    .then(() => "no error", (e) => e.name);
                let deep = 1;
                for (let i = 0; i < 200; i++) deep = [deep];
                out.deepParse = await Response.json(deep).json().then((v) => Array.isArray(v) ? "parsed" : "?", (e) => e.name);
                out.jsonResponse = [Response.json({ a: "\ud800" }).headers.get("content-type"),
                    await Response.json({ a: 1 }, { headers: { "Content-Type": "text/x" } }).headers.get("content-type"),
                    await new Response('{"s":"\\ud800"}').json().then((v) => v.s.length)];
                const et = new EventTarget();
                const seen = [];
                const obj = { handleEvent(e) { seen.push("obj:" + e.type); } };
                et.addEventListener("x", null);
                et.addEventListener("x", (e) => { seen.push("a"); e.preventDefault(); e.stopImmediatePropagation(); });
                et.addEventListener("x", () => seen.push("never"));
                et.addEventListener("y", obj);
                et.addEventListener("y", obj);
                const ac = new AbortController();
                et.addEventListener("z", () => seen.push("z"), { signal: ac.signal });
                et.addEventListener("w", () => seen.push("w"), { once: true });
                const ev = new Event("x", { cancelable: true });
                out.dispatched = [et.dispatchEvent(ev), ev.defaultPrevented, et.dispatchEvent(new Event("y"))];
                ac.abort();
                et.dispatchEvent(new Event("z"));
                et.dispatchEvent(new Event("w"));
                et.dispatchEvent(new Event("w"));
                et.addEventListener("t", (e) => seen.push(e.target === et && e.currentTarget === et && e.eventPhase === 2));
                et.dispatchEvent(new Event("t"));
                out.events = seen;
                out.notEvent = err(() => et.dispatchEvent({}));
                out.navigator = navigator.userAgent;
                let aborted = 0;
                const ac2 = new AbortController();
                ac2.signal.addEventListener("abort", () => aborted++);
                ac2.abort();
                out.signalListener = aborted;
                const td = new TextDecoder();
                out.streamed = td.decode(new Uint8Array([0xe2, 0x82]), { stream: true }) + td.decode(new Uint8Array([0xac]));
                out.latin1 = [new TextDecoder("latin1").encoding, new TextDecoder("latin1").decode(new Uint8Array([0xe9, 0x80]))];
                out.sjis = new TextDecoder("shift_jis").decode(new Uint8Array([0x82, 0xa0]));
                out.fatal = err(() => new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array([0xff])));
                out.badLabel = err(() => new TextDecoder("nope"));
                out.views = new TextDecoder().decode(new Uint16Array([0x6968])) + new TextDecoder().decode(new DataView(new Uint8Array([0x21]).buffer));
                out.bom = [new TextDecoder().decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x41])),
                    new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x41])).length];
                const d = new Response("x");
                out.defaults = [d.statusText, d.status, Response.error().type,
                    new Response("y", { status: 404, statusText: "Nope" }).statusText, Response.json(1).statusText];
                return Response.json(out);
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(
            v["defaults"],
            serde_json::json!(["", 200, "error", "Nope", ""]),
            "{v}"
        );
        assert_eq!(
            v["dispatched"],
            serde_json::json!([false, true, true]),
            "{v}"
        );
        assert_eq!(
            v["events"],
            serde_json::json!(["a", "obj:y", "w", true]),
            "{v}"
        );
        assert_eq!(v["notEvent"], "TypeError/TypeError", "{v}");
        assert_eq!(v["navigator"], "isogate", "{v}");
        assert_eq!(v["signalListener"], 1, "{v}");
        assert_eq!(v["streamed"], "€", "{v}");
        assert_eq!(
            v["latin1"],
            serde_json::json!(["windows-1252", "é€"]),
            "{v}"
        );
        assert_eq!(v["sjis"], "あ", "{v}");
        assert_eq!(v["fatal"], "TypeError/TypeError", "{v}");
        assert_eq!(v["badLabel"], "RangeError/RangeError", "{v}");
        assert_eq!(v["views"], "hi!", "{v}");
        assert_eq!(v["bom"], serde_json::json!(["A", 2]), "{v}");
        assert_eq!(v["cloneUndefined"], 3, "{v}");
        // JSON bodies go through QuickJS's JSON (LLRT's parser rejects the escaped lone
        // surrogate below and recurses natively without a depth limit).
        assert_eq!(v["deepParse"], "parsed", "{v}");
        assert_eq!(
            v["jsonResponse"],
            serde_json::json!(["application/json", "text/x", 1]),
            "{v}"
        );
        assert_eq!(v["cloneBadOptions"], "TypeError/TypeError", "{v}");
        assert_eq!(v["atobBad"], "DOMException/InvalidCharacterError", "{v}");
        assert_eq!(v["atobLength"], "DOMException/InvalidCharacterError", "{v}");
        assert_eq!(v["atobForgiving"], "abcaa", "{v}");
        assert_eq!(v["self"], true);
        assert_eq!(v["lone"], "97,239,191,189", "{v}");
        assert_eq!(v["loneInto"], 3, "{v}");
        assert_eq!(
            v["urlencoded"],
            serde_json::json!([["a", "1"], ["b", "2 3"], ["c", "é"]]),
            "{v}"
        );
        assert_eq!(v["multiA"], "line1\r\nline2", "{v}");
        assert_eq!(v["multiEmpty"], "", "{v}");
        assert_eq!(
            v["file"],
            serde_json::json!([true, "x \"q\".txt", "text/csv", "1,2"]),
            "{v}"
        );
        assert_eq!(v["notForm"], "TypeError", "{v}");
        assert_eq!(v["noBoundary"], "TypeError", "{v}");
        assert_eq!(v["truncated"], "TypeError", "{v}");
    });
}

/// QuickJS's own transfer of an ArrayBuffer the Rust side made frees the Rust allocation with the
/// wrong capacity (or reallocates it with QuickJS's allocator) and frees the detached original
/// again with a null pointer: in a debug build that aborts the process when the isolate is
/// dropped at the end of this test. Transfers copy instead.
#[test]
fn transferring_rust_made_array_buffers_is_safe() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch() {
                const native = await new Response("abcdef").arrayBuffer();
                const same = native.transfer();
                const longer = (await new Response("xy").arrayBuffer()).transfer(5);
                const fixed = new TextEncoder().encode("123").buffer.transferToFixedLength(2);
                const moved = await new Response("mv").arrayBuffer();
                const viaClone = structuredClone(moved, { transfer: [moved] });
                const rab = new ArrayBuffer(2, { maxByteLength: 8 });
                const rabT = rab.transfer(4);
                let bad;
                try { new ArrayBuffer(1).transfer(-1); } catch (e) { bad = e.constructor.name; }
                return Response.json([same.byteLength, longer.byteLength, new Uint8Array(longer)[1], new Uint8Array(longer)[4],
                    fixed.byteLength, viaClone.byteLength, rabT.byteLength, rab.detached, rabT.resizable, bad]);
            } }"#,
        )
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([6, 5, 121, 0, 2, 2, 4, true, true, "RangeError"])
        );
    });
}

#[test]
fn compression_streams_round_trip_and_refuse_bad_input() {
    run(async {
        let (res, logs) = fetch_roomy(&worker(
            r#"export default { async fetch() {
                const out = {};
                const pipe = (bytes, stream) => new Response(new Blob([bytes]).stream().pipeThrough(stream));
                const text = "hello hello hello hello ".repeat(100);
                for (const f of ["gzip", "deflate", "deflate-raw"]) {
                    const packed = new Uint8Array(await pipe(text, new CompressionStream(f)).arrayBuffer());
                    const back = await pipe(packed, new DecompressionStream(f)).text();
                    out[f] = [packed.length < text.length, back === text];
                }
                const gz = new Uint8Array(await pipe(text, new CompressionStream("gzip")).arrayBuffer());
                out.magic = [gz[0], gz[1]];
                const err = (p) => p.then(() => "no error", (e) => e.constructor.name);
                out.corrupt = await err(pipe(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), new DecompressionStream("gzip")).arrayBuffer());
                out.truncated = await err(pipe(gz.subarray(0, gz.length - 4), new DecompressionStream("gzip")).arrayBuffer());
                const trailing = new Uint8Array(gz.length + 1); trailing.set(gz); trailing[gz.length] = 7;
                out.trailing = await err(pipe(trailing, new DecompressionStream("gzip")).arrayBuffer());
                out.badFormat = await err((async () => new CompressionStream("br"))());
                out.badChunk = await err(new Response(new ReadableStream({ start(c) { c.enqueue("str"); c.close(); } })
                    .pipeThrough(new CompressionStream("gzip"))).arrayBuffer());
                // 8 MiB of zeros from a few KiB: many bounded chunks, never one big one.
                const zeros = new Uint8Array(await pipe(new Uint8Array(8 << 20), new CompressionStream("deflate")).arrayBuffer());
                const reader = new Blob([zeros]).stream().pipeThrough(new DecompressionStream("deflate")).getReader();
                let chunks = 0, biggest = 0, total = 0;
                for (;;) { const { value, done } = await reader.read(); if (done) break; chunks++; total += value.length; biggest = Math.max(biggest, value.length); }
                out.bomb = [zeros.length < 65536, total, biggest <= 65536, chunks >= 128];
                const held = [];
                out.cap = await err((async () => { for (let i = 0; i < 17; i++) held.push(new CompressionStream("gzip")); })());
                return Response.json(out);
            } }"#,
        ))
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        use serde_json::json;
        for f in ["gzip", "deflate", "deflate-raw"] {
            assert_eq!(v[f], json!([true, true]), "{f}: {v}");
        }
        assert_eq!(v["magic"], json!([0x1f, 0x8b]), "{v}");
        assert_eq!(v["corrupt"], json!("TypeError"), "{v}");
        assert_eq!(v["truncated"], json!("TypeError"), "{v}");
        assert_eq!(v["trailing"], json!("TypeError"), "{v}");
        assert_eq!(v["badFormat"], json!("TypeError"), "{v}");
        assert_eq!(v["badChunk"], json!("TypeError"), "{v}");
        assert_eq!(v["bomb"], json!([true, 8 << 20, true, true]), "{v}");
        assert_eq!(v["cap"], json!("RangeError"), "{v}");
    });
}

#[test]
fn intl_formats_as_en_us_in_utc() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch() {
                const d = new Date(Date.UTC(2026, 10, 30, 15, 5, 9, 120));
                const nf = (o, v) => new Intl.NumberFormat("en-US", o).format(v);
                const err = (f) => { try { f(); return "no error"; } catch (e) { return e.constructor.name; } };
                return Response.json([
                    (1234567.891).toLocaleString(), (1234.5).toLocaleString("de-DE"),
                    nf({ style: "currency", currency: "USD" }, 1234.5), nf({ style: "currency", currency: "EUR" }, -3),
                    nf({ style: "currency", currency: "JPY" }, 1234.5), nf({ style: "currency", currency: "USD", currencyDisplay: "code" }, 1),
                    nf({ style: "percent" }, 0.256), nf({ style: "percent", maximumFractionDigits: 1 }, 0.2567),
                    nf({ minimumFractionDigits: 2 }, 5), nf({ maximumSignificantDigits: 3 }, 123456), nf({ notation: "compact" }, 1234567),
                    nf({ notation: "compact", compactDisplay: "long" }, 2500), nf({ notation: "scientific" }, 123456),
                    nf({ style: "unit", unit: "kilobyte" }, 12), nf({ signDisplay: "always" }, 5), nf({ useGrouping: false }, 12345),
                    nf({}, 12345678901234567890n), nf({}, NaN), nf({}, -Infinity),
                    d.toLocaleString(), d.toLocaleDateString(), d.toLocaleTimeString(), d.toLocaleDateString("en-US", { weekday: "long", year: "numeric", month: "long", day: "numeric" }),
                    new Intl.DateTimeFormat("en-US", { dateStyle: "medium", timeStyle: "short" }).format(d),
                    new Intl.DateTimeFormat(undefined, { dateStyle: "full" }).format(d),
                    new Intl.DateTimeFormat("en", { hour: "2-digit", minute: "2-digit", hour12: false }).format(d),
                    new Intl.DateTimeFormat().resolvedOptions().timeZone,
                    new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric" }).formatToParts(d).map((p) => p.type).join(","),
                    err(() => new Intl.DateTimeFormat("en", { timeZone: "America/New_York" })),
                    err(() => new Intl.NumberFormat("en", { style: "currency" })),
                    err(() => new Intl.NumberFormat("not a tag!")),
                    new Intl.PluralRules("en").select(1), new Intl.PluralRules("en", { type: "ordinal" }).select(22),
                    new Intl.RelativeTimeFormat("en", { numeric: "auto" }).format(-1, "day"), new Intl.RelativeTimeFormat("en").format(3, "hours"),
                    new Intl.ListFormat("en").format(["a", "b", "c"]), new Intl.ListFormat("en", { type: "disjunction" }).format(["a", "b"]),
                    ["b", "a", "C"].sort(new Intl.Collator("en").compare).join(""), ["x10", "x9"].sort(new Intl.Collator("en", { numeric: true }).compare).join(","),
                    Object.prototype.toString.call(Intl), new Date(NaN).toLocaleString(),
                ]);
            } }"#,
        )
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                "1,234,567.891",
                "1,234.5",
                "$1,234.50",
                "-€3.00",
                "¥1,235",
                "USD\u{a0}1.00",
                "26%",
                "25.7%",
                "5.00",
                "123,000",
                "1.2M",
                "2.5 thousand",
                "1.235E5",
                "12 kB",
                "+5",
                "12345",
                "12,345,678,901,234,567,890",
                "NaN",
                "-∞",
                "11/30/2026, 3:05:09 PM",
                "11/30/2026",
                "3:05:09 PM",
                "Monday, November 30, 2026",
                "Nov 30, 2026, 3:05 PM",
                "Monday, November 30, 2026",
                "15:05",
                "UTC",
                "month,literal,day",
                "RangeError",
                "TypeError",
                "RangeError",
                "one",
                "two",
                "yesterday",
                "in 3 hours",
                "a, b, and c",
                "a or b",
                "abC",
                "x9,x10",
                "[object Intl]",
                "Invalid Date"
            ])
        );
    });
}

/// Runs `src` with a body sink; returns the head, the parts the sink got and the logs.
async fn fetch_streamed(
    iso: &Isolate,
    src: &str,
    path: &str,
    want: usize,
) -> (
    Result<HttpResponse, WorkerError>,
    Vec<BodyPart>,
    Vec<LogEntry>,
) {
    let parts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = parts.clone();
    let sink = BodySink::unpaced(move |part| {
        let mut p = seen.lock().unwrap();
        p.push(part);
        p.len() < want
    });
    let mut out = None;
    // The wall-clock limit is what cuts a stream that never ends (CPU has room: a debug build
    // pulls hundreds of chunks in that time).
    let limits = Limits {
        wall_ms: 500,
        cpu_ms: 5_000,
        ..LIMITS
    };
    iso.fetch(
        &worker(src),
        get(path),
        invoker(),
        limits,
        Some(sink),
        |o, _, _| out = Some(o),
    )
    .await;
    let (res, logs) = out.expect("respond called");
    let parts = std::mem::take(&mut *parts.lock().unwrap());
    (res, parts, logs)
}

#[test]
fn streamed_responses_go_to_the_sink_part_by_part() {
    run(async {
        let src = r#"let cancelled = "no";
        export default { async fetch(request) {
            const path = new URL(request.url).pathname;
            if (path === "/cancelled") return new Response(cancelled);
            const enc = new TextEncoder();
            let i = 0;
            const body = new ReadableStream({
                async pull(c) {
                    await new Promise((r) => setTimeout(r, 1));
                    if (path === "/fail" && i === 1) { c.error(new Error("upstream broke")); return; }
                    if (path === "/forever" || i < 3) c.enqueue(enc.encode("part" + i++)); else c.close();
                },
                cancel(reason) { cancelled = reason.message; },
            });
            return new Response(body, { headers: { "content-type": "text/plain" } });
        } }"#;
        let new = || async { Isolate::new(Arc::new(DisabledEgress)).await.unwrap() };
        let (res, parts, _) = fetch_streamed(&new().await, src, "http://w/ok", usize::MAX).await;
        let head = res.unwrap();
        assert!(head.streamed && head.body.is_empty());
        assert_eq!(
            head.headers,
            vec![("content-type".to_string(), "text/plain".to_string())]
        );
        assert_eq!(
            parts,
            vec![
                BodyPart::Chunk(b"part0".to_vec()),
                BodyPart::Chunk(b"part1".to_vec()),
                BodyPart::Chunk(b"part2".to_vec()),
                BodyPart::End(Ok(())),
            ]
        );

        let (_, parts, _) = fetch_streamed(&new().await, src, "http://w/fail", usize::MAX).await;
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(
            matches!(&parts[1], BodyPart::End(Err(e)) if e.contains("upstream broke")),
            "{parts:?}"
        );

        // The client leaves after two chunks: the Worker's stream is cancelled.
        let iso = new().await;
        let (_, parts, _) = fetch_streamed(&iso, src, "http://w/forever", 2).await;
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[2], BodyPart::End(Ok(())));
        let (res, _, _) = fetch_streamed(&iso, src, "http://w/cancelled", usize::MAX).await;
        assert_eq!(body(&res.unwrap()), "the client went away");

        // A stream that never ends is cut at the wall-clock limit.
        let (_, parts, _) = fetch_streamed(&new().await, src, "http://w/forever", usize::MAX).await;
        assert!(
            matches!(parts.last(), Some(BodyPart::End(Err(e))) if e.contains("wall-clock")),
            "{:?}",
            parts.last()
        );
        assert!(parts.len() > 3);
    });
}

/// An egress whose responses stream: `https://up/…` answers a head with `first|` and hands the
/// test the writer of the rest; `https://gate/` answers once the test releases it.
struct StreamEgress {
    writers: tokio::sync::mpsc::UnboundedSender<BodyWriter>,
    gate: Arc<tokio::sync::Notify>,
}

impl Egress for StreamEgress {
    fn authorize(&self, _invoker: &Invoker, _request: &EgressRequest) -> Verdict {
        Verdict::Proceed(Authorization {
            rule: None,
            report_only: false,
        })
    }

    fn send(
        &self,
        _invoker: Invoker,
        request: EgressRequest,
        _authorization: Authorization,
    ) -> BoxFuture<'static, Result<Delivered, EgressError>> {
        let head = |body: &[u8], streamed| EgressResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.to_vec(),
            streamed,
            hops: 0,
            url: String::new(),
        };
        if request.url.starts_with("https://gate/") {
            let gate = self.gate.clone();
            return Box::pin(async move {
                gate.notified().await;
                Ok((head(b"gate", false), None))
            });
        }
        let (writer, stream) = body_channel();
        let _ = self.writers.send(writer);
        Box::pin(std::future::ready(Ok((
            head(b"first|", true),
            Some(stream),
        ))))
    }
}

fn stream_egress() -> (
    Arc<StreamEgress>,
    tokio::sync::mpsc::UnboundedReceiver<BodyWriter>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let egress = StreamEgress {
        writers: tx,
        gate: Arc::new(tokio::sync::Notify::new()),
    };
    (Arc::new(egress), rx)
}

#[test]
fn a_fetch_body_streams_into_the_worker_as_the_upstream_sends_it() {
    run(async {
        let (egress, mut writers) = stream_egress();
        let iso = Isolate::new(egress).await.unwrap();
        // The Worker proxies the upstream's response: each part reaches the client before the
        // upstream sends the next (the test writes the next only once the sink has the last).
        let parts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (seen, ping) = (parts.clone(), arrived.clone());
        let sink = BodySink::unpaced(move |part| {
            seen.lock().unwrap().push(part);
            ping.notify_one();
            true
        });
        let src = r#"export default { fetch() { return fetch("https://up/x"); } }"#;
        let code = worker(src);
        let mut out = None;
        let invocation = iso.fetch(
            &code,
            get("http://w/"),
            invoker(),
            LIMITS,
            Some(sink),
            |o, _, _| out = Some(o),
        );
        let upstream = async {
            let mut writer = writers.recv().await.unwrap();
            for (sent, next) in ["second", "third"].into_iter().enumerate() {
                // The client has every part sent so far (the head's included) before the next.
                while parts.lock().unwrap().len() <= sent {
                    arrived.notified().await;
                }
                assert!(writer.chunk(next.as_bytes().to_vec()).await);
            }
            while parts.lock().unwrap().len() < 3 {
                arrived.notified().await;
            }
            writer.end(Ok(()));
        };
        tokio::join!(invocation, upstream);
        let (res, _) = out.unwrap();
        assert!(res.unwrap().streamed);
        assert_eq!(
            *parts.lock().unwrap(),
            vec![
                BodyPart::Chunk(b"first|".to_vec()),
                BodyPart::Chunk(b"second".to_vec()),
                BodyPart::Chunk(b"third".to_vec()),
                BodyPart::End(Ok(())),
            ]
        );
    });
}

#[test]
fn a_fetch_body_is_paced_by_the_worker_and_dropped_with_its_invocation() {
    run(async {
        let (egress, mut writers) = stream_egress();
        let gate = egress.gate.clone();
        let iso = Isolate::new(egress).await.unwrap();
        // The Worker reads nothing until the gate opens: the upstream's writer may get only a
        // window ahead; the invocation's end drops the body (the upstream request with it).
        let code = worker(
            r#"export default { async fetch() {
                const r = await fetch("https://up/x");
                await fetch("https://gate/");
                return new Response(String(r.bodyUsed));
            } }"#,
        );
        let invocation = fetch_with(&iso, &code, get("http://w/"), LIMITS);
        let upstream = async {
            let mut writer = writers.recv().await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while writer.chunk(chunk.clone()).now_or_never() == Some(true) {
                sent += chunk.len();
                assert!(sent <= BODY_WINDOW, "the window did not hold");
            }
            assert_eq!(sent, BODY_WINDOW);
            gate.notify_one();
            writer.closed().await;
        };
        let ((res, _), ()) = tokio::join!(invocation, upstream);
        assert_eq!(body(&res.unwrap()), "false");
    });
}

#[test]
fn a_fetch_body_that_breaks_off_or_is_cancelled() {
    run(async {
        let (egress, mut writers) = stream_egress();
        let gate = egress.gate.clone();
        let iso = Isolate::new(egress).await.unwrap();
        let code = worker(
            r#"export default { async fetch(request) {
                const r = await fetch("https://up/x");
                if (request.url.endsWith("/cancel")) {
                    await r.body.cancel();
                    await fetch("https://gate/");
                    return new Response("cancelled");
                }
                try { await r.text(); return new Response("read"); }
                catch (e) { return new Response(e.name + ": " + e.message); }
            } }"#,
        );
        let invocation = fetch_with(&iso, &code, get("http://w/broken"), LIMITS);
        let upstream = async {
            let mut writer = writers.recv().await.unwrap();
            assert!(writer.chunk(b"partial".to_vec()).await);
            writer.end(Err("fetch to up failed: connection error".into()));
        };
        let ((res, _), ()) = tokio::join!(invocation, upstream);
        assert_eq!(
            body(&res.unwrap()),
            "TypeError: fetch(): the response body broke off: fetch to up failed: connection error"
        );

        // Cancelling the body drops the upstream while the invocation goes on (the gate opens
        // only once the writer saw it).
        let invocation = fetch_with(&iso, &code, get("http://w/cancel"), LIMITS);
        let upstream = async {
            let writer = writers.recv().await.unwrap();
            writer.closed().await;
            gate.notify_one();
        };
        let ((res, _), ()) = tokio::join!(invocation, upstream);
        assert_eq!(body(&res.unwrap()), "cancelled");
    });
}

#[test]
fn subtle_crypto_works_within_bounds() {
    run(async {
        let (res, logs) = fetch_roomy(&worker(
            r#"export default { async fetch() {
                const enc = new TextEncoder();
                const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
                const err = (p) => p.then(() => "no error", (e) => `${e.name}`);
                const s = crypto.subtle;
                const out = {};
                out.shape = [s instanceof SubtleCrypto, typeof CryptoKey, typeof Crypto, typeof crypto.createHash,
                    typeof crypto.getRandomValues, crypto.subtle === s];
                out.sha256 = hex(await s.digest("SHA-256", enc.encode("abc")));
                const hmac = await s.importKey("raw", enc.encode("key"), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
                const mac = await s.sign("HMAC", hmac, enc.encode("The quick brown fox jumps over the lazy dog"));
                out.hmac = [hex(mac), await s.verify("HMAC", hmac, mac, enc.encode("The quick brown fox jumps over the lazy dog")),
                    hmac instanceof CryptoKey, hmac.algorithm.name];
                const aes = await s.generateKey({ name: "AES-GCM", length: 256 }, true, ["encrypt", "decrypt"]);
                const iv = crypto.getRandomValues(new Uint8Array(12));
                const sealed = await s.encrypt({ name: "AES-GCM", iv }, aes, enc.encode("secret"));
                out.aes = new TextDecoder().decode(await s.decrypt({ name: "AES-GCM", iv }, aes, sealed));
                const ec = await s.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
                const sig = await s.sign({ name: "ECDSA", hash: "SHA-256" }, ec.privateKey, enc.encode("m"));
                out.ecdsa = [await s.verify({ name: "ECDSA", hash: "SHA-256" }, ec.publicKey, sig, enc.encode("m")),
                    (await s.exportKey("jwk", ec.publicKey)).crv];
                const ed = await s.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
                out.ed25519 = await s.verify("Ed25519", ed.publicKey, await s.sign("Ed25519", ed.privateKey, enc.encode("m")), enc.encode("m"));
                const base = await s.importKey("raw", enc.encode("pw"), "PBKDF2", false, ["deriveBits"]);
                out.guards = [
                    await err(s.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: new Uint8Array(8), iterations: 2e6 }, base, 256)),
                    await err(s.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: new Uint8Array(8), iterations: 1000 }, base, 1e6)),
                    await err(s.generateKey({ name: "RSASSA-PKCS1-v1_5", modulusLength: 16384, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }, true, ["sign"])),
                    await err(s.importKey("raw", new Uint8Array(20000), { name: "HMAC", hash: "SHA-256" }, false, ["sign"])),
                ];
                out.pbkdf2 = hex(await s.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: enc.encode("salt"), iterations: 1 }, base, 128)).length;
                return Response.json(out);
            } }"#,
        ))
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        use serde_json::json;
        assert_eq!(
            v["shape"],
            json!([true, "function", "undefined", "undefined", "function", true]),
            "{v}"
        );
        assert_eq!(
            v["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            v["hmac"],
            json!([
                "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
                true,
                true,
                "HMAC"
            ]),
            "{v}"
        );
        assert_eq!(v["aes"], "secret");
        assert_eq!(v["ecdsa"], json!([true, "P-256"]), "{v}");
        assert_eq!(v["ed25519"], json!(true), "{v}");
        assert_eq!(
            v["guards"],
            json!([
                "OperationError",
                "OperationError",
                "OperationError",
                "OperationError"
            ]),
            "{v}"
        );
        assert_eq!(v["pbkdf2"], json!(32), "{v}");
    });
}

#[test]
fn url_pattern_matches_and_the_regexp_v_flag_is_known() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch() {
                const p = new URLPattern({ pathname: "/books/:id(\\d+)" });
                const m = p.exec("https://example.com/books/123?x=1");
                const q = new URLPattern("https://*.example.com/:section/*");
                // The engine's `v` flag (QuickJS in rquickjs 0.11): accepted, plain classes work, but
                // property escapes never match under it (they do under `u`) and class set
                // operations are a SyntaxError. Asserted as is, so an engine fix shows up here.
                const re = new RegExp("^\\p{L}$", "v");
                let v;
                try { v = new RegExp("[\\p{L}--[a-z]]", "v").test("A"); } catch (e) { v = e.name; }
                return Response.json([p.test("https://example.com/books/123"), p.test("https://example.com/books/abc"),
                    m.pathname.groups.id, q.test("https://api.example.com/v1/x"), q.exec("https://api.example.com/v1/x").pathname.groups.section,
                    typeof URLPattern, [re.flags, re.unicodeSets, re.test("é"), re.test("A"), new RegExp("^\\p{L}$", "u").test("A"), /^[a-z]+$/v.test("abc"), /^\p{Lu}$/v.test("A"), /^\p{Lu}$/u.test("A")], v]);
            } }"#,
        )
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                true,
                false,
                "123",
                true,
                "v1",
                "function",
                ["v", true, false, false, true, true, false, true],
                "SyntaxError"
            ]),
            "{v}"
        );
    });
}

#[test]
fn structured_clone_follows_the_html_standard() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch() {
                const err = (f) => { try { f(); return "no error"; } catch (e) { return e.name; } };
                const cyc = { a: [1, new Number(2), new String("s"), new Boolean(false), Object(3n)] };
                cyc.self = cyc;
                const c = structuredClone(cyc);
                const m = structuredClone(new Map([[{ k: 1 }, new Set([new Date(5)])]]));
                const [[mk, mv]] = [...m];
                const f = structuredClone(new File(["foo"], "bar", { type: "text/x", lastModified: 42 }));
                const b = structuredClone(new Blob(["xy"], { type: "t/b" }));
                const buf = new Uint8Array([1, 2, 3, 4]);
                const views = structuredClone([buf.subarray(1, 3), new DataView(buf.buffer, 2)]);
                const e = structuredClone(new RangeError("r"));
                return Response.json({
                    cycle: c.self === c && c !== cyc,
                    wrappers: [typeof c.a[1], c.a[1] + 0, String(c.a[2]), c.a[3].valueOf(), typeof c.a[4], String(c.a[4])],
                    map: [mk.k, mv.has(mv.values().next().value), [...mv][0].getTime()],
                    file: [f instanceof File, f.name, f.type, f.lastModified, await new Response(f).text()],
                    blob: [b instanceof Blob, b.type, await b.text()],
                    views: [views[0].length, views[0][0], views[0].buffer === views[1].buffer, views[1].byteOffset, views[0].buffer.byteLength],
                    error: [e instanceof RangeError, e.message],
                    refused: [err(() => structuredClone(() => 1)), err(() => structuredClone(Symbol())), err(() => structuredClone(new Request("http://x/"))),
                        err(() => structuredClone(Promise.resolve())), err(() => structuredClone(1, 5)), err(() => structuredClone(1, { transfer: [1] }))],
                });
            } }"#,
        )
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        use serde_json::json;
        assert_eq!(v["cycle"], json!(true), "{v}");
        assert_eq!(
            v["wrappers"],
            json!(["object", 2, "s", false, "object", "3"]),
            "{v}"
        );
        assert_eq!(v["map"], json!([1, true, 5]), "{v}");
        assert_eq!(v["file"], json!([true, "bar", "text/x", 42, "foo"]), "{v}");
        assert_eq!(v["blob"], json!([true, "t/b", "xy"]), "{v}");
        assert_eq!(v["views"], json!([2, 2, true, 2, 4]), "{v}");
        assert_eq!(v["error"], json!([true, "r"]), "{v}");
        assert_eq!(
            v["refused"],
            json!([
                "DataCloneError",
                "DataCloneError",
                "DataCloneError",
                "DataCloneError",
                "TypeError",
                "DataCloneError"
            ]),
            "{v}"
        );
    });
}

#[test]
fn bodies_are_streams_and_streams_are_bodies() {
    run(async {
        let (res, logs) = fetch_once(
            r#"export default { async fetch(request) {
                const out = {};
                const err = async (f) => { try { await f(); return "no error"; } catch (e) { return `${e.constructor.name}`; } };
                out.globals = [typeof ReadableStream, typeof WritableStream, typeof TransformStream,
                    typeof TextEncoderStream, typeof TextDecoderStream, typeof ByteLengthQueuingStrategy];
                out.nullBodies = [request.body, new Response().body, new Response(null, { status: 204 }).body,
                    Response.redirect("http://x/").body, Response.error().body, new Request("http://x/").body];
                // A native body read through its stream, then gone.
                const r = new Response("hello");
                const reader = r.body.getReader();
                const first = await reader.read();
                out.native = [first.value instanceof Uint8Array, new TextDecoder().decode(first.value),
                    (await reader.read()).done, r.bodyUsed];
                out.reread = await err(() => r.text());
                // A streamed Response built chunk by chunk.
                const enc = new TextEncoder();
                const stream = new ReadableStream({ start(c) { c.enqueue(enc.encode("a")); c.enqueue(enc.encode("b")); c.close(); } });
                const s = new Response(stream, { headers: { "content-type": "text/plain" } });
                out.streamed = [s.body === stream, s.bodyUsed, await s.text(), s.bodyUsed];
                out.lockedBody = await err(() => { const st = new ReadableStream(); st.getReader(); return new Response(st); });
                out.stringChunk = await err(() => new Response(new ReadableStream({ start(c) { c.enqueue("x"); c.close(); } })).text());
                // The proxy pattern: new Response(res.body, res).
                const upstream = new Response("proxied", { status: 201, headers: { "x-a": "1" } });
                const proxied = new Response(upstream.body, upstream);
                out.proxy = [proxied.status, proxied.headers.get("x-a"), await proxied.text()];
                // clone() tees.
                const c1 = new Response(new ReadableStream({ start(c) { c.enqueue(enc.encode("tee")); c.close(); } }));
                const c2 = c1.clone();
                out.clone = [await c1.text(), await c2.text()];
                // TransformStream and the encoding streams, piped.
                const upper = new TransformStream({ transform(chunk, c) { c.enqueue(chunk.toUpperCase()); } });
                const piped = new Response(new Blob(["shout"]).stream()
                    .pipeThrough(new TextDecoderStream()).pipeThrough(upper).pipeThrough(new TextEncoderStream()));
                out.piped = await piped.text();
                out.blobStream = await new Response(new Blob(["b", "lob"]).stream()).arrayBuffer().then((b) => b.byteLength);
                const rq = new Request("http://x/", { method: "POST", body: new ReadableStream({ start(c) { c.enqueue(enc.encode("{\"k\":1}")); c.close(); } }) });
                out.request = [(await rq.clone().json()).k, await rq.text()];
                out.getWithStream = await err(() => new Request("http://x/", { body: new ReadableStream() }));
                const chunks = [];
                for await (const chunk of new Response("iter").body) chunks.push(chunk.length);
                out.asyncIter = chunks;
                // The Worker's own response is a stream the runtime reads.
                return new Response(new ReadableStream({
                    async pull(c) { c.enqueue(enc.encode(JSON.stringify(out))); c.close(); },
                }), { headers: { "content-type": "application/json" } });
            } }"#,
        )
        .await;
        let res = res.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        use serde_json::json;
        assert_eq!(
            v["globals"],
            json!(["function", "function", "function", "function", "function", "function"]),
            "{v}"
        );
        assert_eq!(
            v["nullBodies"],
            json!([null, null, null, null, null, null]),
            "{v}"
        );
        assert_eq!(v["native"], json!([true, "hello", true, true]), "{v}");
        assert_eq!(v["reread"], json!("TypeError"), "{v}");
        assert_eq!(v["streamed"], json!([true, false, "ab", true]), "{v}");
        assert_eq!(v["lockedBody"], json!("TypeError"), "{v}");
        assert_eq!(v["stringChunk"], json!("TypeError"), "{v}");
        assert_eq!(v["proxy"], json!([201, "1", "proxied"]), "{v}");
        assert_eq!(v["clone"], json!(["tee", "tee"]), "{v}");
        assert_eq!(v["piped"], json!("SHOUT"), "{v}");
        assert_eq!(v["blobStream"], json!(4), "{v}");
        assert_eq!(v["request"], json!([1, "{\"k\":1}"]), "{v}");
        assert_eq!(v["getWithStream"], json!("TypeError"), "{v}");
        assert_eq!(v["asyncIter"], json!([4]), "{v}");
        assert_eq!(
            res.headers
                .iter()
                .find(|(n, _)| n == "content-type")
                .map(|(_, v)| v.as_str()),
            Some("application/json")
        );
    });
}

#[test]
fn a_large_module_loaded_again_comes_from_bytecode_and_behaves_the_same() {
    run(async {
        let token = format!("{:x}", rand_token());
        let mut src = format!(
            "// {token}\nfunction helper(a) {{ return a * 2; }}\nexport function thrower() {{ throw new Error('boom'); }}\n"
        );
        while src.len() < super::bytecode::MIN_SOURCE_BYTES + 100 {
            src.push_str(
                "export const filler = [1, 2, 3].map(helper);\n"
                    .replace("filler", &format!("f{}", src.len()))
                    .as_str(),
            );
        }
        src.push_str(
            r#"export default { async fetch() {
                let line = 0;
                try { thrower(); } catch (e) { line = /:(\d+)/.test(e.stack) ? 1 : 0; }
                return Response.json({ v: helper(21), text: helper.toString().includes("a * 2"), line });
            } }"#,
        );
        let code = worker(&src);
        let digest: [u8; 32] = sha2::Sha256::digest(src.as_bytes()).into();
        assert!(!super::bytecode::is_cached("t", "w.js", &src));
        let first = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (a, _) = fetch_with(&first, &code, get("http://w/"), LIMITS).await;
        assert!(
            super::bytecode::is_cached("t", "w.js", &src),
            "not cached after a load"
        );
        assert!(
            !super::bytecode::is_cached("other", "w.js", &src),
            "shared across tenants"
        );
        drop(first);
        let second = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (b, _) = fetch_with(&second, &code, get("http://w/"), LIMITS).await;
        assert!(
            super::bytecode::LOADED.lock().unwrap().contains(&digest),
            "the second load parsed the source again"
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(body(&a), body(&b));
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v, serde_json::json!({ "v": 42, "text": true, "line": 1 }));
    });
}

fn rand_token() -> u128 {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).unwrap();
    u128::from_le_bytes(b)
}

#[test]
fn host_internals_are_not_reachable() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                const names = ["Deno", "process", "require", "__ops", "print", "scriptArgs", "std", "os", "module", "exports"];
                const seen = {};
                for (const n of names) seen[n] = typeof globalThis[n];
                let imp;
                try { await import("isogate:bootstrap"); imp = "imported"; } catch (e) { imp = String(e.message); }
                let fsImp;
                try { await import("/etc/passwd"); fsImp = "imported"; } catch (e) { fsImp = String(e.message); }
                let fetchErr;
                try { await fetch("http://169.254.169.254/latest/meta-data/"); fetchErr = "reachable"; }
                catch (e) { fetchErr = e.name + ": " + e.message; }
                return Response.json({ seen, imp, fsImp, fetchErr, hostKeys: Object.getOwnPropertyNames(globalThis).filter(k => k.startsWith("__")) });
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        for (name, t) in v["seen"].as_object().unwrap() {
            assert_eq!(t, "undefined", "{name} is visible");
        }
        assert!(v["imp"].as_str().unwrap().contains("own modules"), "{v}");
        assert!(v["fsImp"].as_str().unwrap().contains("own modules"), "{v}");
        assert_eq!(
            v["fetchErr"],
            format!("TypeError: {NETWORK_DISABLED}"),
            "{v}"
        );
        assert_eq!(v["hostKeys"], serde_json::json!([]));
    });
}

#[test]
fn own_modules_import_including_data_modules() {
    run(async {
        let mut code = worker(
            r#"import { twice } from "./lib/util.js";
               import cfg from "./data.json";
               import txt from "./t.txt";
               export default { async fetch() { return Response.json({ v: twice(cfg.n), txt }); } }"#,
        );
        code.modules.insert(
            "lib/util.js".into(),
            ModuleSource::Js("export const twice = (n) => n * 2;".into()),
        );
        code.modules.insert(
            "data.json".into(),
            ModuleSource::Json {
                json: serde_json::json!({"n": 21}),
            },
        );
        code.modules.insert(
            "t.txt".into(),
            ModuleSource::Text {
                text: "it's \"text\"\n".into(),
            },
        );
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(v, serde_json::json!({"v": 42, "txt": "it's \"text\"\n"}));
    });
}

#[test]
fn syntax_errors_and_exceptions_are_classified() {
    run(async {
        let (res, _) =
            fetch_once("export default { async fetch() { return new Response(\"x\" } }").await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Syntax, "{e:?}");
        let (res, _) =
            fetch_once("export default { async fetch() { throw new RangeError('boom'); } }").await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exception);
        assert!(e.message.starts_with("RangeError: boom"), "{e:?}");
        let (res, _) = fetch_once("export default { async fetch() { return 42; } }").await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exception);
        assert!(e.message.contains("must return a Response"), "{e:?}");
        let (res, _) = fetch_once("export const x = 1;").await;
        assert!(res.unwrap_err().message.contains("export default"));
    });
}

#[test]
fn cpu_bomb_is_stopped_at_its_cpu_limit_and_isolate_is_poisoned() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker("export default { async fetch() { while (true) {} } }");
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::CpuLimit, "{e:?}");
        assert!(e.message.contains("50 ms"), "{e:?}");
        assert!(!iso.is_reusable());
    });
}

#[test]
fn cpu_bomb_that_catches_the_interrupt_is_still_stopped() {
    run(async {
        let (res, _) = fetch_once(
            "export default { async fetch() { for (;;) { try { while (true) {} } catch (e) {} } } }",
        )
        .await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::CpuLimit);
    });
}

#[test]
fn cpu_limit_counts_cpu_not_wall_time() {
    run(async {
        // 200 ms asleep is far above the 50 ms CPU limit but uses almost no CPU.
        let (res, _) = fetch_once(
            "export default { async fetch() { await new Promise((r) => setTimeout(r, 200)); return new Response('slept'); } }",
        )
        .await;
        assert_eq!(body(&res.unwrap()), "slept");
    });
}

#[test]
fn memory_bomb_is_stopped_and_isolate_is_poisoned() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"export default { async fetch() { const hog = []; while (true) hog.push("x".repeat(1 << 16) + Math.random()); } }"#,
        );
        let limits = Limits {
            cpu_ms: 5_000,
            ..LIMITS
        };
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), limits).await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::MemoryLimit, "{e:?}");
        assert!(e.message.contains("16 MiB"), "{e:?}");
        assert!(!iso.is_reusable());
    });
}

#[test]
fn wall_limit_stops_a_never_settling_promise() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker("export default { fetch() { return new Promise(() => {}); } }");
        let limits = Limits {
            wall_ms: 100,
            ..LIMITS
        };
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), limits).await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::WallLimit);
        assert!(!iso.is_reusable());
    });
}

#[test]
fn deep_recursion_is_an_exception_not_a_crash() {
    run(async {
        let (res, _) = fetch_once(
            "const f = (n) => f(n + 1) + 1; export default { async fetch() { return new Response(String(f(0))); } }",
        )
        .await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exception, "{e:?}");
        assert!(e.message.contains("stack"), "{e:?}");
    });
}

#[test]
fn microtask_loop_is_stopped_by_the_cpu_limit() {
    run(async {
        let (res, _) = fetch_once(
            "export default { async fetch() { const spin = () => Promise.resolve().then(spin); spin(); await new Promise(() => {}); } }",
        )
        .await;
        let e = res.unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::CpuLimit | ErrorKind::WallLimit),
            "{e:?}"
        );
    });
}

#[test]
fn module_state_persists_across_invocations_of_a_loaded_worker() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            "let count = 0; export default { async fetch() { count += 1; return Response.json({ count }); } }",
        );
        for expected in 1..=3 {
            let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
            let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
            assert_eq!(v["count"], expected);
        }
        assert!(iso.is_reusable());
    });
}

/// An egress of the test's own: answers every request with the URL it was asked for and counts.
struct CountingEgress(std::sync::atomic::AtomicU32);

impl Egress for CountingEgress {
    fn authorize(&self, _invoker: &Invoker, request: &EgressRequest) -> Verdict {
        if request.url.contains("denied") {
            return Verdict::Reject("denied by test policy".into());
        }
        if request.url.contains("limited") {
            return Verdict::Respond(EgressResponse {
                status: 429,
                headers: vec![("retry-after".into(), "1".into())],
                body: vec![],
                streamed: false,
                hops: 0,
                url: String::new(),
            });
        }
        Verdict::Proceed(Authorization {
            rule: None,
            report_only: false,
        })
    }

    fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        _authorization: Authorization,
    ) -> BoxFuture<'static, Result<Delivered, EgressError>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Ok((
                EgressResponse {
                    status: 200,
                    headers: vec![
                        ("x-tenant".into(), invoker.tenant),
                        ("x-invocation".into(), invoker.invocation.to_string()),
                        ("x-budget".into(), request.budget.to_string()),
                    ],
                    body: request.url.into_bytes(),
                    streamed: false,
                    hops: 0,
                    url: String::new(),
                },
                None,
            ))
        })
    }
}

#[test]
fn denied_and_rate_limited_fetches_cost_no_subrequest() {
    run(async {
        let egress = Arc::new(CountingEgress(Default::default()));
        let iso = Isolate::new(egress.clone()).await.unwrap();
        let code = worker(
            r#"export default { async fetch() {
                const out = [];
                for (let i = 0; i < 5; i++) {
                    try { await fetch("https://denied.example/"); } catch (e) { out.push(e.name + ": " + e.message); }
                    const r = await fetch("https://limited.example/");
                    out.push(r.status + " " + r.headers.get("retry-after"));
                }
                const ok = await fetch("https://ok.example/");
                out.push(ok.headers.get("x-budget"));
                return Response.json(out);
            } }"#,
        );
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(v[0], "TypeError: denied by test policy");
        assert_eq!(v[1], "429 1");
        // Three allowed in the budget; this was the first, so two remain.
        assert_eq!(v[10], "2");
        assert_eq!(egress.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    });
}

#[test]
fn fetch_goes_through_egress_with_host_identity_and_budget() {
    run(async {
        let egress = Arc::new(CountingEgress(Default::default()));
        let iso = Isolate::new(egress.clone()).await.unwrap();
        let code = worker(
            r#"export default { async fetch() {
                const r = await fetch("https://api.example.com/x?y=1", { headers: { "x-tenant": "other" } });
                const out = [r.status, r.headers.get("x-tenant"), await r.text()];
                const errs = [];
                for (let i = 0; i < 5; i++) { try { await fetch("https://api.example.com/"); } catch (e) { errs.push(e.message); } }
                return Response.json({ out, errs });
            } }"#,
        );
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SubrequestLimit, "{e:?}");
        assert!(e.message.contains("3 subrequests"), "{e:?}");
        assert_eq!(egress.0.load(std::sync::atomic::Ordering::SeqCst), 3);

        let iso = Isolate::new(egress.clone()).await.unwrap();
        let code = worker(
            r#"export default { async fetch() {
                const r = await fetch("https://api.example.com/x?y=1");
                return Response.json([r.status, r.headers.get("x-tenant"), await r.text()]);
            } }"#,
        );
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([200, "t", "https://api.example.com/x?y=1"])
        );
    });
}

#[test]
fn global_outbound_null_disables_fetch_even_with_egress() {
    run(async {
        let egress = Arc::new(CountingEgress(Default::default()));
        let iso = Isolate::new(egress.clone()).await.unwrap();
        let mut code = worker(
            r#"export default { async fetch() {
                try { await fetch("https://api.example.com/"); return new Response("sent"); }
                catch (e) { return new Response(e.name + ": " + e.message); }
            } }"#,
        );
        code.global_outbound = Outbound::Disabled;
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(
            body(&res.unwrap()),
            format!("TypeError: {NETWORK_DISABLED}")
        );
        assert_eq!(egress.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    });
}

#[test]
fn execute_returns_json_and_logs() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, logs, _, _) = iso
            .execute(
                "async (env) => { console.log('looking up', env.n); return { total: env.n * 2, list: [1, 2] }; }",
                &serde_json::json!({"n": 21}),
                invoker(),
                LIMITS,
            )
            .await;
        assert_eq!(
            res.unwrap(),
            serde_json::json!({"total": 42, "list": [1, 2]})
        );
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].message, "looking up 21");

        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, ..) = iso
            .execute("async () => {", &serde_json::json!({}), invoker(), LIMITS)
            .await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::Syntax);
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, ..) = iso
            .execute("42", &serde_json::json!({}), invoker(), LIMITS)
            .await;
        assert!(res
            .unwrap_err()
            .message
            .contains("must evaluate to a function"));
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, ..) = iso
            .execute(
                "async () => { while(true) {} }",
                &serde_json::json!({}),
                invoker(),
                LIMITS,
            )
            .await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::CpuLimit);
    });
}

#[test]
fn console_output_is_bounded_per_invocation() {
    run(async {
        let (res, logs) = fetch_once(
            "export default { async fetch() { for (let i = 0; i < 5000; i++) console.log('line', i); return new Response('ok'); } }",
        )
        .await;
        assert!(res.is_ok());
        assert_eq!(logs.len(), MAX_LOG_ENTRIES + 1);
        assert!(logs.last().unwrap().message.contains("dropped"));
    });
}

#[test]
fn wait_until_work_finishes_after_the_response() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"let done = [];
            export default { async fetch(request, env, ctx) {
                const seen = done.slice();
                ctx.waitUntil(new Promise((r) => setTimeout(() => { done.push("background"); r(); }, 20)));
                return Response.json(seen);
            } }"#,
        );
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(body(&res.unwrap()), "[]");
        // fetch() returned only after the waitUntil promise settled.
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(body(&res.unwrap()), r#"["background"]"#);
    });
}

// ---- hardening (issue 8: panics, stack-trace leaks, Fetch checks, error kinds) -------------------

/// Puts a host function that panics on the global object (a stand-in for an LLRT bug).
async fn add_panicking_host_fn(iso: &Isolate) {
    iso.ctx
        .with(|ctx| {
            ctx.globals()
                .set(
                    "__hostPanic",
                    Func::from(|| -> rquickjs::Result<()> { panic!("host function bug") }),
                )
                .unwrap();
        })
        .await;
}

#[test]
fn a_panicking_host_function_fails_the_invocation_and_the_isolate_is_never_reused() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        add_panicking_host_fn(&iso).await;
        let code = worker(
            r#"let n = 0;
            export default { async fetch(req) {
                n++;
                if (new URL(req.url).pathname === "/panic") {
                    // Swallowing the engine's exception must not hide the panic.
                    try { __hostPanic(); } catch (e) {}
                    return new Response("survived " + n);
                }
                return new Response(String(n));
            } }"#,
        );
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(body(&res.unwrap()), "1");
        assert!(iso.is_reusable());
        let (res, _) = fetch_with(&iso, &code, get("http://w/panic"), LIMITS).await;
        let err = res.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal, "{err}");
        assert_eq!(err.message, panics::PANIC_MESSAGE);
        assert!(
            !iso.is_reusable(),
            "an isolate that panicked must be discarded"
        );
        // Even if a caller ignored is_reusable, nothing runs in it any more.
        let (res, _) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::IsolateDiscarded);
    });
}

#[test]
fn a_panic_that_unwinds_out_of_the_engine_is_caught_too() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        add_panicking_host_fn(&iso).await;
        let (res, _) = fetch_with(
            &iso,
            &worker(
                r#"export default { async fetch() { __hostPanic(); return new Response("x"); } }"#,
            ),
            get("http://w/"),
            LIMITS,
        )
        .await;
        assert_eq!(res.unwrap_err().kind, ErrorKind::Internal);
        assert!(!iso.is_reusable());
        let (res, _, _, _) = Isolate::new(Arc::new(DisabledEgress))
            .await
            .unwrap()
            .execute("async () => 1", &serde_json::json!({}), invoker(), LIMITS)
            .await;
        assert_eq!(
            res.unwrap(),
            serde_json::json!(1),
            "other isolates are unaffected"
        );
    });
}

#[test]
fn blob_slice_follows_the_file_api() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                const b = new Blob(["abcdef"]);
                const t = async (x) => await x.text();
                const f = new File(["abcdef"], "f.txt");
                return Response.json([
                    await t(b.slice(1)), await t(b.slice()), await t(b.slice(-2)), await t(b.slice(4, 2)),
                    await t(b.slice(1, -1)), await t(b.slice(-100, 100)), b.slice(0, 1, "text/plain").type,
                    await t(f.slice(2)), await t(b.slice(NaN, Infinity)),
                ]);
            } }"#,
        )
        .await;
        assert_eq!(
            body(&res.unwrap()),
            r#"["bcdef","abcdef","ef","","bcde","abcdef","text/plain","cdef","abcdef"]"#
        );
    });
}

#[test]
fn stack_trace_callsites_hand_out_no_functions() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch(req, env, ctx) {
                const found = [];
                const grab = (_e, sites) => {
                    for (const s of sites) {
                        for (const m of ["getFunction", "getThis", "getTypeName", "getMethodName"]) {
                            try { const v = s[m] && s[m](); if (typeof v === "function" || (v && typeof v === "object")) found.push(m + ":" + s.getFunctionName()); } catch (e) {}
                        }
                        try { const p = Object.getPrototypeOf(s); if (p && p.constructor && p.constructor !== Object) found.push("ctor"); } catch (e) {}
                    }
                    return "GRAB:" + sites.length + ":" + sites.map(String).join("\n");
                };
                Error.prepareStackTrace = grab;
                const direct = new Error("x").stack;
                // From inside timers, microtasks, waitUntil and Headers callbacks too.
                await new Promise((r) => setTimeout(() => { new Error("t").stack; r(); }, 0));
                await new Promise((r) => queueMicrotask(() => { new Error("m").stack; r(); }));
                const obj = {}; Error.captureStackTrace(obj); obj.stack;
                new Headers({ get a() { new Error("h").stack; return "1"; } });
                class E extends Error {}
                E.prepareStackTrace = grab;
                new E("sub").stack;
                const desc = Object.getOwnPropertyDescriptor(Error, "prepareStackTrace");
                let redefined = "no";
                try { Object.defineProperty(Error, "prepareStackTrace", { value: 1 }); redefined = "yes"; } catch (e) {}
                let callerLeak = "none";
                try { (function sloppy() { return sloppy.caller; })(); callerLeak = "reachable"; } catch (e) {}
                return Response.json({ found, direct, same: Error.prepareStackTrace === grab,
                    getterIsAccessor: typeof desc.get, redefined, callerLeak });
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(v["found"], serde_json::json!([]), "{v}");
        assert!(v["direct"].as_str().unwrap().starts_with("GRAB:"), "{v}");
        assert!(!v["direct"].as_str().unwrap().starts_with("GRAB:0:"), "{v}");
        assert_eq!(v["same"], true);
        assert_eq!(v["redefined"], "no");
        assert_eq!(v["callerLeak"], "none");
    });
}

/// A body given as a string is read without LLRT's asynchronous arrayBuffer(): the bytes are
/// the string's UTF-8 (lone surrogates as U+FFFD, as for any USVString body), read once; clones
/// and `.body` still see the same bytes.
#[test]
fn string_bodies_read_as_utf8_once_and_clone() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                const r = new Response("h\uD800\u00e9");
                const c = r.clone();
                const bytes = [...new Uint8Array(await r.arrayBuffer())];
                let again; try { await r.text(); again = "read twice"; } catch (e) { again = e.name; }
                const cloned = await c.text();
                const viaStream = await new Response(new Response("xyz").body).text();
                const json = await Response.json({ a: "\u00e9" }).json();
                return Response.json({ bytes, again, used: r.bodyUsed, cloned, viaStream, json });
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"bytes": [104, 239, 191, 189, 195, 169], "again": "TypeError",
                "used": true, "cloned": "h\u{fffd}\u{e9}", "viaStream": "xyz", "json": {"a": "\u{e9}"}})
        );
    });
}

/// The response size limit holds for every kind of body the Worker returns, the string bodies
/// read without an await included.
#[test]
fn a_response_body_over_the_limit_is_refused_whatever_its_kind() {
    run(async {
        for body in [r#""x".repeat(33 << 20)"#, r#"new Uint8Array(33 << 20)"#] {
            let src =
                format!("export default {{ async fetch() {{ return new Response({body}); }} }}");
            let (res, _) = fetch_roomy(&worker(&src)).await;
            let err = res.expect_err(body);
            assert!(
                err.message.contains("exceeds the limit of 33554432 bytes"),
                "{body}: {err:?}"
            );
        }
    });
}

/// The CallSite guard is made on the first `Error.prepareStackTrace = fn`: a Worker that zeroed
/// `Error.stackTraceLimit` before that still gets guarded sites (and its limit back) afterwards.
#[test]
fn the_stack_trace_guard_holds_when_made_after_the_limit_was_zeroed() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                Error.stackTraceLimit = 0;
                const found = [];
                Error.prepareStackTrace = (_e, sites) => {
                    for (const s of sites) if (s.getFunction() !== undefined) found.push("fn");
                    return "sites:" + sites.length;
                };
                const zero = new Error("z").stack;
                const limitAfter = Error.stackTraceLimit;
                Error.stackTraceLimit = 5;
                const some = new Error("s").stack;
                return Response.json({ zero, limitAfter, some, found });
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        assert_eq!(v["zero"], "sites:0", "{v}");
        assert_eq!(v["limitAfter"], 0, "{v}");
        assert_ne!(v["some"], "sites:0", "{v}");
        assert_eq!(v["found"], serde_json::json!([]), "{v}");
    });
}

#[test]
fn header_injection_and_bad_statuses_are_errors_the_worker_can_catch() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                const out = {};
                const attempt = (name, f) => { try { f(); out[name] = "accepted"; } catch (e) { out[name] = e.name; } };
                attempt("ctorRecord", () => new Headers({ "x-a": "b\r\nset-cookie: pwn=1" }));
                attempt("ctorPairs", () => new Headers([["x-a", "b\nc"]]));
                attempt("ctorNul", () => new Headers({ "x-a": "b\u0000c" }));
                attempt("badName", () => new Headers({ "x a": "b" }));
                attempt("set", () => new Headers().set("x-a", "b\rc"));
                attempt("append", () => new Headers().append("x-a", "b\nc"));
                attempt("responseHeaders", () => new Response("x", { headers: { "x-a": "a\r\nb" } }));
                attempt("responseHeadersSet", () => new Response("x").headers.set("x-a", "a\r\nb"));
                attempt("request", () => new Request("http://x/", { headers: [["x-a", "1\r\n2"]] }));
                attempt("status999", () => new Response("x", { status: 999 }));
                attempt("status100", () => new Response(null, { status: 100 }));
                attempt("status600", () => new Response("x", { status: 600 }));
                attempt("status199", () => new Response("x", { status: 199 }));
                attempt("status204Body", () => new Response("x", { status: 204 }));
                attempt("status304Body", () => new Response("", { status: 304 }));
                attempt("status204Null", () => new Response(null, { status: 204 }));
                attempt("jsonStatus", () => Response.json({}, { status: 1000 }));
                attempt("redirect200", () => Response.redirect("http://x/", 200));
                attempt("redirectBadUrl", () => Response.redirect("not a url"));
                attempt("statusText", () => new Response("x", { statusText: "OK\r\nx: y" }));
                attempt("trimmed", () => { if (new Headers({ a: "  v \t" }).get("a") !== "v") throw new Error("not trimmed"); });
                const r = Response.redirect("http://x/a b", 301);
                out.redirect = [r.status, r.headers.get("location")];
                out.instance = [new Response("x") instanceof Response, Response.json(1) instanceof Response,
                    new Headers() instanceof Headers, new Request("http://x/") instanceof Request];
                return Response.json(out);
            } }"#,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
        for k in [
            "ctorRecord",
            "ctorPairs",
            "ctorNul",
            "badName",
            "set",
            "append",
            "responseHeaders",
            "responseHeadersSet",
            "request",
            "status204Body",
            "status304Body",
            "redirectBadUrl",
            "statusText",
        ] {
            assert_eq!(v[k], "TypeError", "{k}: {v}");
        }
        for k in [
            "status999",
            "status100",
            "status600",
            "status199",
            "jsonStatus",
            "redirect200",
        ] {
            assert_eq!(v[k], "RangeError", "{k}: {v}");
        }
        assert_eq!(v["status204Null"], "accepted", "{v}");
        assert_eq!(v["trimmed"], "accepted", "{v}");
        assert_eq!(
            v["redirect"],
            serde_json::json!([301, "http://x/a%20b"]),
            "{v}"
        );
        assert_eq!(
            v["instance"],
            serde_json::json!([true, true, true, true]),
            "{v}"
        );
    });
}

#[test]
fn poisoned_globals_and_prototypes_are_the_workers_exception_not_internal() {
    run(async {
        for poison in [
            "Headers.prototype.forEach = function (cb) { cb({}, 1); };",
            "globalThis.Uint8Array = function () { return {}; };",
            "Array.prototype.push = function () { throw new Error('no push'); };",
            "Promise.all = function () { return 42; }; Promise.prototype.then = function () { return 7; };",
            "Object.defineProperty(Array.prototype, '0', { set(v) { throw new Error('setter'); }, configurable: true });",
            "Response.prototype.arrayBuffer = function () { return Promise.resolve('not a buffer'); };",
            "JSON.stringify = () => 1; Object.freeze = () => { throw new Error('freeze'); };",
        ] {
            let (res, _) = fetch_once(&format!(
                r#"export default {{ async fetch(req, env, ctx) {{
                    {poison}
                    ctx.waitUntil(null);
                    return new Response("poisoned", {{ headers: {{ "x-a": "1" }} }});
                }} }}"#
            ))
            .await;
            match res {
                Ok(r) => assert_eq!(body(&r), "poisoned", "{poison}"),
                Err(e) => assert_eq!(e.kind, ErrorKind::Exception, "{poison}: {e}"),
            }
        }
        // A replaced Uint8Array or forEach must not break the response the Worker built.
        let (res, _) = fetch_once(
            r#"export default { async fetch() {
                Headers.prototype.forEach = function () { throw new Error("poison"); };
                globalThis.Uint8Array = function () { return {}; };
                return new Response("body", { headers: { "x-a": "1" } });
            } }"#,
        )
        .await;
        let r = res.unwrap();
        assert_eq!(body(&r), "body");
        assert!(r.headers.iter().any(|(k, v)| k == "x-a" && v == "1"));
    });
}

#[test]
fn a_handler_returning_a_non_response_or_invalid_output_is_an_exception() {
    run(async {
        let (res, _) = fetch_once(
            r#"export default { async fetch() { return { status: 200, headers: [], body: new Uint8Array(1) }; } }"#,
        )
        .await;
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exception, "{e}");
        assert!(e.message.contains("must return a Response"), "{e}");
    });
}

#[test]
fn wait_until_work_added_late_is_awaited_and_a_rejection_is_logged() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"let done = [];
            export default { async fetch(request, env, ctx) {
                const seen = done.slice();
                ctx.waitUntil(new Promise((r) => setTimeout(() => {
                    ctx.waitUntil(new Promise((r2) => setTimeout(() => { done.push("late"); r2(); }, 10)));
                    r();
                }, 10)));
                ctx.waitUntil(Promise.reject(new Error("boom")));
                return Response.json(seen);
            } }"#,
        );
        let mut logs = Vec::new();
        let mut out = None;
        iso.fetch(
            &code,
            get("http://w/"),
            invoker(),
            LIMITS,
            None,
            |(o, l), _, _| {
                out = Some(o);
                logs = l;
            },
        )
        .await;
        assert_eq!(body(&out.unwrap().unwrap()), "[]");
        let (res, logs2) = fetch_with(&iso, &code, get("http://w/"), LIMITS).await;
        assert_eq!(body(&res.unwrap()), r#"["late"]"#);
        let all: Vec<_> = logs
            .iter()
            .chain(logs2.iter())
            .map(|l| l.message.clone())
            .collect();
        assert!(
            all.iter()
                .any(|m| m.contains("ctx.waitUntil promise rejected")),
            "{all:?}"
        );
    });
}

#[test]
fn code_mode_with_poisoned_intrinsics_is_never_internal() {
    run(async {
        for code in [
            "async () => { Promise.prototype.then = function () { return 1; }; return { ok: true }; }",
            "async () => { JSON.stringify = () => 42; Object.freeze = null; return [1, 2]; }",
            "async () => { Object.defineProperty(Promise.prototype, 'constructor', { get() { throw new Error('ctor'); } }); return 1; }",
        ] {
            let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
            let (res, _, _, _) = iso
                .execute(code, &serde_json::json!({}), invoker(), LIMITS)
                .await;
            if let Err(e) = res {
                assert_eq!(e.kind, ErrorKind::Exception, "{code}: {e}");
            }
        }
        // The replaced `then` must not stall the invocation until its wall limit.
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, _, _, _) = iso
            .execute(
                "async () => { Promise.prototype.then = function () {}; await null; return 'done'; }",
                &serde_json::json!({}),
                invoker(),
                LIMITS,
            )
            .await;
        assert_eq!(res.unwrap(), serde_json::json!("done"));
    });
}

// ---- native memory (issue 8, defects 1-3) ----------------------------------------------------

const MEM64: Limits = Limits {
    cpu_ms: 5_000,
    memory_mb: 64,
    wall_ms: 10_000,
    subrequests: 3,
    worker_concurrency: 32,
};

async fn execute_with(src: &str, limits: Limits) -> Result<serde_json::Value, WorkerError> {
    let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
    let (res, ..) = iso
        .execute(src, &serde_json::json!({}), invoker(), limits)
        .await;
    if res.is_err() {
        assert!(!iso.is_reusable(), "a failed isolate must not be reused");
    }
    res
}

/// Every size JS can hand to a native (Rust) allocation is checked before allocating: over the
/// budget is `memory_limit` (not a process abort), also when the JS catches the error, and the
/// next invocation on the same thread works.
#[test]
fn native_allocations_sized_by_js_end_in_memory_limit() {
    let cases = [
        "Buffer.alloc(2**40).length",
        "Buffer.allocUnsafe(2**40).length",
        "Buffer.allocUnsafeSlow(2**40).length",
        "Buffer.alloc(2**40, 1).length",
        "Buffer.alloc(512 << 20).length",
        "Buffer.from('ab'.repeat(20 << 20), 'hex').length",
        "Buffer.concat(Array(10000).fill(new Uint8Array(8 << 20))).length",
        "new Blob(Array(10000).fill(new Uint8Array(8 << 20))).size",
        "new File(Array(10000).fill(new Uint8Array(8 << 20)), 'f').size",
        "(() => { const s = 'x'.repeat(1 << 20); return new Blob(Array(1000).fill({ toString: () => s })).size; })()",
        "new TextEncoder().encode('x'.repeat(40 << 20)).length",
        "atob('QUFB'.repeat(10 << 20)).length",
        "btoa('x'.repeat(30 << 20)).length",
        "(() => { try { Buffer.alloc(2**40); } catch (e) {} return 'caught'; })()",
        "(() => { try { 'x'.repeat(2**29); } catch (e) {} return 'caught'; })()",
        "(() => { const a = []; a.length = 2**31 - 1; return new Response(a).arrayBuffer().then((b) => b.byteLength); })()",
    ];
    run(async {
        for case in cases {
            let res = execute_with(&format!("async () => {case}"), MEM64).await;
            let e = res.expect_err(case);
            assert_eq!(e.kind, ErrorKind::MemoryLimit, "{case}: {e:?}");
            assert!(e.message.contains("64 MiB"), "{case}: {e:?}");
            let ok = execute_with("async () => Buffer.alloc(1024).length", MEM64).await;
            assert_eq!(ok.unwrap(), serde_json::json!(1024), "after {case}");
        }
    });
}

/// The guards keep the real APIs' argument errors and results.
#[test]
fn guarded_apis_keep_their_behaviour() {
    run(async {
        let res = execute_with(
            r#"async () => {
                const errs = [];
                for (const bad of ["1", -1, NaN, Infinity, undefined]) {
                    try { Buffer.alloc(bad); errs.push("none"); } catch (e) { errs.push(e.name); }
                }
                const b = Buffer.allocUnsafe(16);
                const f = new File(["ab", new Uint8Array([99]), new Blob(["d"]), 5], "n.txt");
                return {
                    errs,
                    unsafe: [b.length, b.every((x) => x === 0), b instanceof Buffer],
                    fill: [Buffer.alloc(4, "ab").toString(), Buffer.alloc(3, "").length, Buffer.alloc(2, "6162", "hex").toString()],
                    from: [Buffer.from("aGk=", "base64").toString(), Buffer.from([1, 2]).length],
                    concat: Buffer.concat([Buffer.from("a"), Buffer.from("bc")], 2).toString(),
                    blob: [new Blob(["x", "yz"]).size, await new Blob(new Set(["p", "q"])).text(),
                           new Blob(["a"]) instanceof Blob, f instanceof File, f.name, await f.text(),
                           new Blob([]).constructor === Blob, Object.getPrototypeOf(new Blob([])) === Blob.prototype],
                    text: [new TextEncoder().encode("hé").length, new TextDecoder().decode(new Uint8Array([104, 105]))],
                    b64: [btoa("hi"), atob("aGk=")],
                };
            }"#,
            MEM64,
        )
        .await
        .unwrap();
        assert_eq!(
            res,
            serde_json::json!({
                "errs": ["TypeError", "RangeError", "RangeError", "RangeError", "TypeError"],
                "unsafe": [16, true, true],
                "fill": ["abab", 3, "ab"],
                "from": ["hi", 2],
                "concat": "ab",
                "blob": [3, "pq", true, true, "n.txt", "abcd5", true, true],
                "text": [3, "hi"],
                "b64": ["aGk=", "hi"],
            })
        );
    });
}

/// Bytes a cached Worker keeps in native objects count against `memory_mb`.
#[test]
fn blobs_kept_by_a_cached_worker_count_against_its_memory_limit() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"const keep = [];
            export default { async fetch() {
                keep.push(new Blob([new Uint8Array(4 << 20)]));
                return new Response(String(keep.length));
            } }"#,
        );
        let mut served = 0;
        let mut failure = None;
        for _ in 0..64 {
            let (res, _) = fetch_with(&iso, &code, get("http://w/"), MEM64).await;
            match res {
                Ok(_) => served += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let e = failure.expect("the Worker was never stopped");
        assert_eq!(e.kind, ErrorKind::MemoryLimit, "{e:?}");
        // 4 MiB per request: stopped before the native bytes alone reach 64 MiB.
        assert!(
            served < 16,
            "served {served} requests of 4 MiB under 64 MiB"
        );
        assert!(!iso.is_reusable());
    });
}

/// Memory handed to JS never carries bytes of an earlier isolate.
#[test]
fn alloc_unsafe_is_zeroed_after_another_isolate_freed_marked_buffers() {
    run(async {
        let a = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, ..) = a
            .execute(
                r#"async () => {
                    const keep = [];
                    for (let i = 0; i < 256; i++) keep.push(Buffer.alloc(60000 + i, 0xab));
                    for (let i = 0; i < 256; i++) keep.push(new Blob([Buffer.alloc(3000 + i, 0xcd)]));
                    return keep.length;
                }"#,
                &serde_json::json!({}),
                invoker(),
                MEM64,
            )
            .await;
        assert_eq!(res.unwrap(), serde_json::json!(512));
        drop(a);
        let res = execute_with(
            r#"async () => {
                let dirty = 0;
                for (let i = 0; i < 256; i++) {
                    for (const b of [Buffer.allocUnsafe(60000 + i), Buffer.allocUnsafeSlow(60000 + i),
                                     Buffer.allocUnsafe(3000 + i), new Uint8Array(3000 + i)]) {
                        for (let j = 0; j < b.length; j += 61) if (b[j] !== 0) { dirty++; break; }
                    }
                }
                return dirty;
            }"#,
            Limits {
                cpu_ms: 60_000,
                wall_ms: 120_000,
                ..MEM64
            },
        )
        .await;
        assert_eq!(res.unwrap(), serde_json::json!(0));
    });
}

/// QuickJS's own heap and native bytes share one budget, and a caught out-of-memory error still
/// ends the invocation as `memory_limit`.
#[test]
fn quickjs_heap_and_native_bytes_share_one_budget() {
    run(async {
        // 40 MiB in a native Buffer + 40 MiB of QuickJS string > 64 MiB.
        let e = execute_with(
            "async () => { const b = Buffer.alloc(40 << 20); const s = 'y'.repeat(40 << 20); return b.length + s.length; }",
            MEM64,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::MemoryLimit, "{e:?}");
        // Well under the budget both work.
        let ok = execute_with(
            "async () => { const b = Buffer.alloc(20 << 20); const s = 'y'.repeat(20 << 20); return b.length + s.length; }",
            MEM64,
        )
        .await;
        assert_eq!(ok.unwrap(), serde_json::json!(40 << 20));
    });
}

// ---- concurrent invocations in one isolate ---------------------------------------------------

/// One invocation's outcome, logs and reported CPU seconds.
type Ran = (Result<HttpResponse, WorkerError>, Vec<LogEntry>, f64);

async fn fetch_cpu(iso: &Isolate, code: &WorkerCode, url: &str, limits: Limits) -> Ran {
    let mut out = None;
    iso.fetch(
        code,
        get(url),
        invoker(),
        limits,
        None,
        |(r, logs), cpu, _| out = Some((r, logs, cpu)),
    )
    .await;
    out.expect("respond called")
}

/// Requests wait at a gate that opens only when three are inside: run one at a time, they
/// would never get past it (the wall limit would end them).
const GATED: &str = r#"
let waiting = [];
export default {
  async fetch(request) {
    const id = new URL(request.url).searchParams.get("id");
    console.log("start " + id);
    await new Promise((open) => {
      waiting.push(open);
      if (waiting.length === 3) waiting.splice(0).forEach((o) => o());
    });
    await null;
    console.log("end " + id);
    return new Response(id);
  },
};
"#;

#[test]
fn invocations_of_one_worker_interleave_and_keep_their_own_logs() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(GATED);
        let (a, b, c) = tokio::join!(
            fetch_cpu(&iso, &code, "http://w/?id=a", LIMITS),
            fetch_cpu(&iso, &code, "http://w/?id=b", LIMITS),
            fetch_cpu(&iso, &code, "http://w/?id=c", LIMITS),
        );
        for (id, (res, logs, _)) in [("a", a), ("b", b), ("c", c)] {
            assert_eq!(body(&res.unwrap()), id);
            // The third request opened the gate, yet each continuation ran (and logged) as the
            // request that awaited it.
            let messages: Vec<_> = logs.iter().map(|l| l.message.as_str()).collect();
            assert_eq!(messages, [format!("start {id}"), format!("end {id}")]);
        }
        assert!(iso.is_reusable());
    });
}

/// Spends CPU on a fixed amount of work after the gate of [`GATED`].
const GATED_WORK: &str = r#"
let waiting = [];
export default {
  async fetch(request) {
    const n = Number(new URL(request.url).searchParams.get("n"));
    const together = Number(new URL(request.url).searchParams.get("together"));
    await new Promise((open) => {
      waiting.push(open);
      if (waiting.length === together) waiting.splice(0).forEach((o) => o());
    });
    let x = 0;
    for (let i = 0; i < n; i++) { x = (x * 31 + i) % 1000003; if (i % 1000 === 0) await null; }
    return new Response(String(x));
  },
};
"#;

#[test]
fn cpu_time_is_charged_to_the_invocation_whose_code_ran() {
    run(async {
        let roomy = Limits {
            cpu_ms: 10_000,
            wall_ms: 60_000,
            ..LIMITS
        };
        let n = 300_000;
        // Alone: what the work costs (the cheapest of three runs).
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(GATED_WORK);
        let mut alone = f64::MAX;
        for _ in 0..3 {
            let (res, _, cpu) =
                fetch_cpu(&iso, &code, &format!("http://w/?n={n}&together=1"), roomy).await;
            res.unwrap();
            alone = alone.min(cpu);
        }
        assert!(alone > 0.0);
        // Three at once, interleaved at every 1000th iteration, under a CPU limit that one fits
        // in twice but all three together do not: each is charged only its own work.
        let limits = Limits {
            cpu_ms: ((alone * 2.0 * 1000.0) as u64).max(5),
            ..roomy
        };
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let url = format!("http://w/?n={n}&together=3");
        let (a, b, c) = tokio::join!(
            fetch_cpu(&iso, &code, &url, limits),
            fetch_cpu(&iso, &code, &url, limits),
            fetch_cpu(&iso, &code, &url, limits),
        );
        let mut total = 0.0;
        for (res, _, cpu) in [a, b, c] {
            res.unwrap();
            assert!(
                cpu < alone * 2.0,
                "{cpu} s charged for work that costs {alone} s"
            );
            total += cpu;
        }
        assert!(
            total > alone * 2.0,
            "{total} s for three times {alone} s of work"
        );
    });
}

#[test]
fn a_breach_fails_the_others_on_the_isolate_with_a_typed_error_and_discards_it() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"export default {
              async fetch(request) {
                if (request.url.endsWith("/spin")) { while (true) {} }
                await new Promise(() => {}); // waits for ever (for a wall limit far away)
              },
            }"#,
        );
        let limits = Limits {
            wall_ms: 60_000,
            ..LIMITS
        };
        let (waiting, spinning) = tokio::join!(
            fetch_cpu(&iso, &code, "http://w/wait", limits),
            fetch_cpu(&iso, &code, "http://w/spin", limits),
        );
        assert_eq!(spinning.0.unwrap_err().kind, ErrorKind::CpuLimit);
        let e = waiting.0.unwrap_err();
        assert_eq!(e.kind, ErrorKind::IsolateDiscarded, "{e:?}");
        assert!(e.message.contains("retry"), "{e:?}");
        assert!(!iso.is_reusable());
    });
}

#[test]
fn work_left_behind_by_an_ended_invocation_does_not_run_on_another_ones_time() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(
            r#"let ticks = 0;
            export default {
              async fetch(request) {
                if (request.url.endsWith("/leave")) {
                  // Not passed to waitUntil: abandoned when the response is out.
                  (async () => {
                    for (;;) {
                      await new Promise((r) => setTimeout(r, 1));
                      ticks++;
                      console.log("left behind");
                    }
                  })();
                  return new Response("left");
                }
                await new Promise((r) => setTimeout(r, 30));
                return new Response(String(ticks));
              },
            }"#,
        );
        let (res, _, _) = fetch_cpu(&iso, &code, "http://w/leave", LIMITS).await;
        assert_eq!(body(&res.unwrap()), "left");
        let (res, logs, _) = fetch_cpu(&iso, &code, "http://w/count", LIMITS).await;
        let ticks: u64 = body(&res.unwrap()).parse().unwrap();
        // At most the ticks whose timers were set while the first request ran (one, or two if
        // its first timer fired before it ended); left running, 1 ms ticks over 30 ms.
        assert!(ticks <= 2, "the abandoned loop kept running: {ticks} ticks");
        assert!(logs.is_empty(), "{logs:?}");
        assert!(iso.is_reusable());
    });
}

#[test]
fn interleaved_invocations_fetch_as_themselves_within_their_own_subrequest_budgets() {
    run(async {
        let egress = Arc::new(CountingEgress(Default::default()));
        let iso = Isolate::new(egress.clone()).await.unwrap();
        // Three requests in step: each makes its three fetches (the whole budget, LIMITS) only
        // after all three have started, so their fetches interleave.
        let code = worker(
            r#"let waiting = [];
            export default { async fetch() {
                await new Promise((open) => {
                  waiting.push(open);
                  if (waiting.length === 3) waiting.splice(0).forEach((o) => o());
                });
                const seen = [];
                for (let i = 0; i < 3; i++) {
                  const r = await fetch("https://api.example.com/" + i);
                  seen.push(r.headers.get("x-invocation") + "/" + r.headers.get("x-budget"));
                }
                return Response.json(seen);
            } }"#,
        );
        let call = |invocation: u64| {
            let iso = &iso;
            let code = &code;
            async move {
                let mut out = None;
                let invoker = Invoker {
                    invocation,
                    ..invoker()
                };
                iso.fetch(
                    code,
                    get("http://w/"),
                    invoker,
                    LIMITS,
                    None,
                    |(r, _), _, _| out = Some(r),
                )
                .await;
                out.expect("respond called")
            }
        };
        let (a, b, c) = tokio::join!(call(11), call(12), call(13));
        for (id, res) in [(11, a), (12, b), (13, c)] {
            let v: serde_json::Value = serde_json::from_slice(&res.unwrap().body).unwrap();
            assert_eq!(
                v,
                serde_json::json!([format!("{id}/2"), format!("{id}/1"), format!("{id}/0")])
            );
        }
        assert_eq!(egress.0.load(std::sync::atomic::Ordering::SeqCst), 9);
        assert!(iso.is_reusable());
    });
}

/// An egress that answers 200 once the test releases it, and says when it was called.
struct GateEgress {
    called: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Egress for GateEgress {
    fn authorize(&self, _invoker: &Invoker, _request: &EgressRequest) -> Verdict {
        Verdict::Proceed(Authorization {
            rule: None,
            report_only: false,
        })
    }

    fn send(
        &self,
        _invoker: Invoker,
        _request: EgressRequest,
        _authorization: Authorization,
    ) -> BoxFuture<'static, Result<Delivered, EgressError>> {
        self.called.notify_one();
        let release = self.release.clone();
        Box::pin(async move {
            release.notified().await;
            Ok((
                EgressResponse {
                    status: 200,
                    headers: vec![],
                    body: vec![],
                    streamed: false,
                    hops: 0,
                    url: String::new(),
                },
                None,
            ))
        })
    }
}

/// rquickjs wakes only the task that polled the runtime last when a host future (here the
/// egress call of A) makes progress. B polls last and ends before A's upstream answers: A must
/// still be woken (it would otherwise wait for its wall limit, a minute here).
#[test]
fn an_invocation_waiting_on_io_is_woken_after_the_one_that_polled_last_has_ended() {
    run(async {
        let called = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let egress = Arc::new(GateEgress {
            called: called.clone(),
            release: release.clone(),
        });
        let iso = Rc::new(Isolate::new(egress).await.unwrap());
        let code = Rc::new(worker(
            r#"export default { async fetch(request) {
                if (request.url.endsWith("/io")) {
                  const r = await fetch("https://api.example.com/");
                  return new Response("io " + r.status);
                }
                return new Response("quick");
            } }"#,
        ));
        let limits = Limits {
            wall_ms: 60_000,
            ..LIMITS
        };
        let call = |url: &'static str| {
            let (iso, code) = (iso.clone(), code.clone());
            tokio::task::spawn_local(async move { fetch_cpu(&iso, &code, url, limits).await })
        };
        let a = call("http://w/io");
        // A's fetch() is with the egress; A's task waits on the runtime.
        called.notified().await;
        let (res, _, _) = call("http://w/quick").await.unwrap();
        assert_eq!(body(&res.unwrap()), "quick");
        release.notify_one();
        let (res, _, _) = tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("the waiting invocation was never woken")
            .unwrap();
        assert_eq!(body(&res.unwrap()), "io 200");
    });
}

/// A suspended coroutine reachable only through a closure that captured one of its locals stays
/// alive through the cycle collector (QuickJS-ng's use-after-free fixed upstream in 7955cfd,
/// backported in `vendor/rquickjs-sys/security-backports.patch`): before, the collector freed the
/// async function's (or generator's) frame while the closure still pointed into it.
#[test]
fn suspended_coroutine_kept_by_a_closure_survives_the_collector() {
    run(async {
        let src = r#"export default { async fetch() {
            let leakedAsync = null;
            let leakedGen = null;
            (function () {
                async function step() {
                    const d = Promise.withResolvers();
                    leakedAsync = () => d;
                    await d.promise;
                }
                step();
            })();
            (function () {
                let g;
                function* gen() { const o = { tag: "frame" }; o.g = g; leakedGen = () => o; yield 1; yield 2; }
                g = gen();
                g.next();
                g = null;
            })();
            // Enough retained allocation for the cycle collector to run several times.
            const keep = [];
            for (let i = 0; i < 60000; i++) keep.push({ i, s: "x" + i });
            const d = leakedAsync();
            const o = leakedGen();
            const next = o.g.next();
            return new Response([typeof d.resolve, o.tag, next.value, keep.length].join(" "));
        } };"#;
        let limits = Limits {
            cpu_ms: 2_000,
            memory_mb: 64,
            wall_ms: 10_000,
            ..LIMITS
        };
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, _) = fetch_with(&iso, &worker(src), get("http://w/"), limits).await;
        assert_eq!(
            body(&res.expect("the Worker answers")),
            "function frame 2 60000"
        );
        assert!(iso.is_reusable());
    });
}

/// Many client-tool calls of one execute failing at once, the snippet returning while others are
/// still being refused: the isolate must survive and say so. (With the client-tool glue moved into
/// a part loaded on first use, this crashed the isolate: the QuickJS-ng use-after-free of
/// `suspended_coroutine_kept_by_a_closure_survives_the_collector`, the snippet's closures sharing
/// its `refused` array.)
#[test]
fn concurrent_client_tool_errors() {
    run(async {
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let mut inv = invoker();
        inv.tools = vec![crate::api::ClientTools {
            namespace: "codemode".into(),
            tools: vec![("f".into(), "f".into())],
        }];
        let src = r#"async () => {
            const refused = [];
            let enough;
            const six = new Promise((resolve) => { enough = resolve; });
            for (let i = 0; i < 70; i++) {
                codemode.f({ i }).catch((e) => { refused.push(e.code); if (refused.length === 6) enough(); });
            }
            await six;
            return refused;
        }"#;
        let (res, ..) = iso.execute(src, &serde_json::json!({}), inv, LIMITS).await;
        let codes = res.expect("the execute ends with its result");
        let codes = codes.as_array().expect("an array");
        assert!(codes.len() >= 6, "{codes:?}");
        assert!(codes.iter().all(|c| c == "API_NOT_FOUND"), "{codes:?}");
        assert!(iso.is_reusable());
    });
}

/// The glue a Worker does not use is not loaded: a plain fetch handler loads no part, and each
/// part is loaded by the first use of what it serves.
#[test]
fn parts_load_on_first_use_only() {
    run(async {
        let cases: [(&str, &[&str]); 18] = [
            ("return new Response('hello', { headers: { 'x-a': '1' } });", &[]),
            ("return new Response(await request.text() + request.method);", &[]),
            ("return new Response(String(Buffer.alloc(4).length));", &["buffer", "guards"]),
            ("return new Response(typeof Buffer);", &["buffer"]),
            ("return new Response(atob('aGk='));", &["guards"]),
            ("return new Response(String(new Event('x').type));", &["eventclasses", "events"]),
            ("return new Response(String(request.signal));", &[]),
            ("const c = new AbortController(); return new Response(String(new Request('http://x/', { signal: c.signal }).signal.aborted));", &["eventclasses", "events"]),
            ("return new Response(typeof fetch);", &["outbound"]),
            (
                "const f = await new Request('http://x/', { method: 'POST', body: 'a=1' , headers: { 'content-type': 'application/x-www-form-urlencoded' } }).formData(); return new Response(f.get('a'));",
                &["forms", "formdata", "url"],
            ),
            ("return new Response(new URL('http://x/a').pathname);", &["url"]),
            ("return new Response(String(new URLSearchParams('a=1').get('a')));", &["url"]),
            ("return new Response(Response.redirect('http://x/').headers.get('location'));", &["url"]),
            ("return new Response(typeof new FormData().append);", &["formdata"]),
            ("return new Response(typeof performance.now());", &["performance"]),
            ("return new Response(typeof ApiError);", &["apis"]),
            ("Error.prepareStackTrace = (e, s) => s.length; return new Response(typeof new Error('x').stack);", &["lazy"]),
            (
                "return new Response(typeof new Response('x').body.getReader);",
                &["bodies", "streams", "lazy"],
            ),
        ];
        for (body, parts) in cases {
            let src = format!("export default {{ async fetch(request) {{ {body} }} }};");
            let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
            let (res, _) = fetch_with(&iso, &worker(&src), get("http://w/"), LIMITS).await;
            assert_eq!(res.expect(body).status, 200, "{body}");
            assert_eq!(*iso.state.parts.borrow(), parts.to_vec(), "{body}");
        }
    });
}

/// The JS layer's bytecode carries no names of local or closure variables (build.rs writes it
/// with `JS_WRITE_OBJ_STRIP_LOCALS`, isogate's patch to QuickJS-ng): every name would be an atom
/// in every isolate, and a compiled function reaches its variables by index. What a Worker can
/// see stays: function names (`.name`, stack frames) and property names.
#[test]
fn the_js_layers_bytecode_carries_no_local_names() {
    let has = |bytes: &[u8], name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
    // A module-level const of the bootstrap, a parameter, a local of a part.
    assert!(!has(BOOTSTRAP_BYTECODE, "HeadersSet"));
    assert!(!has(BOOTSTRAP_BYTECODE, "nativeArrayBuffer"));
    assert!(!has(LAZY_BYTECODE, "RSA_MODULUS_LENGTHS"));
    // A function's own name and a property name.
    assert!(has(BOOTSTRAP_BYTECODE, "isHttpWhitespace"));
    assert!(has(BOOTSTRAP_BYTECODE, "getRandomValues"));
    run(async {
        let (res, _) = fetch_once(
            "export default { async fetch() { return new Response([setTimeout.name, crypto.getRandomValues.name, new Headers([['a', 'b']]).get('a')].join()); } };",
        )
        .await;
        assert_eq!(body(&res.unwrap()), "setTimeout,getRandomValues,b");
    });
}

/// The JS layer's functions keep no table of their arguments and locals (build.rs writes the
/// bytecode with `JS_WRITE_OBJ_STRIP_LOCALS`, isogate's patch to QuickJS-ng, which leaves the
/// tables out as QuickJS does for stripped code: ~10 KB of every isolate), except a function
/// that calls `eval()` directly, whose eval'd code is compiled against its table.
#[test]
fn the_js_layers_functions_keep_no_variable_table_unless_they_call_eval() {
    let src = "export function sum(a, b, c) { let d = a + b; let e = d * c; const f = [d, e]; return f.join(); }
        export function evaluating() { let unused = 40; return eval('1 + 1'); }";
    // What loading the bytecode costs in function memory, and what the two functions answer.
    let load = |bytes: &[u8]| -> (i64, String) {
        let rt = rquickjs::Runtime::new().unwrap();
        let ctx = rquickjs::Context::full(&rt).unwrap();
        ctx.with(|ctx| {
            // SAFETY: bytecode this test had the linked QuickJS write just now.
            let module = unsafe { Module::load(ctx.clone(), bytes) }.unwrap();
            let (module, promise) = module.eval().unwrap();
            promise.finish::<()>().unwrap();
            let sum: Function = module.get("sum").unwrap();
            let evaluating: Function = module.get("evaluating").unwrap();
            let answers = format!(
                "{};{}",
                sum.call::<_, String>((1, 2, 3)).unwrap(),
                evaluating.call::<_, i32>(()).unwrap()
            );
            // SAFETY: an all-zero JSMemoryUsage (integers) is valid; JS_ComputeMemoryUsage fills it
            // from the live runtime of `ctx`.
            let usage = unsafe {
                let mut usage: rquickjs::qjs::JSMemoryUsage = std::mem::zeroed();
                let rt = rquickjs::qjs::JS_GetRuntime(ctx.as_raw().as_ptr());
                rquickjs::qjs::JS_ComputeMemoryUsage(rt, &mut usage);
                usage
            };
            (usage.js_func_size, answers)
        })
    };
    let flags = jslayer::JS_LAYER_WRITE_FLAGS;
    let (stripped, answers) = load(&jslayer::write_js_layer_bytecode("t", src, flags));
    let plain_flags = flags & !jslayer::JS_WRITE_OBJ_STRIP_LOCALS;
    let (plain, plain_answers) = load(&jslayer::write_js_layer_bytecode("t", src, plain_flags));
    assert_eq!(answers, "3,9;2");
    assert_eq!(plain_answers, answers);
    // sum's six entries (a, b, c, d, e, f) of 16 bytes each are gone; evaluating's two stay.
    assert_eq!(plain - stripped, 6 * 16, "{plain} against {stripped}");
}

/// `Buffer` is made when a Worker first reads it (llrt_buffer's init, which also defines Blob,
/// File, atob and btoa again): it extends the intrinsic Uint8Array whatever the Worker did to
/// the global, its allocating statics are the guarded stubs, and the globals and prototype
/// `constructor`s that init touches stay what they were, the bootstrap's guarded ones or the
/// Worker's own (as the globals llrt_crypto's init assigns do, on the first read of
/// `crypto.subtle`).
#[test]
fn buffer_is_made_on_first_use_and_leaves_the_other_globals_as_they_were() {
    run(async {
        let src = r#"export default { async fetch() {
            const RealUint8Array = Uint8Array;
            const { Blob: B0, File: F0, btoa: btoa0 } = globalThis;
            globalThis.Uint8Array = class Fake {};
            const myAtob = () => "mine";
            globalThis.atob = myAtob;
            const out = [
                Object.getPrototypeOf(Buffer.prototype) === RealUint8Array.prototype,
                globalThis.Uint8Array !== RealUint8Array,
                atob === myAtob,
                Blob === B0 && File === F0 && btoa === btoa0,
                Blob.prototype.constructor === Blob && File.prototype.constructor === File,
                (() => { try { Buffer.alloc(-1); } catch (e) { return e.message.includes('"size" is out of range'); } })(),
                Buffer.from("hi").toString("hex"),
                Buffer.concat([Buffer.from("a"), Buffer.from("b")]).toString(),
                Buffer.alloc(3, "x").toString(),
                new Blob(["ab"]).size,
            ];
            return new Response(out.join());
        } };"#;
        let (res, _) = fetch_once(src).await;
        assert_eq!(
            body(&res.unwrap()),
            "true,true,true,true,true,true,6869,ab,xxx,2"
        );
        // A property the Worker deleted stays deleted.
        let src = r#"export default { async fetch() {
            delete Blob.prototype.constructor;
            delete globalThis.btoa;
            return new Response([typeof Buffer.from, Object.hasOwn(Blob.prototype, "constructor"), typeof btoa].join());
        } };"#;
        let (res, _) = fetch_once(src).await;
        assert_eq!(body(&res.unwrap()), "function,false,undefined");
        // The same holds for llrt_crypto's init, run on the first read of crypto.subtle.
        let src = r#"export default { async fetch() {
            const ours = crypto;
            const mine = { mine: true };
            globalThis.crypto = mine;
            const subtle = ours.subtle;
            return new Response([globalThis.crypto === mine, typeof subtle.digest, typeof Crypto, typeof CryptoKey].join());
        } };"#;
        let (res, _) = fetch_once(src).await;
        assert_eq!(body(&res.unwrap()), "true,function,undefined,function");
    });
}

/// LLRT's event classes are made when a Worker first reaches one of them (llrt_events' and
/// llrt_abort's init define all five globals): a global the Worker assigned before stays its
/// own, the classes work with the DOM semantics of events.js, and `AbortSignal.timeout` runs on
/// isogate's timers.
#[test]
fn event_classes_are_made_on_first_use_and_leave_the_workers_globals() {
    run(async {
        let src = r#"export default { async fetch() {
            class MyEvent {}
            globalThis.Event = MyEvent;
            const c = new AbortController();
            const out = [
                Event === MyEvent,
                new EventTarget() instanceof EventTarget,
                c.signal instanceof AbortSignal,
                typeof CustomEvent,
            ];
            const t = AbortSignal.timeout(5);
            await new Promise((resolve) => t.addEventListener("abort", resolve, { once: true }));
            out.push(t.aborted, t.reason.name);
            let heard = 0;
            c.signal.addEventListener("abort", () => heard++);
            c.signal.addEventListener("abort", null);
            c.abort("x");
            out.push(c.signal.aborted, c.signal.reason, heard);
            return new Response(out.join());
        } };"#;
        let (res, _) = fetch_once(src).await;
        assert_eq!(
            body(&res.unwrap()),
            "true,true,true,function,true,TimeoutError,true,x,1"
        );
    });
}

/// URL and URLSearchParams, FormData and `performance` are made when a Worker (or the glue)
/// first reaches one of them: a global the Worker assigned before stays its own, the glue that
/// uses them (Response.redirect, formData()) works whether or not the Worker made them, and the
/// classes are LLRT's own (Request and Response take their instances as bodies and URLs).
#[test]
fn url_formdata_and_performance_are_made_on_first_use_and_leave_the_workers_globals() {
    run(async {
        let src = r#"export default { async fetch() {
            class MyURL {}
            globalThis.URL = MyURL;
            const out = [URL === MyURL];
            // The glue uses the native class, whatever the global holds.
            out.push(Response.redirect("http://x/a b").headers.get("location"));
            const form = await new Request("http://x/", {
                method: "POST",
                body: "a=1&b=%20",
                headers: { "content-type": "application/x-www-form-urlencoded" },
            }).formData();
            out.push(form instanceof FormData, form.get("b") === " ");
            const params = new URLSearchParams({ q: "1" });
            out.push(URL === MyURL, await new Request("http://x/", { method: "POST", body: params }).text());
            const fd = new FormData();
            fd.append("k", "v");
            out.push((await new Response(fd).text()).includes('name="k"'));
            out.push(typeof performance.now(), performance.now() >= 0);
            return new Response(out.join());
        } };"#;
        let (res, _) = fetch_once(src).await;
        assert_eq!(
            body(&res.unwrap()),
            "true,http://x/a%20b,true,true,true,q=1,true,number,true"
        );
    });
}

/// No collection runs while an isolate is built, which loses nothing because the start leaves
/// no garbage a collection would free; collections resume once it is built: a cached Worker
/// whose requests each leave megabytes of cycles behind keeps serving within a memory limit that
/// the uncollected cycles of a few requests would breach.
#[test]
fn cycles_left_by_requests_are_collected_once_the_isolate_is_built() {
    run(async {
        let fresh = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (before, after) = fresh.collect().await;
        assert!(before > 0);
        assert_eq!(before, after, "the start left garbage for the collector");
        drop(fresh);

        let src = r#"export default { async fetch() {
            for (let i = 0; i < 20000; i++) {
                const a = { i };
                const b = { a };
                a.b = b;
            }
            return new Response("ok");
        } };"#;
        let limits = Limits {
            cpu_ms: 5_000,
            wall_ms: 20_000,
            memory_mb: 8,
            ..LIMITS
        };
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let code = worker(src);
        for n in 0..12 {
            let (res, _) = fetch_with(&iso, &code, get("http://w/"), limits).await;
            let res = res.unwrap_or_else(|e| panic!("request {n}: {e:?}"));
            assert_eq!(body(&res), "ok");
            assert!(iso.is_reusable(), "request {n} left the isolate unfit");
        }
    });
}

/// The globals made on first use: an accessor until then, which a Worker may assign or redefine
/// (its value then stays the Worker's, also when the part that serves the global loads); the
/// first read loads the part and turns every global it serves into a plain data property.
#[test]
fn lazy_globals_are_the_workers_to_replace_and_settle_on_first_read() {
    run(async {
        let src = r#"export default { async fetch() {
            const out = [];
            const kind = (name) => {
                const d = Object.getOwnPropertyDescriptor(globalThis, name);
                return d === undefined ? "none" : "value" in d ? `data:${typeof d.value}:${d.writable}:${d.enumerable}` : "accessor";
            };
            out.push(kind("WritableStream"));
            globalThis.URLPattern = 5;
            out.push(kind("URLPattern"), URLPattern);
            Object.defineProperty(globalThis, "TransformStream", { get() { return 7; }, configurable: true });
            out.push(typeof ReadableStream);
            out.push(kind("ReadableStream"), kind("WritableStream"), kind("CompressionStream"), TransformStream);
            CountQueuingStrategy = "mine";
            out.push(CountQueuingStrategy);
            return new Response(out.join(" "));
        } };"#;
        let iso = Isolate::new(Arc::new(DisabledEgress)).await.unwrap();
        let (res, _) = fetch_with(&iso, &worker(src), get("http://w/"), LIMITS).await;
        assert_eq!(
            body(&res.unwrap()),
            "accessor data:number:true:false 5 function data:function:true:false \
             data:function:true:false data:function:true:false 7 mine"
        );
        assert_eq!(*iso.state.parts.borrow(), vec!["bodies", "streams", "lazy"]);
    });
}
