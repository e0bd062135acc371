//! SSRF scope against the real gateway (defect 8): `allow_private` opens private addresses only
//! to requests that fully match its rule, also in report mode, and the gateway's own listeners
//! (ingress and admin) are never reachable from a Worker, whatever the rules say. Upstreams are
//! real HTTP servers on loopback; no other address is ever contacted.

mod common;

use common::upstream::{Answer, Upstream};
use common::{free_loopback_pair, sha256_hex, worker, Gateway};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const REPORT_KEY: &str = "ssrf-report-key";
const OPS_KEY: &str = "ssrf-ops-key";
const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";

fn tenant(name: &str, key: &str, egress: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ subrequests: 20 }}\n    egress:\n{egress}",
        sha256_hex(key)
    )
}

/// An upstream that counts the requests it gets and answers `{"upstream": name}`.
fn counting(name: &'static str) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let upstream = Upstream::start(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Answer::json(200, &json!({ "upstream": name }))
    });
    (upstream, hits)
}

/// Runs a Worker that fetches `url` and reports the status and body, or the error.
fn fetch(g: &Gateway, key: &str, url: &str) -> Value {
    let code = worker(&format!(
        r#"export default {{ async fetch() {{
            try {{
                const r = await fetch("{url}");
                return Response.json({{ status: r.status, text: await r.text() }});
            }} catch (e) {{
                return Response.json({{ error: e.name + ": " + e.message }});
            }}
        }} }}"#
    ));
    let r = g.load(key, &code, None);
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

fn assert_refused(v: &Value, what: &str) {
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("SSRF guard"), "{what}: {v}");
}

struct Setup {
    g: Gateway,
    ingress: String,
    admin: String,
    a: Upstream,
    b: Upstream,
    a_hits: Arc<AtomicUsize>,
    b_hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let (a, a_hits) = counting("a");
    let (b, b_hits) = counting("b");
    let (ingress, admin) = free_loopback_pair();
    let port = |addr: &str| addr.rsplit(':').next().unwrap().to_string();
    // `rollout` reports instead of enforcing and opens loopback for port A only.
    let rollout = format!(
        "      mode: report\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          name: a\n",
        a.port
    );
    // `ops` enforces, and explicitly allows the gateway's own listeners (which must not help).
    let ops = format!(
        "      allow:\n        - host: 127.0.0.1\n          ports: [{0}, {1}]\n          allow_private: true\n          name: self\n        - host: localhost\n          ports: [{0}, {1}]\n          allow_private: true\n          name: self-by-name\n        - host: \"[::ffff:127.0.0.1]\"\n          ports: [{0}, {1}]\n          allow_private: true\n          name: self-mapped\n",
        port(&ingress),
        port(&admin)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let g = Gateway::start_at(
        dir.path(),
        &ingress,
        &admin,
        POOL,
        &(tenant("rollout", REPORT_KEY, &rollout) + &tenant("ops", OPS_KEY, &ops)),
        "",
        &[],
    );
    Setup {
        g,
        ingress,
        admin,
        a,
        b,
        a_hits,
        b_hits,
        _dir: dir,
    }
}

#[test]
fn report_mode_allow_private_opens_only_the_matching_port() {
    let s = setup();
    // The rule itself works: a request it allows reaches port A.
    let v = fetch(&s.g, REPORT_KEY, &s.a.url("/x"));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(s.a_hits.load(Ordering::SeqCst), 1);

    // Another loopback port is a report-mode pass, but without the rule's allow_private.
    let v = fetch(&s.g, REPORT_KEY, &s.b.url("/x"));
    assert_refused(&v, "port B");
    assert_eq!(s.b_hits.load(Ordering::SeqCst), 0, "upstream B was reached");
    // It passed the policy (report mode) but the SSRF guard refused it: counted as a denial.
    assert!(
        s.g.metric(
            r#"isogate_egress_requests_total{decision="deny",rule="none",tenant="rollout"}"#
        ) >= 1.0
    );

    // Neither the admin listener (metrics) nor the ingress is reachable.
    let v = fetch(&s.g, REPORT_KEY, &format!("http://{}/metrics", s.admin));
    assert_refused(&v, "admin");
    assert!(!v.to_string().contains("isogate_"), "{v}");
    let v = fetch(
        &s.g,
        REPORT_KEY,
        &format!("http://{}/v1/workers", s.ingress),
    );
    assert_refused(&v, "ingress");
}

#[test]
fn own_listeners_are_unreachable_even_with_an_allow_private_rule() {
    let s = setup();
    let admin_port = s.admin.rsplit(':').next().unwrap();
    let ingress_port = s.ingress.rsplit(':').next().unwrap();
    for url in [
        format!("http://{}/metrics", s.admin),
        format!("http://{}/v1/workers", s.ingress),
        format!("http://localhost:{admin_port}/metrics"),
        format!("http://localhost:{ingress_port}/v1/workers"),
        format!("http://[::ffff:127.0.0.1]:{admin_port}/metrics"),
    ] {
        let v = fetch(&s.g, OPS_KEY, &url);
        assert_refused(&v, &url);
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains("own listener"), "{url}: {v}");
    }
    // The refusals are counted as denials.
    assert!(
        s.g.metric(r#"isogate_egress_requests_total{decision="deny",rule="self",tenant="ops"}"#)
            >= 2.0
    );
    // The upstreams saw nothing from `ops`.
    assert_eq!(s.a_hits.load(Ordering::SeqCst), 0);
    assert_eq!(s.b_hits.load(Ordering::SeqCst), 0);
}
