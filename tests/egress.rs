//! Egress end to end: Workers in the real gateway call real HTTP servers on loopback through
//! the policy, the SSRF guard, rate limits and credential injection. Vault-backed credentials
//! are tested against a real OpenBao server in `tests/vault.rs`.

mod common;

use common::upstream::{echo, Answer, Upstream};
use common::{sha256_hex, worker, Gateway};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const KEY: &str = "egress-key";
const TOKEN: &str = "tok-Zq8-very-secret-4711";
const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";

fn tenant(name: &str, key: &str, limits: &str, egress: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ {limits} }}\n    egress:\n{egress}",
        sha256_hex(key)
    )
}

/// Runs `body` (the inside of an async fetch handler) as a load() Worker; returns status + JSON.
fn run(g: &Gateway, key: &str, body: &str) -> (u16, Value) {
    let code = worker(&format!(
        "export default {{ async fetch(request, env) {{ {body} }} }}"
    ));
    let r = g.load(key, &code, None);
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A Worker body that fetches `url` and returns what it got (or the error).
fn fetch_body(url: &str, init: &str) -> String {
    format!(
        r#"try {{
            const r = await fetch("{url}", {init});
            return Response.json({{ status: r.status, url: r.url, redirected: r.redirected, headers: Object.fromEntries(r.headers), text: await r.text() }});
        }} catch (e) {{
            return Response.json({{ error: e.name + ": " + e.message }});
        }}"#
    )
}

struct Setup {
    g: Gateway,
    echo: Upstream,
    other: Upstream,
    _redirect: Upstream,
    redirect_port: u16,
}

fn setup(mode: &str) -> Setup {
    let echo = echo();
    let other = common::upstream::echo();
    let other_port = other.port;
    let echo_port = echo.port;
    // Redirects to the echo server (same origin as the rule? no: another port) or to `other`.
    let redirect = Upstream::start(move |seen| {
        let to = if seen.target.starts_with("/cross") {
            format!("http://127.0.0.1:{other_port}/landed")
        } else if seen.target.starts_with("/loop") {
            "/loop".to_string()
        } else {
            format!("http://127.0.0.1:{echo_port}/api/landed")
        };
        Answer::redirect(302, &to)
    });
    let egress = format!(
        "      mode: {mode}\n      allow:\n\
         \x20       - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: local-test\n          methods: [GET, POST]\n          paths: [\"/api/**\"]\n          name: echo\n\
         \x20       - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: local-test\n          name: redirector\n\
         \x20       - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          name: other\n          rate_limit: {{ per_second: 1, burst: 3 }}\n",
        echo.port, redirect.port, other.port
    );
    let credentials = "credentials:\n  - name: local-test\n    source: { env: ISOGATE_TEST_TOKEN }\n    inject: { header: Authorization, value: \"Bearer ${secret}\" }\n";
    let g = Gateway::start_with(
        POOL,
        &tenant("alpha", KEY, "subrequests: 5", &egress),
        credentials,
        &[("ISOGATE_TEST_TOKEN", TOKEN)],
    );
    let redirect_port = redirect.port;
    Setup {
        g,
        echo,
        other,
        _redirect: redirect,
        redirect_port,
    }
}

#[test]
fn upstream_gets_the_credential_and_the_worker_never_sees_it() {
    let s = setup("enforce");
    let url = s.echo.url("/api/whoami?x=1");
    let (status, v) = run(
        &s.g,
        KEY,
        &fetch_body(
            &url,
            r#"{ headers: { authorization: "Bearer forged", "x-mine": "1" } }"#,
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    let seen: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    // The upstream saw the real credential (overwriting the Worker's), plus the Worker's own header...
    assert_eq!(seen["headers"]["x-mine"], "1");
    assert_eq!(seen["target"], "/api/whoami?x=1");
    // ...but what the Worker got back is scrubbed, in the body and in the headers.
    assert_eq!(seen["headers"]["authorization"], "Bearer [REDACTED]");
    assert_eq!(v["headers"]["x-echo-authorization"], "Bearer [REDACTED]");
    assert!(!v.to_string().contains(TOKEN));
    assert!(s.g.metric(r#"isogate_credentials_injected_total{credential="local-test"}"#) >= 1.0);
    assert!(s.g.metric(r#"isogate_secrets_redacted_total{credential="local-test"}"#) >= 1.0);
    assert!(!s.g.log().contains(TOKEN), "the secret reached the log");
    // The audit line names the credential, not its value, and the path without the query.
    let log = s.g.log();
    let line = log
        .lines()
        .find(|l| l.contains("/api/whoami"))
        .expect("audit line");
    assert!(
        line.contains("local-test") && !line.contains("x=1"),
        "{line}"
    );
}

#[test]
fn credential_is_dropped_on_a_cross_origin_redirect() {
    let s = setup("enforce");
    // Same-origin redirect target? The redirector sends /cross to `other` (another origin).
    let url = format!("http://127.0.0.1:{}/cross", s.redirect_port);
    let (_, v) = run(&s.g, KEY, &fetch_body(&url, "{}"));
    assert_eq!(v["status"], 200, "{v}");
    let seen: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["target"], "/landed");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // The response says where it came from after the redirect.
    assert_eq!(v["redirected"], true, "{v}");
    assert!(
        v["url"].as_str().unwrap_or_default().ends_with("/landed"),
        "{v}"
    );
    // Redirected to an allowed path of the echo rule: each hop is checked again and the
    // credential is not re-attached after the origin changed.
    let url = format!("http://127.0.0.1:{}/to-echo", s.redirect_port);
    let (_, v) = run(&s.g, KEY, &fetch_body(&url, "{}"));
    let seen: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["target"], "/api/landed");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // `redirect: "manual"` hands the 3xx to the Worker.
    let (_, v) = run(&s.g, KEY, &fetch_body(&url, r#"{ redirect: "manual" }"#));
    assert_eq!(v["status"], 302, "{v}");
    assert_eq!(v["redirected"], false, "{v}");
    assert_eq!(v["url"], url.as_str(), "{v}");
    // Endless redirects stop at 10 hops (the budget of 5 subrequests stops them first here).
    let url = format!("http://127.0.0.1:{}/loop", s.redirect_port);
    let (status, v) = run(&s.g, KEY, &fetch_body(&url, "{}"));
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["kind"], "subrequest_limit");
}

#[test]
fn hosts_methods_and_paths_outside_the_rules_are_refused_clearly() {
    let s = setup("enforce");
    let (_, v) = run(
        &s.g,
        KEY,
        &fetch_body("https://not-allowed.example.com/", "{}"),
    );
    let e = v["error"].as_str().unwrap();
    assert!(
        e.starts_with("TypeError: fetch denied") && e.contains("not-allowed.example.com"),
        "{e}"
    );
    let (_, v) = run(
        &s.g,
        KEY,
        &fetch_body(&s.echo.url("/api/x"), r#"{ method: "DELETE" }"#),
    );
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("denied") && e.contains("DELETE"), "{e}");
    let (_, v) = run(&s.g, KEY, &fetch_body(&s.echo.url("/private"), "{}"));
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("denied") && e.contains("/private"), "{e}");
    let (_, v) = run(&s.g, KEY, &fetch_body("ftp://127.0.0.1/", "{}"));
    assert!(v["error"].as_str().unwrap().contains("ftp"), "{v}");
    let (_, v) = run(
        &s.g,
        KEY,
        &fetch_body(
            &s.echo.url("/api/x").replace("http://", "http://u:p@"),
            "{}",
        ),
    );
    assert!(v["error"].as_str().unwrap().contains("credentials"), "{v}");
    assert!(
        s.g.metric(r#"isogate_egress_requests_total{decision="deny",rule="none",tenant="alpha"}"#)
            >= 3.0
    );
}

#[test]
fn report_mode_lets_denied_requests_through_and_counts_them() {
    let s = setup("report");
    // A request the rules deny on its path is let through in report mode: the rule matched its
    // host and port, so its allow_private scope applies (defect 8 keeps that scope to host+port
    // matches), but no rule matched in full, so no credential is attached.
    let (_, v) = run(&s.g, KEY, &fetch_body(&s.echo.url("/private"), "{}"));
    assert_eq!(v["status"], 200, "{v}");
    let seen: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(seen["headers"].get("authorization").is_none());
    assert_eq!(
        s.g.metric(
            r#"isogate_egress_requests_total{decision="report_deny",rule="none",tenant="alpha"}"#
        ),
        1.0
    );
}

#[test]
fn rate_limit_answers_429_after_the_burst_without_contacting_upstream() {
    let s = setup("enforce");
    let url = s.other.url("/count");
    let body = format!(
        r#"const out = [];
        for (let i = 0; i < 5; i++) {{ const r = await fetch("{url}"); out.push([r.status, r.headers.get("retry-after")]); }}
        return Response.json(out);"#
    );
    let (status, v) = run(&s.g, KEY, &body);
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429], "{v}");
    assert_eq!(v[3][1], "1");
    assert_eq!(
        s.g.metric(
            r#"isogate_egress_requests_total{decision="rate_limited",rule="other",tenant="alpha"}"#
        ),
        2.0
    );
}

#[test]
fn subrequest_budget_and_global_outbound_null_hold() {
    let s = setup("enforce");
    let url = s.echo.url("/api/n");
    let body = format!(
        r#"for (let i = 0; i < 6; i++) {{ try {{ await fetch("{url}"); }} catch (e) {{}} }}
        return new Response("made them all");"#
    );
    let (status, v) = run(&s.g, KEY, &body);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["kind"], "subrequest_limit");

    let mut code = worker(&format!(
        "export default {{ async fetch() {{ {} }} }}",
        fetch_body(&url, "{}")
    ));
    code["globalOutbound"] = Value::Null;
    let v: Value = s.g.load(KEY, &code, None).json().unwrap();
    assert_eq!(
        v["error"],
        "TypeError: network access is disabled for this Worker"
    );
}

#[test]
fn ssrf_forms_are_refused_without_allow_private() {
    let hosts = [
        "127.0.0.1",
        "0.0.0.0",
        "169.254.169.254",
        "\"[::1]\"",
        "\"[::ffff:127.0.0.1]\"",
        "localhost",
        "10.1.2.3",
    ];
    let mut egress = String::from("      allow:\n");
    for h in hosts {
        egress.push_str(&format!(
            "        - host: {h}\n          ports: [80, 8080]\n"
        ));
    }
    let g = Gateway::start_with(
        POOL,
        &tenant("alpha", KEY, "subrequests: 50", &egress),
        "",
        &[],
    );
    for url in [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/",
        "http://10.1.2.3/",
    ] {
        let (_, v) = run(&g, KEY, &fetch_body(url, "{}"));
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("SSRF guard"), "{url}: {v}");
    }
    let (_, v) = run(&g, KEY, &fetch_body("http://169.254.169.254/", "{}"));
    assert!(v["error"].as_str().unwrap().contains("metadata"), "{v}");
}

#[test]
fn file_secret_rotated_on_disk_is_used_by_the_next_request() {
    let echo = echo();
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("api-key");
    std::fs::write(&secret_path, "first-secret-value\n").unwrap();
    let egress = format!(
        "      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: file-key\n",
        echo.port
    );
    let credentials = format!(
        "credentials:\n  - name: file-key\n    source: {{ file: \"{}\" }}\n    inject: {{ header: x-api-key, value: \"${{secret}}\" }}\n",
        secret_path.display()
    );
    let g = Gateway::start_with(
        POOL,
        &tenant("alpha", KEY, "subrequests: 5", &egress),
        &credentials,
        &[],
    );
    // An echoing upstream would hand the key back; the Worker sees it scrubbed.
    let seen_key = |g: &Gateway| -> String {
        let (_, v) = run(g, KEY, &fetch_body(&echo.url("/k"), "{}"));
        let seen: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
        seen["headers"]["x-api-key"].as_str().unwrap().to_string()
    };
    // What the Worker sees is redacted...
    assert_eq!(seen_key(&g), "[REDACTED]");
    // Rotation is observed at the upstream: a server that records the keys it receives.
    let recorded = Arc::new(Mutex::new(Vec::<String>::new()));
    let rec = recorded.clone();
    let recorder = Upstream::start(move |seen| {
        rec.lock()
            .unwrap()
            .push(seen.headers.get("x-api-key").cloned().unwrap_or_default());
        Answer::json(200, &json!({"ok": true}))
    });
    drop(g);
    let egress = format!(
        "      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: file-key\n",
        recorder.port
    );
    let g = Gateway::start_with(
        POOL,
        &tenant("alpha", KEY, "subrequests: 5", &egress),
        &credentials,
        &[],
    );
    let (_, v) = run(&g, KEY, &fetch_body(&recorder.url("/k"), "{}"));
    assert_eq!(v["status"], 200, "{v}");
    std::fs::write(&secret_path, "second-secret-value-longer\n").unwrap();
    let (_, v) = run(&g, KEY, &fetch_body(&recorder.url("/k"), "{}"));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(
        *recorded.lock().unwrap(),
        vec![
            "first-secret-value".to_string(),
            "second-secret-value-longer".to_string()
        ]
    );
    // A missing file fails closed with a message that names the credential, not a value.
    std::fs::remove_file(&secret_path).unwrap();
    let (_, v) = run(&g, KEY, &fetch_body(&recorder.url("/k"), "{}"));
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("credential `file-key` is unavailable"), "{e}");
    assert_eq!(
        recorded.lock().unwrap().len(),
        2,
        "upstream contacted without a credential"
    );
}

#[test]
fn allow_private_never_opens_cloud_metadata() {
    let egress = "      allow:\n        - host: 169.254.169.254\n          allow_private: true\n        - host: 127.0.0.1\n          allow_private: true\n          ports: [9]\n";
    let g = Gateway::start_with(
        POOL,
        &tenant("alpha", KEY, "subrequests: 5", egress),
        "",
        &[],
    );
    let (_, v) = run(
        &g,
        KEY,
        &fetch_body("http://169.254.169.254/latest/meta-data/", "{}"),
    );
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("metadata") && e.contains("SSRF guard"), "{v}");
    // allow_private does open loopback: nothing listens on port 9, so the failure is a
    // connection error, not a refusal.
    let (_, v) = run(&g, KEY, &fetch_body("http://127.0.0.1:9/", "{}"));
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("could not connect"), "{v}");
}

/// `fetch(url, {signal})`: aborting rejects the `fetch()` at once with the signal's reason, and
/// the upstream request is dropped — the upstream sees its connection close while it still holds
/// the request (in process mode across the wire: `CancelEgress`). An already-aborted signal
/// never reaches the network.
#[test]
fn aborting_a_fetch_drops_the_upstream_request() {
    use common::upstream::{read_head, RawUpstream};
    use std::io::{BufReader, Read};
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<String>();
    let closed_tx = Mutex::new(closed_tx);
    let upstream = RawUpstream::start(move |conn| {
        let mut reader = BufReader::new(conn);
        let Some((_, target, _)) = read_head(&mut reader) else {
            return;
        };
        // Never answer: wait until the client side closes the connection.
        let mut byte = [0u8; 1];
        let gone = matches!(reader.read(&mut byte), Ok(0) | Err(_));
        if gone {
            let _ = closed_tx.lock().unwrap().send(target);
        }
    });
    let egress = format!(
        "      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          methods: [GET]\n          name: slow\n",
        upstream.port
    );
    let g = Gateway::start(
        POOL,
        &tenant(
            "ab",
            KEY,
            "cpu_ms: 200, wall_ms: 20000, memory_mb: 64, subrequests: 5",
            &egress,
        ),
    );
    let (status, v) = run(
        &g,
        KEY,
        &format!(
            r#"const ac = new AbortController();
            const pending = fetch("{}", {{ signal: ac.signal }});
            setTimeout(() => ac.abort(new DOMException("enough", "AbortError")), 50);
            let outcome;
            try {{ await pending; outcome = "resolved"; }} catch (e) {{ outcome = e.name + ": " + e.message; }}
            let early;
            const pre = new AbortController();
            pre.abort();
            try {{ await fetch("{}", {{ signal: pre.signal }}); early = "resolved"; }} catch (e) {{ early = e.name; }}
            return Response.json({{ outcome, early }});"#,
            upstream.url("/held"),
            upstream.url("/never")
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"outcome": "AbortError: enough", "early": "AbortError"})
    );
    let closed = closed_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the upstream saw the aborted request's connection close");
    assert_eq!(closed, "/held");
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the pre-aborted fetch never connected"
    );
}

/// A fetch() response body streams: an upstream that sends part of its body and then waits
/// (chunked) is read by the Worker, proxied to the client, and the client has the first part
/// while the upstream still holds the rest (in process mode across the wire, paced by the
/// Worker's reads). The injected credential, echoed by the upstream split across its two
/// chunks, is still scrubbed whole; the audit line counts the bytes once the body has ended.
#[test]
fn a_fetch_body_streams_from_the_upstream_and_is_scrubbed_across_chunks() {
    use common::upstream::{read_head, RawUpstream};
    use std::io::{BufReader, Read, Write};
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let filler = "x".repeat(400);
    let first = format!("{filler}|Bearer {}", &TOKEN[..10]);
    let second = format!("{}|end", &TOKEN[10..]);
    let raw_bytes = first.len() + second.len();
    let upstream = RawUpstream::start(move |conn| {
        let mut writer = conn.try_clone().unwrap();
        let mut reader = BufReader::new(conn);
        if read_head(&mut reader).is_none() {
            return;
        }
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = writer.write_all(format!("{head}{}", chunk(&first)).as_bytes());
        let _ = writer.flush();
        // The rest only once the client has the first part.
        if go_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok()
        {
            let _ = writer.write_all(format!("{}0\r\n\r\n", chunk(&second)).as_bytes());
        }
    });
    let egress = format!(
        "      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: local-test\n          name: streaming\n",
        upstream.port
    );
    let g = Gateway::start_with(
        POOL,
        &tenant(
            "st",
            KEY,
            "cpu_ms: 500, wall_ms: 30000, memory_mb: 64, subrequests: 5",
            &egress,
        ),
        "credentials:\n  - name: local-test\n    source: { env: ISOGATE_TEST_TOKEN }\n    inject: { header: Authorization, value: \"Bearer ${secret}\" }\n",
        &[("ISOGATE_TEST_TOKEN", TOKEN)],
    );
    let code = worker(&format!(
        r#"export default {{ fetch() {{ return fetch("{}"); }} }}"#,
        upstream.url("/stream")
    ));
    let mut r = g.load(KEY, &code, None);
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "a scrubbed, streamed body has no known length"
    );
    // Read until the first part (less the tail the scrubber holds back) has arrived.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 300 {
        let n = r.read(&mut buf).expect("read the first part");
        assert!(
            n > 0,
            "the body ended early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.iter().all(|&b| b == b'x'),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    go_tx.send(()).unwrap();
    r.read_to_end(&mut got).unwrap();
    let text = String::from_utf8(got).unwrap();
    assert_eq!(text, format!("{filler}|Bearer [REDACTED]|end"));
    assert!(g.metric(r#"isogate_secrets_redacted_total{credential="local-test"}"#) >= 1.0);
    let log = g.log();
    let expected_bytes = format!("\"bytes\":{raw_bytes}");
    assert!(
        log.lines()
            .any(|l| l.contains("/stream") && l.contains(&expected_bytes)),
        "no audit line with {expected_bytes}:\n{log}"
    );
    assert!(!log.contains(TOKEN));
}
