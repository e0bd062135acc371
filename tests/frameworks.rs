//! Real npm Worker apps on isogate: a hono app and an itty-router app, bundled from npm with
//! esbuild (`tests/frameworks/`: sources, the pinned package.json/lock, `build.mjs`, and the
//! committed bundles in `dist/`), stored with `PUT /v1/workers/{id}` and called through `get()`
//! (`/w/{id}/…`), and sent whole with `load()` — through the real gateway and its worker
//! processes. Requests that carry an `Authorization` header for the app (basic/bearer auth,
//! JWT) go through `load()`: on `/w/` routes that header is the tenant's API key, which the
//! gateway keeps to itself.

mod common;

use common::upstream::{Answer, Upstream};
use common::{worker, Gateway, ALPHA_KEY};
use serde_json::{json, Value};
use std::io::Read;

const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 10, idle_ttl_s: 300";
const HONO: &str = include_str!("frameworks/dist/hono-app.js");
const ITTY: &str = include_str!("frameworks/dist/itty-app.js");

fn gateway() -> Gateway {
    let limits = "cpu_ms: 500, memory_mb: 64, wall_ms: 10000, subrequests: 5";
    Gateway::start(POOL, &common::tenant_yaml("alpha", ALPHA_KEY, limits))
}

/// Tenant `alpha` with `limits` and one egress rule `name` for GET to the loopback `port` (a
/// test's upstream).
fn tenant_with_upstream(limits: &str, port: u16, name: &str) -> String {
    format!(
        "{}    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n          methods: [GET]\n          name: {name}\n",
        common::tenant_yaml("alpha", ALPHA_KEY, limits)
    )
}

/// `GET /w/{id}/{path}` with extra headers.
fn get(g: &Gateway, id: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut req = g
        .client
        .get(g.url(&format!("/w/{id}/{path}")))
        .bearer_auth(ALPHA_KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().expect("request")
}

/// `load()` of `src` with one request.
fn load(g: &Gateway, src: &str, request: Value) -> reqwest::blocking::Response {
    g.load(ALPHA_KEY, &worker(src), Some(request))
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn hono_app_runs_through_get_and_load() {
    let g = gateway();
    assert_eq!(g.put(ALPHA_KEY, "hono", HONO), 201);

    // Routing, params, query, JSON, 404 and error handlers: through get() (a cached Worker).
    let r = get(&g, "hono", "", &[]);
    let status = r.status();
    assert_eq!(
        (status.as_u16(), r.text().unwrap()),
        (200, "hono on isogate".to_string())
    );
    let v: Value = get(&g, "hono", "users/42?q=x", &[]).json().unwrap();
    assert_eq!(v, json!({"id": "42", "q": "x"}));
    let r = get(&g, "hono", "nowhere", &[]);
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"error": "not found", "path": "/nowhere"})
    );
    let r = get(&g, "hono", "boom", &[]);
    assert_eq!(r.status(), 418);
    assert_eq!(r.text().unwrap(), "teapot");

    // The proxy pattern keeps status, headers and body.
    let r = get(&g, "hono", "proxy", &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-proxied"), "1");
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"id": "42", "q": "proxied"})
    );

    // etag (crypto.subtle SHA-1), and a conditional request answered 304.
    let r = get(&g, "hono", "etag/doc", &[]);
    assert_eq!(r.status(), 200);
    let tag = header(&r, "etag");
    assert!(
        tag.starts_with("W/\"") || tag.starts_with('"'),
        "etag {tag:?}"
    );
    assert!(tag.len() > 20, "a digest, not empty: {tag:?}");
    let r = get(&g, "hono", "etag/doc", &[("if-none-match", &tag)]);
    assert_eq!(r.status(), 304);

    // cors: preflight and the simple response.
    let r = g
        .client
        .request(reqwest::Method::OPTIONS, g.url("/w/hono/cors/data"))
        .bearer_auth(ALPHA_KEY)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(header(&r, "access-control-allow-methods").contains("POST"));
    let r = get(
        &g,
        "hono",
        "cors/data",
        &[("origin", "https://app.example")],
    );
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );

    // compress (CompressionStream): gzip on the wire, the same text once decoded.
    let r = g
        .client
        .get(g.url("/w/hono/compress/big"))
        .bearer_auth(ALPHA_KEY)
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let packed = r.bytes().unwrap();
    assert!(packed.len() < 2000, "compressed: {} bytes", packed.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert_eq!(text, "compress me ".repeat(2000));

    // prettyJSON on ?pretty.
    let r = get(&g, "hono", "pretty/obj?pretty", &[]);
    assert_eq!(
        r.text().unwrap(),
        "{\n  \"a\": 1,\n  \"b\": [\n    true\n  ]\n}"
    );

    // Signed cookies (HMAC): a cookie set by the app verifies; a tampered one does not.
    let r = get(&g, "hono", "cookie/set", &[]);
    let cookie = header(&r, "set-cookie");
    assert!(cookie.starts_with("session=agent-7."), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let v: Value = get(&g, "hono", "cookie/get", &[("cookie", &pair)])
        .json()
        .unwrap();
    assert_eq!(v, json!({"session": "agent-7"}));
    let forged = pair.replace("agent-7", "agent-8");
    let v: Value = get(&g, "hono", "cookie/get", &[("cookie", &forged)])
        .json()
        .unwrap();
    assert_eq!(v, json!({"session": "tampered"}));

    // Streaming helpers: the Worker returns a stream; the client gets all of it.
    assert_eq!(
        get(&g, "hono", "stream", &[]).text().unwrap(),
        "one two three"
    );
    assert_eq!(
        get(&g, "hono", "stream-text", &[]).text().unwrap(),
        "line 1\nline 2\n"
    );
    let r = get(&g, "hono", "sse", &[]);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(
        r.text().unwrap(),
        "event: tick\ndata: n=1\nid: 1\n\nevent: tick\ndata: n=2\nid: 2\n\nevent: tick\ndata: n=3\nid: 3\n\n"
    );

    // Through load(): bodies, forms, and the Authorization-based middleware.
    let r = load(
        &g,
        HONO,
        json!({"method": "POST", "url": "/echo", "headers": {"content-type": "application/json"}, "body": "{\"n\":1}"}),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"got": {"n": 1}, "type": "application/json"})
    );
    let r = load(
        &g,
        HONO,
        json!({"method": "POST", "url": "/form", "headers": {"content-type": "application/x-www-form-urlencoded"}, "body": "a=1&b=two"}),
    );
    assert_eq!(r.json::<Value>().unwrap(), json!({"a": "1", "b": "two"}));

    let admin = |auth: Option<&str>| {
        let mut headers = json!({});
        if let Some(a) = auth {
            headers["authorization"] = json!(a);
        }
        load(&g, HONO, json!({"url": "/admin/panel", "headers": headers}))
    };
    assert_eq!(admin(None).status(), 401);
    assert_eq!(admin(Some("Basic YWRtaW46d3Jvbmc=")).status(), 401); // admin:wrong
    let r = admin(Some("Basic YWRtaW46czNjcmV0")); // admin:s3cret
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "welcome, admin");

    let items = |auth: &str| {
        load(
            &g,
            HONO,
            json!({"url": "/api/items", "headers": {"authorization": auth}}),
        )
    };
    assert_eq!(items("Bearer nope").status(), 401);
    let r = items("Bearer fixture-token");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!([{"id": 1}, {"id": 2}]));

    // JWT (HS256 via crypto.subtle): a token the app signed verifies; a forged one does not.
    let token = get(&g, "hono", "jwt-token", &[]).text().unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let me = |t: &str| {
        load(
            &g,
            HONO,
            json!({"url": "/jwt/me", "headers": {"authorization": format!("Bearer {t}")}}),
        )
    };
    let r = me(&token);
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({"sub": "agent-7"}));
    // Change the signature's first character: its last one carries padding bits a
    // base64url decoder may ignore, so changing it can leave the signature intact.
    let sig_at = token.rfind('.').unwrap() + 1;
    let first = &token[sig_at..sig_at + 1];
    let forged = format!(
        "{}{}{}",
        &token[..sig_at],
        if first == "A" { "B" } else { "A" },
        &token[sig_at + 1..]
    );
    assert_eq!(me(&forged).status(), 401);
}

#[test]
fn itty_router_app_runs_through_get_and_load() {
    let g = gateway();
    assert_eq!(g.put(ALPHA_KEY, "itty", ITTY), 201);
    let r = get(&g, "itty", "", &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "itty on isogate");
    let r = get(
        &g,
        "itty",
        "items/7?verbose=yes",
        &[("origin", "https://app.example")],
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"id": "7", "verbose": "yes"})
    );
    assert_eq!(get(&g, "itty", "text", &[]).text().unwrap(), "plain");
    let r = get(&g, "itty", "teapot", &[]);
    assert_eq!(r.status(), 418);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"status": 418, "error": "short and stout"})
    );
    assert_eq!(get(&g, "itty", "nobody", &[]).status(), 204);
    let r = get(&g, "itty", "missing", &[]);
    assert_eq!(r.status(), 404);
    let r = get(&g, "itty", "throws", &[]);
    assert_eq!(r.status(), 500);
    assert_eq!(r.json::<Value>().unwrap()["error"], "kaboom");

    let r = load(
        &g,
        ITTY,
        json!({"method": "POST", "url": "/items", "headers": {"content-type": "application/json"}, "body": "{\"name\":\"x\"}"}),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"created": {"name": "x"}})
    );
}

/// A Worker's streamed Response reaches the client while the Worker is still running: the
/// Worker sends a first chunk, then waits on an upstream request that the test only releases
/// after it has read that chunk; then the rest, the chunked end, and the connection is reused.
/// A stream that errors midway leaves the client a body without its end.
#[test]
fn streamed_responses_reach_the_client_before_the_worker_ends() {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let upstream = Upstream::start(move |_| {
        let _ = gate.lock().unwrap().recv();
        Answer::json(200, &json!({"go": true}))
    });
    let tenants = tenant_with_upstream(
        "cpu_ms: 500, memory_mb: 64, wall_ms: 20000, subrequests: 5",
        upstream.port,
        "gate",
    );
    let g = Gateway::start(POOL, &tenants);
    let src = format!(
        r#"export default {{ async fetch(request) {{
            const enc = new TextEncoder();
            const broken = new URL(request.url).pathname === "/broken";
            let step = 0;
            return new Response(new ReadableStream({{
                async pull(c) {{
                    step++;
                    if (step === 1) {{ c.enqueue(enc.encode("first;")); return; }}
                    if (step === 2) {{
                        if (broken) {{ c.error(new Error("broke")); return; }}
                        const r = await fetch("{}");
                        c.enqueue(enc.encode("after-gate:" + (await r.json()).go + ";"));
                        return;
                    }}
                    c.close();
                }},
            }}), {{ headers: {{ "content-type": "text/plain" }} }});
        }} }}"#,
        upstream.url("/gate")
    );
    assert_eq!(g.put(ALPHA_KEY, "streamer", &src), 201);

    use std::io::{BufRead, BufReader, Write};
    let addr = g
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let request = |w: &mut std::net::TcpStream, path: &str| {
        write!(
            w,
            "GET /w/streamer/{path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALPHA_KEY}\r\n\r\n"
        )
        .unwrap();
    };
    let head = |r: &mut BufReader<std::net::TcpStream>| {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                return lines;
            }
            lines.push(line.trim_end().to_ascii_lowercase());
        }
    };
    let chunk = |r: &mut BufReader<std::net::TcpStream>| -> Option<String> {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap() == 0 {
            return None;
        }
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut data = vec![0; n + 2];
        std::io::Read::read_exact(r, &mut data).unwrap();
        data.truncate(n);
        Some(String::from_utf8(data).unwrap())
    };

    request(&mut writer, "ok");
    let lines = head(&mut reader);
    assert_eq!(lines[0], "http/1.1 200 ok");
    assert!(
        lines.contains(&"transfer-encoding: chunked".to_string()),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("content-length")),
        "{lines:?}"
    );
    // The Worker is now blocked on the gate: this chunk was sent before it finished.
    assert_eq!(chunk(&mut reader).as_deref(), Some("first;"));
    release.send(()).unwrap();
    assert_eq!(chunk(&mut reader).as_deref(), Some("after-gate:true;"));
    assert_eq!(
        chunk(&mut reader).as_deref(),
        Some(""),
        "the terminating chunk (and its CRLF)"
    );

    // Same connection: a stream that breaks gets no terminating chunk and the connection closes.
    request(&mut writer, "broken");
    let lines = head(&mut reader);
    assert_eq!(lines[0], "http/1.1 200 ok");
    assert_eq!(chunk(&mut reader).as_deref(), Some("first;"));
    assert_eq!(
        chunk(&mut reader),
        None,
        "closed without the terminating chunk"
    );
}

/// Requests to one cached Worker interleave at their await points (as on workerd): four at once,
/// each waiting on an upstream that answers only when all four have arrived, all complete. One
/// at a time, each would wait alone until the upstream gives up on it.
#[test]
fn requests_to_one_cached_worker_run_concurrently() {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;
    const TOGETHER: usize = 4;
    let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
    let barrier = arrived.clone();
    let upstream = Upstream::start(move |_| {
        let (count, all_in) = &*barrier;
        let mut n = count.lock().unwrap();
        *n += 1;
        all_in.notify_all();
        let (n, timeout) = all_in
            .wait_timeout_while(n, Duration::from_secs(20), |n| *n < TOGETHER)
            .unwrap();
        drop(n);
        Answer::json(200, &json!({"together": !timeout.timed_out()}))
    });
    let tenants = tenant_with_upstream(
        "cpu_ms: 500, memory_mb: 64, wall_ms: 30000, subrequests: 5",
        upstream.port,
        "barrier",
    );
    let g = Gateway::start(POOL, &tenants);
    let src = format!(
        r#"export default {{ async fetch(request) {{
            const id = new URL(request.url).searchParams.get("id");
            console.log("request " + id);
            const r = await fetch("{}");
            return Response.json({{ id, together: (await r.json()).together }});
        }} }}"#,
        upstream.url("/barrier")
    );
    assert_eq!(g.put(ALPHA_KEY, "shared", &src), 201);
    let answers: Vec<Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..TOGETHER)
            .map(|i| {
                let g = &g;
                s.spawn(move || get(g, "shared", &format!("?id={i}"), &[]).json::<Value>())
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap().unwrap())
            .collect()
    });
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &json!({"id": i.to_string(), "together": true}));
    }
}

/// `limits.max_concurrent_requests` bounds how many requests one cached Worker runs at once;
/// the others wait for a turn and then run.
#[test]
fn max_concurrent_requests_bounds_a_workers_interleaving() {
    let limits =
        "cpu_ms: 500, memory_mb: 64, wall_ms: 10000, subrequests: 5, max_concurrent_requests: 2";
    let g = Gateway::start(POOL, &common::tenant_yaml("alpha", ALPHA_KEY, limits));
    let src = r#"let inside = 0, peak = 0;
        export default { async fetch() {
            inside++;
            peak = Math.max(peak, inside);
            await new Promise((r) => setTimeout(r, 1000));
            inside--;
            return new Response(String(peak));
        } }"#;
    assert_eq!(g.put(ALPHA_KEY, "bounded", src), 201);
    let peaks: Vec<u32> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let g = &g;
                s.spawn(move || {
                    let r = get(g, "bounded", "", &[]);
                    assert_eq!(r.status(), 200);
                    r.text().unwrap().parse::<u32>().unwrap()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(peaks.iter().max(), Some(&2), "{peaks:?}");
}

/// A limit breach by one request discards the isolate it shares with others: they end at once
/// with `503 isolate_discarded` (retry), not at their own limits; the next request loads the
/// Worker afresh.
#[test]
fn a_breach_discards_the_shared_isolate_and_fails_the_others_with_a_retryable_error() {
    use std::sync::{mpsc, Mutex};
    let (arrived_tx, arrived) = mpsc::channel::<()>();
    let (release, held) = mpsc::channel::<()>();
    let (arrived_tx, held) = (Mutex::new(arrived_tx), Mutex::new(held));
    let upstream = Upstream::start(move |_| {
        let _ = arrived_tx.lock().unwrap().send(());
        let _ = held.lock().unwrap().recv();
        Answer::json(200, &json!({}))
    });
    let tenants = tenant_with_upstream(
        "cpu_ms: 100, memory_mb: 64, wall_ms: 30000, subrequests: 5",
        upstream.port,
        "held",
    );
    let g = Gateway::start(POOL, &tenants);
    let src = format!(
        r#"let served = 0;
        export default {{ async fetch(request) {{
            served++;
            const path = new URL(request.url).pathname;
            if (path === "/spin") {{ for (;;) {{}} }}
            if (path === "/wait") {{ await fetch("{}"); }}
            return new Response("served " + served);
        }} }}"#,
        upstream.url("/held")
    );
    assert_eq!(g.put(ALPHA_KEY, "shared", &src), 201);
    let (waited, spun) = std::thread::scope(|s| {
        let waiting = s.spawn(|| get(&g, "shared", "wait", &[]));
        // The waiting request is in the isolate (its upstream call arrived) before one spins.
        arrived
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the waiting request reached its upstream");
        let spun = get(&g, "shared", "spin", &[]);
        (waiting.join().unwrap(), spun)
    });
    assert_eq!(spun.status(), 503);
    assert_eq!(spun.json::<Value>().unwrap()["error"]["kind"], "cpu_limit");
    assert_eq!(waited.status(), 503);
    assert_eq!(header(&waited, "retry-after"), "1");
    let v: Value = waited.json().unwrap();
    assert_eq!(v["error"]["kind"], "isolate_discarded", "{v}");
    drop(release);
    // The Worker's next request loads it into a new isolate (the old one served two).
    let r = get(&g, "shared", "", &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "served 1");
}
