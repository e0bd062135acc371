//! Egress hardening (issue 8, defects 6, 7, 13, 14) against the real binary and real loopback
//! upstreams that echo what they receive: every echoed form of an injected secret is scrubbed
//! (also inside compressed bodies, split across headers, in `Location`); a redirect carrying the
//! secret is refused before the next origin; connections are never shared across tenants or
//! credentials; every refusal writes an audit line; hop-by-hop headers are stripped; the
//! in-flight body budget bounds the gateway's memory.

mod common;

use base64::Engine;
use common::upstream::{read_head, write_answer, Answer, RawUpstream, Seen, Upstream};
use common::{sha256_hex, worker, Gateway};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const KEY: &str = "alpha-key";
const BETA_KEY: &str = "beta-key";
const TOKEN: &str = "tok-Zq8/very+secret 4711";
const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";

fn tenant(name: &str, key: &str, egress: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ subrequests: 10, memory_mb: 128, wall_ms: 20000, cpu_ms: 2000 }}\n    egress:\n{egress}",
        sha256_hex(key)
    )
}

fn rule(port: u16, name: &str, credential: Option<&str>) -> String {
    let mut r = format!(
        "        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n          methods: [GET, POST, HEAD]\n          name: {name}\n"
    );
    if let Some(c) = credential {
        r.push_str(&format!("          credential: {c}\n"));
    }
    r
}

const CREDENTIALS: &str = "credentials:\n  - name: hdr\n    source: { env: TEST_TOKEN }\n    inject: { header: Authorization, value: \"Bearer ${secret}\" }\n  - name: qry\n    source: { env: TEST_TOKEN }\n    inject: { query: api_key, value: \"${secret}\" }\n";

fn gateway(tenants: &str, extra: &str) -> Gateway {
    Gateway::start_with(
        POOL,
        tenants,
        &format!("{CREDENTIALS}{extra}"),
        &[("TEST_TOKEN", TOKEN)],
    )
}

/// Runs a Worker that fetches `url` with `init` and answers with status, headers and the body
/// bytes (base64), or the error.
fn fetch(g: &Gateway, key: &str, url: &str, init: &str) -> Value {
    let src = format!(
        r#"export default {{ async fetch() {{
            try {{
                const r = await fetch("{url}", {init});
                const body = Buffer.from(await r.arrayBuffer()).toString("base64");
                return Response.json({{ status: r.status, url: r.url, headers: [...r.headers], body }});
            }} catch (e) {{
                return Response.json({{ error: e.name + ": " + e.message }});
            }}
        }} }}"#
    );
    let r = g.load(key, &worker(&src), None);
    let text = r.text().unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn body_of(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v["body"].as_str().unwrap_or_else(|| panic!("no body: {v}")))
        .unwrap()
}

fn header<'a>(v: &'a Value, name: &str) -> Vec<&'a str> {
    v["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h[0].as_str() == Some(name))
                .filter_map(|h| h[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the Worker received, headers and body, as bytes.
fn everything(v: &Value) -> Vec<u8> {
    let mut all = v["headers"].to_string().into_bytes();
    all.extend_from_slice(&body_of(v));
    all
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// No window of 8 secret bytes, in any of the encodings below, survives.
fn assert_no_secret(received: &[u8]) {
    let secret = TOKEN.as_bytes();
    for w in secret.windows(8) {
        for form in encodings(w) {
            assert!(
                !contains_ci(received, &form),
                "a form of the secret survived: {:?} in {}",
                String::from_utf8_lossy(&form),
                String::from_utf8_lossy(received)
            );
        }
    }
}

/// Encodings of a piece of the secret an echoing upstream might use (base64 is checked by its
/// own test on whole values).
fn encodings(piece: &[u8]) -> Vec<Vec<u8>> {
    let form: String = url::form_urlencoded::byte_serialize(piece).collect();
    let pct: String = piece.iter().map(|b| format!("%{b:02X}")).collect();
    let json_u: String = piece.iter().map(|b| format!("\\u{b:04x}")).collect();
    let html_dec: String = piece.iter().map(|b| format!("&#{b};")).collect();
    let html_hex: String = piece.iter().map(|b| format!("&#x{b:x};")).collect();
    let le: Vec<u8> = piece.iter().flat_map(|b| [*b, 0]).collect();
    let be: Vec<u8> = piece.iter().flat_map(|b| [0, *b]).collect();
    vec![
        piece.to_vec(),
        form.into_bytes(),
        pct.into_bytes(),
        json_u.into_bytes(),
        String::from_utf8_lossy(piece)
            .replace('/', "\\/")
            .into_bytes(),
        hex::encode(piece).into_bytes(),
        html_dec.into_bytes(),
        html_hex.into_bytes(),
        le,
        be,
    ]
}

/// The secret as the upstream received it: from `Authorization: Bearer …` or `?api_key=…`.
fn received_secret(seen: &Seen) -> Vec<u8> {
    if let Some(a) = seen.headers.get("authorization") {
        return a.trim_start_matches("Bearer ").as_bytes().to_vec();
    }
    let query = seen.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default()
}

/// An upstream that echoes the secret it received in every form at once, in the body and in
/// headers (split across two headers, and across two same-name headers).
fn form_echo() -> Upstream {
    Upstream::start(|seen| {
        let s = received_secret(seen);
        let mut body = Vec::new();
        body.extend_from_slice(seen.target.as_bytes());
        body.extend_from_slice(b"\n");
        for form in encodings(&s) {
            body.extend_from_slice(b"<");
            body.extend_from_slice(&form);
            body.extend_from_slice(b">\n");
        }
        body.extend_from_slice(String::from_utf8_lossy(&s).to_uppercase().as_bytes());
        body.extend_from_slice(b"\n");
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            for pre in ["", "u", "us", "user:"] {
                let mut plain = pre.as_bytes().to_vec();
                plain.extend_from_slice(&s);
                plain.extend_from_slice(b"!trailer");
                body.extend_from_slice(engine.encode(&plain).as_bytes());
                body.extend_from_slice(b"\n");
            }
        }
        // A truncated echo: 9 bytes from the middle.
        body.extend_from_slice(&s[3..12]);
        let text = String::from_utf8_lossy(&s).into_owned();
        let (a, b) = text.split_at(text.len() / 2);
        let (c, d) = text.split_at(5);
        Answer {
            status: 200,
            headers: vec![
                ("x-echo".into(), format!("Bearer {text}")),
                ("x-part-1".into(), a.to_string()),
                ("x-part-2".into(), b.to_string()),
                ("x-same".into(), c.to_string()),
                ("x-same".into(), d.to_string()),
                (
                    "x-pct".into(),
                    url::form_urlencoded::byte_serialize(&s).collect(),
                ),
            ],
            body,
        }
    })
}

fn one_tenant(port: u16, credential: &str) -> String {
    tenant(
        "alpha",
        KEY,
        &format!("      allow:\n{}", rule(port, "echo", Some(credential))),
    )
}

#[test]
fn every_echoed_form_of_a_header_or_query_credential_is_redacted() {
    let up = form_echo();
    for credential in ["hdr", "qry"] {
        let g = gateway(&one_tenant(up.port, credential), "");
        let v = fetch(&g, KEY, &up.url("/echo?x=1"), "{}");
        assert_eq!(v["status"], 200, "{v}");
        // `response.url` is the URL the Worker asked for, never the one with the credential.
        assert_eq!(v["url"], up.url("/echo?x=1").as_str(), "{v}");
        let received = everything(&v);
        assert_no_secret(&received);
        // base64 in every alignment and alphabet: none of the secret's base64 survives.
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            for pre in ["", "u", "us"] {
                let mut plain = pre.as_bytes().to_vec();
                plain.extend_from_slice(TOKEN.as_bytes());
                let enc = engine.encode(&plain);
                let core = &enc[pre.len() * 2..enc.len() - 4];
                assert!(
                    !String::from_utf8_lossy(&received).contains(core),
                    "base64 {core} survived"
                );
            }
        }
        // Split across two headers, and across two same-name headers (as `get` joins them).
        let joined = header(&v, "x-part-1").concat() + &header(&v, "x-part-2").concat();
        assert!(!joined.contains(TOKEN), "{joined}");
        assert!(!header(&v, "x-same")
            .concat()
            .replace(", ", "")
            .contains(TOKEN));
        assert!(String::from_utf8_lossy(&received).contains("[REDACTED]"));
        // Content-Length is that of the body the Worker got, not the upstream's.
        assert_eq!(
            header(&v, "content-length"),
            vec![body_of(&v).len().to_string().as_str()],
            "{v}"
        );
        assert!(
            g.metric(&format!(
                r#"isogate_secrets_redacted_total{{credential="{credential}"}}"#
            )) >= 1.0
        );
        assert!(!g.log().contains(TOKEN));
    }
}

/// An upstream that compresses its echo with `coding` (always, or only when asked).
fn compressing_echo(coding: &'static str, only_when_asked: bool) -> Upstream {
    Upstream::start(move |seen| {
        let plain = format!("{{\"seen\":{:?}}}", seen.headers.get("authorization"));
        let asked = seen
            .headers
            .get("accept-encoding")
            .is_some_and(|a| a.contains(coding));
        if only_when_asked && !asked {
            return Answer::json(200, &json!({"plain": true}));
        }
        let body = compress(coding, plain.as_bytes());
        Answer {
            status: 200,
            headers: vec![("content-encoding".into(), coding.replace("raw-", ""))],
            body,
        }
    })
}

fn compress(coding: &str, plain: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        }
        "raw-deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(plain).unwrap();
            drop(w);
            out
        }
        other => panic!("{other}"),
    }
}

#[test]
fn compressed_echoes_are_decoded_then_scrubbed() {
    for (coding, asked) in [
        ("gzip", false),
        ("deflate", false),
        ("raw-deflate", false),
        ("br", false),
        ("gzip", true),
        ("br", true),
    ] {
        let up = compressing_echo(coding, asked);
        let g = gateway(&one_tenant(up.port, "hdr"), "");
        let init = if asked {
            format!(r#"{{ headers: {{ "accept-encoding": "{}" }} }}"#, coding)
        } else {
            "{}".to_string()
        };
        let v = fetch(&g, KEY, &up.url("/c"), &init);
        let body = body_of(&v);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            text, "{\"seen\":Some(\"Bearer [REDACTED]\")}",
            "{coding} asked={asked}: {v}"
        );
        assert!(header(&v, "content-encoding").is_empty(), "{v}");
        assert_eq!(
            header(&v, "content-length"),
            vec![body.len().to_string().as_str()]
        );
        assert_no_secret(&everything(&v));
    }
}

#[test]
fn a_decompression_bomb_is_a_clear_counted_error() {
    let bomb = compress("gzip", &vec![0u8; 40 << 20]);
    let up = Upstream::start(move |_| Answer {
        status: 200,
        headers: vec![("content-encoding".into(), "gzip".into())],
        body: bomb.clone(),
    });
    let g = gateway(&one_tenant(up.port, "hdr"), "");
    let v = fetch(&g, KEY, &up.url("/bomb"), "{}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("decoded response body exceeds"), "{v}");
    assert_eq!(
        g.metric(
            r#"isogate_egress_failures_total{reason="decoded_too_large",rule="echo",tenant="alpha"}"#
        ),
        1.0
    );
}

#[test]
fn location_is_scrubbed_and_a_redirect_carrying_the_secret_is_refused() {
    let landed = Arc::new(AtomicUsize::new(0));
    let l = landed.clone();
    let other = Upstream::start(move |_| {
        l.fetch_add(1, Ordering::SeqCst);
        Answer::json(200, &json!({"landed": true}))
    });
    let other_port = other.port;
    let redirector = Upstream::start(move |seen| {
        let s = String::from_utf8_lossy(&received_secret(seen)).into_owned();
        let enc: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let to = if seen.target.starts_with("/raw") {
            format!(
                "http://127.0.0.1:{other_port}/x?leak={}",
                s.replace(' ', "%20")
            )
        } else {
            format!("http://127.0.0.1:{other_port}/x?leak={enc}")
        };
        Answer::redirect(302, &to)
    });
    let egress = format!(
        "      allow:\n{}{}",
        rule(redirector.port, "redirector", Some("hdr")),
        rule(other.port, "other", None)
    );
    let g = gateway(&tenant("alpha", KEY, &egress), "");
    for path in ["/raw", "/encoded"] {
        let v = fetch(&g, KEY, &redirector.url(path), r#"{ redirect: "manual" }"#);
        assert_eq!(v["status"], 302, "{v}");
        let location = header(&v, "location").concat();
        assert!(location.contains("[REDACTED]"), "{location}");
        assert_no_secret(location.as_bytes());
        let v = fetch(&g, KEY, &redirector.url(path), "{}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("carries an injected credential"), "{v}");
    }
    assert_eq!(
        landed.load(Ordering::SeqCst),
        0,
        "the next origin was contacted"
    );
}

#[test]
fn hop_by_hop_headers_never_reach_the_worker() {
    let up = Upstream::start(|_| Answer {
        status: 200,
        headers: vec![
            ("connection".into(), "keep-alive, x-hop".into()),
            ("keep-alive".into(), "timeout=5".into()),
            ("x-hop".into(), "1".into()),
            ("proxy-authenticate".into(), "Basic".into()),
            ("upgrade".into(), "h2c".into()),
            ("trailer".into(), "x-t".into()),
            ("x-kept".into(), "1".into()),
        ],
        body: b"ok".to_vec(),
    });
    let g = gateway(&one_tenant(up.port, "hdr"), "");
    let v = fetch(&g, KEY, &up.url("/"), "{}");
    for h in [
        "connection",
        "keep-alive",
        "x-hop",
        "proxy-authenticate",
        "upgrade",
        "trailer",
    ] {
        assert!(header(&v, h).is_empty(), "{h} reached the Worker: {v}");
    }
    assert_eq!(header(&v, "x-kept"), vec!["1"]);
}

/// An upstream that answers `POST /early` without reading its body, then parses whatever
/// follows on the connection as the next request, recording every request it parsed.
fn early_answering() -> (RawUpstream, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    let up = RawUpstream::start(move |conn| {
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        while let Some((method, target, headers)) = read_head(&mut r) {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if target == "/early" {
                if !write_answer(&mut w, 200, &[], b"early") {
                    return;
                }
                continue; // the body stays on the wire
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let entry = format!(
                "{method} {target} {:?} {}",
                headers,
                String::from_utf8_lossy(&body)
            );
            l.lock().unwrap().push(entry.clone());
            if !write_answer(&mut w, 200, &[], entry.as_bytes()) {
                return;
            }
        }
    });
    (up, log)
}

#[test]
fn a_tenant_body_cannot_swallow_another_tenants_credentialed_request() {
    let (up, log) = early_answering();
    let tenants = tenant(
        "alpha",
        KEY,
        &format!("      allow:\n{}", rule(up.port, "plain", None)),
    ) + &tenant(
        "beta",
        BETA_KEY,
        &format!("      allow:\n{}", rule(up.port, "cred", Some("hdr"))),
    );
    let g = gateway(&tenants, "");
    // Beta's request, as the upstream will see it: request line, then its Authorization.
    let swallow = "GET /b HTTP/1.1\r\n".len() + format!("authorization: Bearer {TOKEN}\r\n").len();
    let smuggled = format!("GET /swallow HTTP/1.1\r\ncontent-length: {swallow}\r\n\r\n");
    let v = fetch(
        &g,
        KEY,
        &up.url("/early"),
        &format!(r#"{{ method: "POST", body: {smuggled:?} }}"#),
    );
    assert_eq!(v["status"], 200, "{v}");
    let v = fetch(&g, BETA_KEY, &up.url("/b"), "{}");
    assert_eq!(v["status"], 200, "{v}");
    let log = log.lock().unwrap().clone();
    assert!(
        log.iter().all(|e| !e.starts_with("GET /swallow")),
        "alpha's body was parsed as a request that swallowed beta's: {log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.starts_with("GET /b") && e.contains(TOKEN)),
        "{log:?}"
    );
}

/// A flag one upstream thread sets and another waits for (bounded: a missing signal fails the
/// test instead of hanging it).
#[derive(Default)]
struct Signal(std::sync::Mutex<bool>, std::sync::Condvar);

impl Signal {
    fn set(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
    fn wait(&self) {
        let guard = self.0.lock().unwrap();
        let _ = self
            .1
            .wait_timeout_while(guard, std::time::Duration::from_secs(20), |set| !*set)
            .unwrap();
    }
}

#[test]
fn a_connection_answered_before_its_body_was_sent_is_not_reused() {
    // `/early` is answered at once, and its body (24 MiB, more than loopback's socket buffers
    // hold) is read only after the Worker has seen that answer (`/observed`, on a second
    // upstream: another connection pool), so the gateway always sees the answer before it has
    // sent the body. Once the body is read (`/drained`), the connection would be idle; `/next`
    // must still come on another one. Each connection is numbered by the order it sent its
    // first request in.
    let observed = Arc::new(Signal::default());
    let drained = Arc::new(Signal::default());
    let seen = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let (obs, dr, log) = (observed.clone(), drained.clone(), seen.clone());
    let up = RawUpstream::start(move |conn| {
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        let mut id = None;
        while let Some((_, target, headers)) = read_head(&mut r) {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut log = log.lock().unwrap();
            let n = *id.get_or_insert(log.iter().map(|(c, _)| c + 1).max().unwrap_or(0));
            log.push((n, target.clone()));
            drop(log);
            if target == "/early" {
                if !write_answer(&mut w, 200, &[], b"early") {
                    return;
                }
                obs.wait();
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            if target == "/early" {
                dr.set();
            } else if !write_answer(&mut w, 200, &[], b"next") {
                return;
            }
        }
    });
    let signals = RawUpstream::start(move |conn| {
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        while let Some((_, target, _)) = read_head(&mut r) {
            if target == "/observed" {
                observed.set();
            } else {
                drained.wait();
            }
            if !write_answer(&mut w, 200, &[], b"ok") {
                return;
            }
        }
    });
    let egress = format!(
        "      allow:\n{}{}",
        rule(up.port, "echo", Some("hdr")),
        rule(signals.port, "signals", None)
    );
    let g = gateway(&tenant("alpha", KEY, &egress), "");
    let src = format!(
        r#"export default {{ async fetch() {{
            const a = await fetch("{}", {{ method: "POST", body: "x".repeat(24 << 20) }});
            await a.text();
            await (await fetch("{}")).text();
            await (await fetch("{}")).text();
            const b = await fetch("{}");
            return new Response(await b.text());
        }} }}"#,
        up.url("/early"),
        signals.url("/observed"),
        signals.url("/drained"),
        up.url("/next")
    );
    let r = g.load(KEY, &worker(&src), None);
    assert_eq!(r.text().unwrap(), "next");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(0, "/early".to_string()), (1, "/next".to_string())],
        "/next came on the connection that /early's body was still being sent on"
    );
}

/// The JSON audit lines (target `isogate::egress`, message `egress`).
fn audit_lines(g: &Gateway) -> Vec<Value> {
    g.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "isogate::egress" && v["fields"]["message"] == "egress")
        .collect()
}

#[test]
fn every_refusal_writes_one_audit_line_with_its_reason() {
    let up = common::upstream::echo();
    let tenants = tenant(
        "alpha",
        KEY,
        &format!("      allow:\n{}", rule(up.port, "echo", Some("hdr"))),
    ) + &format!(
        "  - name: beta\n    api_keys:\n      - sha256: \"{}\"\n",
        sha256_hex(BETA_KEY)
    );
    let g = gateway(&tenants, "");
    let cases = [
        (KEY, "ftp://127.0.0.1/".to_string(), "invalid_url"),
        (
            KEY,
            up.url("/x").replace("http://", "http://u:p@"),
            "invalid_url",
        ),
        (BETA_KEY, up.url("/x"), "network_disabled"),
        (KEY, "http://127.0.0.1:1/x".to_string(), "denied"),
    ];
    for (key, url, reason) in cases {
        let before = audit_lines(&g).len();
        let v = fetch(&g, key, &url, "{}");
        assert!(v["error"].is_string(), "{url}: {v}");
        let lines = audit_lines(&g);
        assert_eq!(lines.len(), before + 1, "{url}: {lines:?}");
        let line = &lines[before]["fields"];
        assert_eq!(line["reason"], reason, "{url}: {line}");
        assert_eq!(line["decision"], "deny", "{line}");
    }
    // An allowed request audits once too, with no reason.
    let before = audit_lines(&g).len();
    let v = fetch(&g, KEY, &up.url("/ok"), "{}");
    assert_eq!(v["status"], 200);
    let lines = audit_lines(&g);
    assert_eq!(lines.len(), before + 1);
    assert_eq!(lines[before]["fields"]["decision"], "allow");
    assert_eq!(lines[before]["fields"]["credential"], "hdr");
}

#[test]
fn the_in_flight_budget_bounds_concurrent_large_bodies() {
    // 3 MiB bodies, sent in two halves with a pause. The gateway streams them to the Workers:
    // each holds a window of its body (256 KiB + the 64 KiB that may go with the head) against
    // the in-flight budget, not the whole body. Under a 1 MiB budget, three of four concurrent
    // bodies fit and the fourth is refused after `wait_ms`. The upstream sends the four heads
    // together (a barrier), so all four are in flight at once.
    let half = 1536 * 1024;
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let connections = Arc::new(AtomicUsize::new(0));
    let up = RawUpstream::start(move |conn| {
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        if connections.fetch_add(1, Ordering::SeqCst) < 4 {
            if read_head(&mut r).is_none() {
                return;
            }
            barrier.wait();
        } else if read_head(&mut r).is_none() {
            return;
        }
        loop {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 2 * half);
            if w.write_all(head.as_bytes()).is_err() || w.write_all(&vec![b'a'; half]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(700));
            if w.write_all(&vec![b'a'; half]).is_err() {
                return;
            }
            if read_head(&mut r).is_none() {
                return;
            }
        }
    });
    let g = gateway(
        &one_tenant(up.port, "hdr"),
        "inflight: { budget_mb: 1, tenant_share_percent: 100, wait_ms: 100 }\n",
    );
    assert_eq!(
        g.metric("isogate_inflight_budget_bytes"),
        (1u64 << 20) as f64
    );
    let src = format!(
        r#"export default {{ async fetch() {{
            try {{
                const r = await fetch("{}");
                return Response.json({{ status: r.status, len: (await r.arrayBuffer()).byteLength }});
            }} catch (e) {{
                return Response.json({{ error: e.name + ": " + e.message }});
            }}
        }} }}"#,
        up.url("/big")
    );
    let code = worker(&src);
    let window = (256 + 64) * 1024;
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| g.load(KEY, &code, None).json::<Value>().unwrap()))
            .collect();
        // While the bodies are half-sent, the gauge shows three windows.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut peak = 0.0f64;
        while std::time::Instant::now() < deadline && peak < (3 * window) as f64 {
            peak = peak.max(g.metric("isogate_inflight_bytes"));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            peak >= (3 * window) as f64,
            "gauge never showed three windows: {peak}"
        );
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results
        .iter()
        .filter(|v| v["status"] == 200 && v["len"] == 2 * half)
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("in-flight memory budget"))
        })
        .collect();
    assert_eq!((ok, refused.len()), (3, 1), "{results:?}");
    assert!(g.metric(r#"isogate_inflight_refusals_total{tenant="alpha"}"#) >= 1.0);
    // Everything is released afterwards.
    assert_eq!(g.metric("isogate_inflight_bytes"), 0.0);
    // Alone, the same 3 MiB body fits the 4 MiB budget.
    let alone: Value = g.load(KEY, &code, None).json().unwrap();
    assert_eq!(alone["status"], 200, "{alone}");
    assert_eq!(alone["len"], 2 * half, "{alone}");
    assert_eq!(g.metric("isogate_inflight_bytes"), 0.0);
    // A Worker response larger than the tenant's share is a clear 503.
    let src = r#"export default { async fetch() { return new Response("x".repeat(2 << 20)); } }"#;
    let r = g.load(KEY, &worker(src), None);
    assert_eq!(r.status(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["kind"], "memory_budget", "{v}");
}

#[test]
fn a_fetch_refused_by_the_subrequest_budget_is_audited_too() {
    let up = common::upstream::echo();
    let g = gateway(
        &tenant(
            "alpha",
            KEY,
            &format!("      allow:\n{}", rule(up.port, "echo", None)),
        ),
        "",
    );
    let url = up.url("/n");
    let mut code = worker(&format!(
        r#"export default {{ async fetch() {{
            await fetch("{url}");
            try {{ await fetch("{url}"); }} catch (e) {{}}
            return new Response("done");
        }} }}"#
    ));
    code["limits"] = serde_json::json!({ "subrequests": 1 });
    let before = audit_lines(&g).len();
    let r = g.load(KEY, &code, None);
    assert_eq!(
        r.status(),
        503,
        "the invocation fails with subrequest_limit"
    );
    let lines = audit_lines(&g);
    assert_eq!(lines.len(), before + 2, "{lines:?}");
    assert_eq!(lines[before]["fields"]["decision"], "allow");
    let refused = &lines[before + 1]["fields"];
    assert_eq!(refused["reason"], "subrequest_limit", "{refused}");
    assert_eq!(refused["decision"], "deny", "{refused}");
    assert_eq!(refused["path"], "/n", "{refused}");
}
