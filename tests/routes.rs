//! Public routes against the real binary: a tenant's Worker serves its own users on the tenant's
//! hostnames without an API key, gets the request as the client sent it (`Authorization` and
//! cookies included, the gateway's `X-Forwarded-*`), under the route's per-client rate limit and
//! header/body limits; unknown hosts get a 404 that names nobody; the API stays on its hosts.
//!
//! Requests are raw HTTP/1.1 over `TcpStream`, so that the `Host` header and forwarding headers
//! are exactly what a test says (client libraries set `Host` from the URL).

mod common;

use common::{Gateway, ALPHA_KEY, BETA_KEY};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const POOL: &str = "threads: 1, warm_isolates: 1, max_cached_workers: 10, idle_ttl_s: 300";
const HONO: &str = include_str!("frameworks/dist/hono-app.js");

/// A Worker that answers with what it was given.
const ECHO: &str = r#"export default { async fetch(req) {
  const h = Object.fromEntries(req.headers);
  return Response.json({ method: req.method, url: req.url, headers: h, body: await req.text() });
} };"#;

/// A Worker that fails with a message the public must not read.
const THROWS: &str =
    r#"export default { fetch() { throw new Error("internal detail: db password hint"); } };"#;

/// One answer read off the wire (the request said `Connection: close`).
#[derive(Debug)]
struct Wire {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method target` with `headers` (one `Name: value` per item) and `body` to `addr`.
fn send(addr: &str, method: &str, target: &str, headers: &[&str], body: &[u8]) -> Wire {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Wire { status, head, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

fn get(addr: &str, host: &str, target: &str, headers: &[&str]) -> Wire {
    let host = format!("Host: {host}");
    let mut all = vec![host.as_str()];
    all.extend_from_slice(headers);
    send(addr, "GET", target, &all, b"")
}

/// Tenants `alpha` (routes `alpha_routes`, YAML flow sequence items) and `beta`.
fn tenants(alpha_routes: &str, beta_routes: &str) -> String {
    let limits =
        "cpu_ms: 500, memory_mb: 64, wall_ms: 10000, subrequests: 5, max_body_bytes: 1048576";
    format!(
        "{}    routes: [{alpha_routes}]\n{}    routes: [{beta_routes}]\n",
        common::tenant_yaml("alpha", ALPHA_KEY, limits),
        common::tenant_yaml("beta", BETA_KEY, limits)
    )
}

fn start(listen_extra: &str, tenants: &str) -> Gateway {
    Gateway::start_listen(listen_extra, POOL, tenants, "")
}

#[test]
fn a_route_serves_the_request_unchanged_without_an_api_key() {
    let g = start(
        "",
        &tenants(
            "{ host: app.test, worker: echo, name: app }, { host: \"*.hono.test\", worker: hono }",
            "{ host: beta.test, worker: echo }",
        ),
    );
    assert_eq!(g.put(ALPHA_KEY, "echo", ECHO), 201);
    assert_eq!(g.put(ALPHA_KEY, "hono", HONO), 201);
    assert_eq!(
        g.put(
            BETA_KEY,
            "echo",
            r#"export default { fetch() { return new Response("beta"); } };"#
        ),
        201
    );

    let w = send(
        &g.ingress,
        "POST",
        "/shop/item?id=1&x=%20y",
        &[
            "Host: APP.test:8080",
            "Authorization: Basic dXNlcjpwdw==",
            "Cookie: session=abc; theme=dark",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Host: evil.test",
            "X-Real-IP: 6.6.6.6",
            "X-Custom: kept",
            "Connection: close, X-Hop",
            "X-Hop: dropped",
            "Content-Type: text/plain",
        ],
        b"hello body",
    );
    assert_eq!(w.status, 200, "{}", w.text());
    let v = w.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "http://APP.test:8080/shop/item?id=1&x=%20y");
    assert_eq!(v["body"], "hello body");
    let h = &v["headers"];
    assert_eq!(h["authorization"], "Basic dXNlcjpwdw==");
    assert_eq!(h["cookie"], "session=abc; theme=dark");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "APP.test:8080");
    for gone in ["x-real-ip", "x-hop", "connection"] {
        assert!(h.get(gone).is_none(), "{gone} reached the Worker: {h}");
    }

    // Each host belongs to its tenant.
    assert_eq!(get(&g.ingress, "beta.test", "/", &[]).text(), "beta");

    // A Worker that does its own auth (hono's basic-auth) gets its Authorization header.
    let panel = |auth: Option<&str>| {
        let header = auth.map(|a| format!("Authorization: {a}"));
        get(
            &g.ingress,
            "shop.hono.test",
            "/admin/panel",
            &header.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    assert_eq!(panel(None).status, 401);
    assert_eq!(panel(Some("Basic YWRtaW46d3Jvbmc=")).status, 401); // admin:wrong
    let ok = panel(Some("Basic YWRtaW46czNjcmV0")); // admin:s3cret
    assert_eq!((ok.status, ok.text()), (200, "welcome, admin".to_string()));

    // Metrics are labelled by tenant and route name, never by the host sent.
    let metrics = g.metrics();
    assert!(
        metrics.contains(
            r#"isogate_route_requests_total{route="app",status_class="2xx",tenant="alpha"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"isogate_route_rate_limited_total{route="app",tenant="alpha"} 0"#));
    assert!(
        !metrics.contains("APP.test"),
        "a raw host reached the metrics"
    );
}

#[test]
fn unknown_hosts_get_a_404_naming_nobody_and_the_api_stays_on_api_hosts() {
    let g = start(
        "api_hosts: [api.test, 127.0.0.1]",
        &tenants(
            "{ host: app.test, path_prefix: /app, worker: echo }",
            "{ host: b.test, worker: echo }",
        ),
    );
    assert_eq!(g.put(ALPHA_KEY, "echo", ECHO), 201);
    let execute = |host: &str| {
        send(
            &g.ingress,
            "POST",
            "/v1/execute",
            &[
                &format!("Host: {host}"),
                &format!("Authorization: Bearer {ALPHA_KEY}"),
                "Content-Type: application/json",
            ],
            br#"{"code":"async () => 41 + 1"}"#,
        )
    };
    let api = execute("api.test");
    assert_eq!((api.status, api.json()["result"].clone()), (200, json!(42)));
    for unknown in ["unknown.test", "127.0.0.2", "[::1]", "b.test.evil"] {
        let w = execute(unknown);
        assert_eq!(w.status, 404, "{unknown}: {}", w.text());
        let text = w.text();
        assert!(text.len() < 120, "{text}");
        for name in ["alpha", "beta", "echo", "api.test"] {
            assert!(!text.contains(name), "{unknown}: {text} names {name}");
        }
    }
    // A claimed host never serves the API, even for paths outside its prefixes.
    assert_eq!(execute("app.test").status, 404);
    // Its prefix matches at segment boundaries.
    assert_eq!(get(&g.ingress, "app.test", "/app/x", &[]).status, 200);
    assert_eq!(get(&g.ingress, "app.test", "/app", &[]).status, 200);
    assert_eq!(get(&g.ingress, "app.test", "/apple", &[]).status, 404);
    // A route whose Worker is not stored: 404, nothing named.
    let w = get(&g.ingress, "b.test", "/", &[]);
    assert_eq!(w.status, 404);
    assert!(!w.text().contains("echo"), "{}", w.text());
}

#[test]
fn clients_are_rate_limited_per_ip_and_trusted_proxies_name_the_client() {
    let g = start(
        "trusted_proxies: [127.0.0.1]",
        &tenants(
            "{ host: app.test, worker: echo, name: app, client_rate_limit: { per_second: 1, burst: 2 } }",
            "",
        ),
    );
    assert_eq!(g.put(ALPHA_KEY, "echo", ECHO), 201);
    let from = |client: &str| {
        get(
            &g.ingress,
            "app.test",
            "/",
            &[&format!("X-Forwarded-For: {client}")],
        )
    };
    // The loopback peer is a trusted proxy: the client is the address it forwarded.
    let first = from("198.51.100.1");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.json()["headers"]["x-forwarded-for"],
        "198.51.100.1, 127.0.0.1"
    );
    assert_eq!(from("198.51.100.1").status, 200);
    let limited = from("198.51.100.1");
    assert_eq!(limited.status, 429, "{}", limited.text());
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.json()["error"]["kind"], "rate_limited");
    // Another client has its own budget; a spoofed chain ends at the last untrusted address.
    assert_eq!(from("198.51.100.2").status, 200);
    assert_eq!(from("198.51.100.1, 203.0.113.5").status, 200);
    assert_eq!(from("198.51.100.1, 203.0.113.5").status, 200);
    assert_eq!(from("203.0.113.5").status, 429);
    assert!(g.metric(r#"isogate_route_rate_limited_total{route="app",tenant="alpha"}"#) >= 2.0);
}

#[test]
fn route_limits_bound_headers_and_bodies_and_errors_tell_the_public_the_kind_only() {
    let g = start(
        "",
        &tenants(
            "{ host: app.test, worker: echo, max_header_bytes: 1024, max_body_bytes: 100 }, { host: bad.test, worker: throws }",
            "",
        ),
    );
    assert_eq!(g.put(ALPHA_KEY, "echo", ECHO), 201);
    assert_eq!(g.put(ALPHA_KEY, "throws", THROWS), 201);
    let big = format!("X-Big: {}", "a".repeat(1100));
    let w = get(&g.ingress, "app.test", "/", &[&big]);
    assert_eq!(
        (w.status, w.json()["error"]["kind"].clone()),
        (431, json!("headers_too_large"))
    );
    let w = send(&g.ingress, "POST", "/", &["Host: app.test"], &[b'x'; 101]);
    assert_eq!(w.status, 413);
    let w = send(&g.ingress, "POST", "/", &["Host: app.test"], &[b'x'; 100]);
    assert_eq!(w.status, 200);

    let w = get(&g.ingress, "bad.test", "/", &[]);
    assert_eq!(w.status, 500);
    assert_eq!(w.json()["error"]["kind"], "exception");
    assert!(!w.text().contains("password"), "{}", w.text());
    // Through the API the tenant still sees its own Worker's message.
    let r = g.get_worker(ALPHA_KEY, "throws", "");
    assert!(r.text().unwrap().contains("db password hint"));
}

#[test]
fn a_host_claimed_by_two_tenants_is_refused_by_check_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("isogate.yaml");
    std::fs::write(
        &path,
        format!(
            "tenants:\n{}",
            tenants(
                "{ host: shop.test, worker: a }",
                "{ host: SHOP.test., worker: b }"
            )
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isogate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tenants[1].routes[0].host")
            && stderr.contains("tenants[0].routes[0].host"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS on the ingress.

use common::certs::{Ca, Leaf};
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

/// A gateway with a TLS listener serving `leaves` (in order), alpha's routes `alpha_routes`.
struct TlsGateway {
    g: Gateway,
    tls: String,
    ca: Ca,
    dir: tempfile::TempDir,
}

fn tls_gateway(alpha_routes: &str, names: &[(&str, &[&str])]) -> (TlsGateway, Vec<Leaf>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaves: Vec<Leaf> = names
        .iter()
        .map(|(file, sans)| ca.leaf(dir.path(), file, sans, None))
        .collect();
    let tls = common::free_loopback_addr();
    let port = tls.rsplit_once(':').unwrap().1.to_string();
    let certificates: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{ cert_file: \"{}\", key_file: \"{}\" }}",
                l.cert_file.display(),
                l.key_file.display()
            )
        })
        .collect();
    let g = Gateway::start_listen(
        &format!("ingress_tls: \"{tls}\""),
        POOL,
        &tenants(alpha_routes, ""),
        &format!(
            "tls: {{ https_port: {port}, certificates: [{}] }}\n",
            certificates.join(", ")
        ),
    );
    (TlsGateway { g, tls, ca, dir }, leaves)
}

/// A TLS connection to the gateway, as `sni`, trusting only the test CA.
struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsConn {
    fn open(addr: &str, sni: &str, ca: &Ca) -> TlsConn {
        TlsConn::try_open(addr, sni, ca).unwrap_or_else(|e| panic!("TLS handshake as {sni}: {e}"))
    }

    fn try_open(addr: &str, sni: &str, ca: &Ca) -> Result<TlsConn, rustls::Error> {
        TlsConn::try_open_with(addr, sni, ca, rustls::DEFAULT_VERSIONS)
    }

    fn try_open_with(
        addr: &str,
        sni: &str,
        ca: &Ca,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<TlsConn, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake (it fails here if the certificate does not verify).
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(e
                    .into_inner()
                    .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                    .map_or(rustls::Error::General("handshake I/O".into()), |b| *b));
            }
        }
        Ok(TlsConn { stream })
    }

    /// The leaf certificate the server presented.
    fn leaf(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One keep-alive GET; the answer's status and body (`Content-Length` framed).
    fn get(&mut self, host: &str, target: &str) -> (u16, String) {
        write!(self.stream, "GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        self.stream.flush().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte).expect("answer head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[test]
fn tls_picks_the_certificate_by_sni_and_serves_routes_and_the_api() {
    let (t, leaves) = tls_gateway(
        "{ host: app.test, worker: echo }, { host: \"*.apps.test\", worker: echo }",
        &[
            ("app", &["app.test"]),
            ("apps", &["*.apps.test", "shop.test"]),
        ],
    );
    assert_eq!(t.g.put(ALPHA_KEY, "echo", ECHO), 201);
    let mut app = TlsConn::open(&t.tls, "app.test", &t.ca);
    assert_eq!(app.leaf(), leaves[0].der);
    assert_eq!(
        app.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // TLS 1.2 is still offered (1.0 and 1.1 are not: rustls has neither).
    let mut v12 =
        TlsConn::try_open_with(&t.tls, "app.test", &t.ca, &[&rustls::version::TLS12]).unwrap();
    assert_eq!(
        v12.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(v12.get("app.test", "/").0, 200);
    let (status, body) = app.get("app.test", "/hello?x=1");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let port = t.tls.rsplit_once(':').unwrap().1;
    assert_eq!(v["url"], "https://app.test/hello?x=1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    // Keep-alive: a second request on the same connection.
    assert_eq!(app.get("app.test", "/again").0, 200);

    let mut wild = TlsConn::open(&t.tls, "u1.apps.test", &t.ca);
    assert_eq!(wild.leaf(), leaves[1].der);
    assert_eq!(wild.get("u1.apps.test", "/").0, 200);
    assert_eq!(
        TlsConn::open(&t.tls, "shop.test", &t.ca).leaf(),
        leaves[1].der
    );
    // A wildcard covers one label only: this name gets the default (first) certificate,
    // which does not name it, so the handshake fails verification.
    match TlsConn::try_open(&t.tls, "a.b.apps.test", &t.ca) {
        Err(rustls::Error::InvalidCertificate(_)) => {}
        Err(other) => panic!("unexpected handshake error: {other}"),
        Ok(_) => panic!("a two-label name was served by a wildcard certificate"),
    }

    // curl, as a user would run it: HTTP/1.1 and HTTP/2 (ALPN h2).
    let ca_file = t.dir.path().join("ca.pem");
    std::fs::write(&ca_file, t.ca.pem()).unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&ca_file)
            .args([
                "--resolve",
                &format!("app.test:{port}:127.0.0.1"),
                "-H",
                "Authorization: Bearer user-token",
                "-w",
                "\n%{http_version} %{http_code}",
                &format!("https://app.test:{port}/curl?q=1"),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (json, tail) = text.rsplit_once('\n').unwrap();
        assert_eq!(tail, format!("{version} 200"), "{text}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["url"], format!("https://app.test:{port}/curl?q=1"));
        assert_eq!(v["headers"]["authorization"], "Bearer user-token");
    }

    // The API over TLS, on an unclaimed host.
    let mut api = TlsConn::open(&t.tls, "app.test", &t.ca);
    let (status, _) = api.get("api.other.test", "/v1/workers");
    assert_eq!(
        status, 401,
        "the API answers on unclaimed hosts over TLS too"
    );
}

#[test]
fn a_rotated_certificate_is_served_after_reload_without_dropping_connections() {
    let (t, leaves) = tls_gateway(
        "{ host: app.test, worker: echo }",
        &[("app", &["app.test"])],
    );
    assert_eq!(t.g.put(ALPHA_KEY, "echo", ECHO), 201);
    let mut before = TlsConn::open(&t.tls, "app.test", &t.ca);
    assert_eq!(before.leaf(), leaves[0].der);
    assert_eq!(before.get("app.test", "/").0, 200);
    let reloads = |result: &str| {
        t.g.metric(&format!(
            r#"isogate_tls_reloads_total{{result="{result}"}}"#
        ))
    };
    assert_eq!(reloads("ok"), 0.0);

    // A key that does not belong to the certificate is refused; the old pair keeps serving.
    let other = t.ca.leaf(t.dir.path(), "other", &["app.test"], None);
    std::fs::copy(&other.key_file, &leaves[0].key_file).unwrap();
    wait_for(
        || reloads("rejected") >= 1.0,
        "the mismatched key to be rejected",
        &t.g,
    );
    assert_eq!(
        TlsConn::open(&t.tls, "app.test", &t.ca).leaf(),
        leaves[0].der
    );

    // Rotation: new certificate and key in place (written as a deploy tool would).
    let rotated = t.ca.leaf(t.dir.path(), "rotated", &["app.test"], None);
    std::fs::copy(&rotated.key_file, &leaves[0].key_file).unwrap();
    std::fs::copy(&rotated.cert_file, &leaves[0].cert_file).unwrap();
    wait_for(
        || reloads("ok") >= 1.0,
        "the rotated certificate to load",
        &t.g,
    );
    let mut after = TlsConn::open(&t.tls, "app.test", &t.ca);
    assert_eq!(after.leaf(), rotated.der);
    assert_eq!(after.get("app.test", "/").0, 200);
    // The connection made before the rotation still works.
    assert_eq!(before.get("app.test", "/still").0, 200);
    let metrics = t.g.metrics();
    assert!(
        metrics.contains(
            r#"isogate_tls_certificate_expiry_timestamp_seconds{certificate="app.test"}"#
        ),
        "{metrics}"
    );

    // SIGHUP reloads too.
    let again = t.ca.leaf(t.dir.path(), "again", &["app.test"], None);
    std::fs::copy(&again.key_file, &leaves[0].key_file).unwrap();
    std::fs::copy(&again.cert_file, &leaves[0].cert_file).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &t.g.pid().to_string()])
        .status();
    wait_for(|| reloads("ok") >= 2.0, "the certificate to reload", &t.g);
    assert_eq!(TlsConn::open(&t.tls, "app.test", &t.ca).leaf(), again.der);
    // The readiness probe of the TLS listener completes its handshakes (pingora logs one that
    // is cut short as an error).
    assert!(!t.g.log().contains("handshake"), "{}", t.g.log());
}

#[test]
fn plain_http_redirects_to_https_where_a_route_says_so() {
    let (t, _) = tls_gateway(
        "{ host: app.test, worker: echo, https_redirect: true }, { host: open.test, worker: echo }",
        &[("app", &["app.test", "open.test"])],
    );
    assert_eq!(t.g.put(ALPHA_KEY, "echo", ECHO), 201);
    let port = t.tls.rsplit_once(':').unwrap().1;
    let w = send(
        &t.g.ingress,
        "POST",
        "/pay?x=1",
        &["Host: app.test:8080"],
        b"{}",
    );
    assert_eq!(w.status, 308);
    assert_eq!(
        w.header("location").unwrap(),
        format!("https://app.test:{port}/pay?x=1")
    );
    assert_eq!(get(&t.g.ingress, "open.test", "/", &[]).status, 200);
    // Over TLS the route runs the Worker.
    let mut c = TlsConn::open(&t.tls, "app.test", &t.ca);
    assert_eq!(c.get("app.test", "/pay").0, 200);
}

#[test]
fn check_validates_certificates_and_reports_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let good = ca.leaf(dir.path(), "good", &["app.test", "*.app.test"], None);
    let expired = ca.leaf(
        dir.path(),
        "old",
        &["old.test"],
        Some(((2019, 1, 1), (2020, 1, 1))),
    );
    let stranger = ca.leaf(dir.path(), "stranger", &["x.test"], None);
    let check = |cert: &Leaf, key: &std::path::Path| {
        let path = dir.path().join("isogate.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: {{ ingress_tls: \"127.0.0.1:8443\" }}\ntls: {{ certificates: [{{ cert_file: \"{}\", key_file: \"{}\" }}] }}\ntenants:\n{}",
                cert.cert_file.display(),
                key.display(),
                tenants("", "")
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_isogate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = check(&good, &good.key_file);
    assert!(ok, "{text}");
    assert!(
        text.contains("app.test, *.app.test (key matches)") && text.contains("expires in"),
        "{text}"
    );
    let (ok, text) = check(&good, &stranger.key_file);
    assert!(
        !ok && text.contains("tls.certificates[0].key_file") && text.contains("is not the key"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let (ok, text) = check(&expired, &expired.key_file);
    assert!(!ok && text.contains("EXPIRED"), "{text}");
    let (ok, text) = check(&good, &dir.path().join("missing.key"));
    assert!(
        !ok && text.contains("tls.certificates[0].key_file"),
        "{text}"
    );
}

/// Polls `done` (a readiness signal read off the gateway) for up to 30 s.
fn wait_for(done: impl Fn() -> bool, what: &str, g: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}\nmetrics:\n{}",
            g.log(),
            g.metrics()
                .lines()
                .filter(|l| l.contains("tls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
