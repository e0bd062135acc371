//! Vault-backed credentials end to end: the real gateway reads KV v2 secrets from a real
//! OpenBao server (`bao server -dev` on loopback, see `common/bao.rs`) and injects them into a
//! Worker's fetch to a recording upstream. Covered: rotation, a revoked token, a hung server
//! (SIGSTOP), a killed and restarted server, and coalescing of concurrent reads after the
//! cache TTL.
//!
//! Where a test counts the vault requests the gateway makes, a loopback TCP relay
//! ([`CountingProxy`]) sits in front of the real server; it only counts, it answers nothing.
//!
//! Sleeps: the cache TTL passing has no observable signal, so tests sleep just past it; every
//! other wait polls an observable (the gateway log, a metric, the upstream's record).

mod common;

use common::bao::{Bao, CountingProxy, ROOT_TOKEN};
use common::upstream::{Answer, Upstream};
use common::{sha256_hex, worker, Gateway};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "vault-key";
const POOL: &str = "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";
const SECRET_PATH: &str = "agents/github";
const V1: &str = "bao-secret-v1-Qx7";
const V2: &str = "bao-secret-v2-Lm3";
const FAILING: &str = "vault read failing";
const RECOVERED: &str = "vault read recovered";
/// The gateway's vault timeout: the old code made each request wait this long on a hung vault.
const VAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway whose tenant may fetch from a recording upstream with the vault credential.
struct Rig {
    g: Gateway,
    upstream: Upstream,
    /// The `Authorization` header of every request the upstream received.
    recorded: Arc<Mutex<Vec<String>>>,
}

impl Rig {
    /// `address` is the vault's base URL; `token` the gateway's vault token.
    fn start(address: &str, token: &str, ttl_s: u64, max_stale_s: u64) -> Rig {
        let recorded = Arc::new(Mutex::new(Vec::<String>::new()));
        let rec = recorded.clone();
        let upstream = Upstream::start(move |seen| {
            rec.lock().unwrap().push(
                seen.headers
                    .get("authorization")
                    .cloned()
                    .unwrap_or_default(),
            );
            Answer::json(200, &json!({"ok": true}))
        });
        let tenant = format!(
            "  - name: alpha\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ subrequests: 5, max_concurrency: 16 }}\n    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: github\n",
            sha256_hex(KEY),
            upstream.port
        );
        let extra = format!(
            "credentials:\n  - name: github\n    source: {{ vault: {{ backend: main, path: \"secret/data/{SECRET_PATH}\", field: token }} }}\n    inject: {{ header: Authorization, value: \"Bearer ${{secret}}\" }}\n\
             vaults:\n  - name: main\n    kind: hashicorp\n    address: \"{address}\"\n    token: {{ env: VAULT_TOKEN }}\n    cache_ttl_s: {ttl_s}\n    max_stale_s: {max_stale_s}\n"
        );
        let g = Gateway::start_with(
            POOL,
            &tenant,
            &extra,
            &[
                ("VAULT_TOKEN", token),
                ("RUST_LOG", "warn,isogate::vault=info"),
            ],
        );
        Rig {
            g,
            upstream,
            recorded,
        }
    }

    /// One Worker request that fetches the upstream; returns what the Worker saw.
    fn call(&self) -> Value {
        let url = self.upstream.url("/x");
        let code = worker(&format!(
            r#"export default {{ async fetch() {{
                try {{ const r = await fetch("{url}"); return Response.json({{ status: r.status }}); }}
                catch (e) {{ return Response.json({{ error: e.name + ": " + e.message }}); }}
            }} }}"#
        ));
        let r = self.g.load(KEY, &code, None);
        let text = r.text().unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// A call that must succeed; returns the credential the upstream received.
    fn call_ok(&self) -> String {
        let v = self.call();
        assert_eq!(v["status"], 200, "{v}");
        self.last()
    }

    fn last(&self) -> String {
        self.recorded
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn upstream_calls(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    /// Lines of the gateway log containing `text`.
    fn log_lines(&self, text: &str) -> usize {
        self.g.log().lines().filter(|l| l.contains(text)).count()
    }

    /// Calls until the log has a line containing `text`; every call must be served with
    /// `expected`. Returns the number of calls made.
    fn call_until_logged(&self, text: &str, expected: &str, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut calls = 0;
        while self.log_lines(text) == 0 {
            assert!(
                Instant::now() < deadline,
                "no `{text}` line; log:\n{}",
                self.g.log()
            );
            let started = Instant::now();
            assert_eq!(self.call_ok(), format!("Bearer {expected}"));
            assert!(
                started.elapsed() < VAULT_TIMEOUT - Duration::from_secs(1),
                "a request waited {:?} for the vault",
                started.elapsed()
            );
            calls += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        calls
    }

    /// Neither secret value nor `token` appears in the gateway log.
    fn assert_log_clean(&self, token: &str) {
        let log = self.g.log();
        for needle in [V1, V2, token] {
            assert!(!log.contains(needle), "`{needle}` reached the log:\n{log}");
        }
    }

    fn vault_up(&self) -> f64 {
        self.g.metric(r#"isogate_vault_up{vault="main"}"#)
    }
}

/// `n` concurrent calls; returns each one's credential and duration.
fn burst(rig: &Rig, n: usize) -> Vec<(String, Duration)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let started = Instant::now();
                    let v = rig.call();
                    assert_eq!(v["status"], 200, "{v}");
                    (started.elapsed(), v)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // Which credential each call carried: the upstream's record holds them all, in order.
        let recorded = rig.recorded.lock().unwrap();
        let tail = &recorded[recorded.len() - n..];
        results
            .iter()
            .zip(tail)
            .map(|((took, _), auth)| (auth.clone(), *took))
            .collect()
    })
}

fn wait_past_ttl(ttl: Duration) {
    // No signal exists for "the cache TTL has passed": sleep just past it.
    std::thread::sleep(ttl + Duration::from_millis(200));
}

#[test]
fn rotated_secret_is_used_after_the_ttl_and_concurrent_readers_share_one_read() {
    let bao = Bao::start();
    bao.put_secret(SECRET_PATH, json!({ "token": V1 }));
    let proxy = CountingProxy::start(bao.port);
    let ttl = Duration::from_secs(2);
    let rig = Rig::start(&proxy.address(), ROOT_TOKEN, 2, 60);
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));
    assert_eq!(proxy.requests(), 1);

    // Rotation: once the TTL has passed, the next request triggers one refresh (and is served
    // the cached value meanwhile); the requests after it carry the new value.
    bao.put_secret(SECRET_PATH, json!({ "token": V2 }));
    let deadline = Instant::now() + Duration::from_secs(15);
    while rig.call_ok() != format!("Bearer {V2}") {
        assert!(Instant::now() < deadline, "rotated value never used");
        std::thread::sleep(Duration::from_millis(200));
    }
    for auth in rig.recorded.lock().unwrap().iter() {
        assert!(
            *auth == format!("Bearer {V1}") || *auth == format!("Bearer {V2}"),
            "{auth}"
        );
    }

    // Eight concurrent requests after the TTL: all served, and one vault read between them
    // (one per TTL period at most, should the burst itself outlast a TTL).
    wait_past_ttl(ttl);
    let (requests, connections) = (proxy.requests(), proxy.connections());
    let started = Instant::now();
    let results = burst(&rig, 8);
    let took = started.elapsed();
    assert!(results.iter().all(|(a, _)| *a == format!("Bearer {V2}")));
    let reads = proxy.requests() - requests;
    let allowed = 1 + (took.as_secs_f64() / ttl.as_secs_f64()) as usize;
    assert!(
        (1..=allowed).contains(&reads),
        "{reads} vault reads for 8 concurrent requests in {took:?}"
    );
    assert!(
        proxy.connections() - connections <= reads,
        "more vault connections than reads"
    );
    rig.assert_log_clean(ROOT_TOKEN);
}

#[test]
fn revoked_token_serves_stale_until_max_stale_then_fails_closed_clearly() {
    let bao = Bao::start();
    bao.put_secret(SECRET_PATH, json!({ "token": V1 }));
    bao.put_policy(
        "isogate-read",
        r#"path "secret/data/agents/*" { capabilities = ["read"] }"#,
    );
    let token = bao.create_token(&["isogate-read"]);
    let max_stale = Duration::from_secs(3);
    let before_first = Instant::now();
    let rig = Rig::start(&bao.address(), &token, 1, 3);
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));
    assert_eq!(rig.vault_up(), 1.0);

    bao.revoke_token(&token);
    // Past the TTL the refresh is refused (403), and the cached value is still served.
    wait_past_ttl(Duration::from_secs(1));
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));

    // Within max_stale_s of the last good read it keeps serving; then it fails closed.
    let deadline = Instant::now() + max_stale + Duration::from_secs(10);
    let error = loop {
        assert!(Instant::now() < deadline, "never failed closed");
        let served = rig.upstream_calls();
        let v = rig.call();
        if v["status"] == 200 {
            assert_eq!(rig.last(), format!("Bearer {V1}"));
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(
            rig.upstream_calls(),
            served,
            "upstream contacted without a credential"
        );
        break v["error"].as_str().unwrap_or_default().to_string();
    };
    // The last good read happened after the gateway started: stale service lasted its time.
    assert!(before_first.elapsed() >= max_stale);
    assert!(
        error.contains("credential `github` is unavailable")
            && error.contains("denied")
            && error.contains("403")
            && error.contains("max_stale_s"),
        "{error}"
    );
    assert!(!error.contains(V1) && !error.contains(&token), "{error}");

    // Further requests keep failing closed; the failing reads back off and the outage is
    // logged once, not once per request or per read.
    for _ in 0..5 {
        assert!(rig.call()["error"].is_string());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        rig.g
            .metric(r#"isogate_secret_fetch_errors_total{source="vault"}"#)
            >= 2.0
    );
    assert_eq!(rig.log_lines(FAILING), 1, "{}", rig.g.log());
    assert_eq!(rig.vault_up(), 0.0);
    assert!(
        rig.g
            .metric(r#"isogate_vault_read_duration_seconds_count{outcome="denied",vault="main"}"#)
            >= 2.0
    );
    rig.assert_log_clean(&token);
}

#[test]
fn hung_vault_is_not_waited_for_and_concurrent_requests_open_one_read() {
    let bao = Bao::start();
    bao.put_secret(SECRET_PATH, json!({ "token": V1 }));
    let proxy = CountingProxy::start(bao.port);
    let rig = Rig::start(&proxy.address(), ROOT_TOKEN, 1, 60);
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));
    assert_eq!(proxy.requests(), 1);

    // SIGSTOP: the server accepts connections (kernel backlog) but never answers.
    bao.pause();
    wait_past_ttl(Duration::from_secs(1));
    let (before, connections) = (proxy.requests(), proxy.connections());
    // Eight concurrent requests after the TTL: each is served from the cache at once, and
    // together they opened exactly one vault read (still outstanding: nothing answers).
    for (auth, took) in burst(&rig, 8) {
        assert_eq!(auth, format!("Bearer {V1}"));
        assert!(
            took < VAULT_TIMEOUT - Duration::from_secs(1),
            "a request waited {took:?} for the hung vault"
        );
    }
    assert_eq!(proxy.requests() - before, 1, "vault reads during the burst");
    assert!(
        proxy.connections() - connections <= 1,
        "vault connections opened during the burst: {}",
        proxy.connections() - connections
    );

    // The refresh times out; requests go on being served and the outage is logged once.
    let mut calls = 8 + rig.call_until_logged(FAILING, V1, Duration::from_secs(20));
    for _ in 0..10 {
        assert_eq!(rig.call_ok(), format!("Bearer {V1}"));
        calls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let reads = proxy.requests() - before;
    assert!(
        reads <= 3 && reads < calls,
        "{reads} vault reads for {calls} requests during the hang"
    );
    assert_eq!(rig.log_lines(FAILING), 1, "{}", rig.g.log());
    assert_eq!(rig.vault_up(), 0.0);
    assert!(
        rig.g
            .metric(r#"isogate_vault_read_duration_seconds_count{outcome="timeout",vault="main"}"#)
            >= 1.0
    );

    // SIGCONT: the next refresh succeeds, logged once.
    bao.resume();
    rig.call_until_logged(RECOVERED, V1, Duration::from_secs(20));
    assert_eq!(rig.log_lines(RECOVERED), 1);
    assert_eq!(rig.log_lines(FAILING), 1);
    assert_eq!(rig.vault_up(), 1.0);
    rig.assert_log_clean(ROOT_TOKEN);
}

#[test]
fn killed_vault_serves_stale_then_fails_closed_then_recovers_when_restarted() {
    let mut bao = Bao::start();
    let port = bao.port;
    bao.put_secret(SECRET_PATH, json!({ "token": V1 }));
    let max_stale = Duration::from_secs(4);
    let rig = Rig::start(&bao.address(), ROOT_TOKEN, 1, 4);
    let before_first = Instant::now();
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));

    bao.kill();
    wait_past_ttl(Duration::from_secs(1));
    assert_eq!(rig.call_ok(), format!("Bearer {V1}"));
    let deadline = Instant::now() + max_stale + Duration::from_secs(10);
    let error = loop {
        assert!(Instant::now() < deadline, "never failed closed");
        let served = rig.upstream_calls();
        let v = rig.call();
        if v["status"] == 200 {
            assert_eq!(rig.last(), format!("Bearer {V1}"));
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(
            rig.upstream_calls(),
            served,
            "upstream contacted without a credential"
        );
        break v["error"].as_str().unwrap_or_default().to_string();
    };
    // The last good read was no earlier than `before_first`: it was served max_stale_s long.
    assert!(
        before_first.elapsed() >= max_stale,
        "failed closed after {:?}",
        before_first.elapsed()
    );
    assert!(
        error.contains("credential `github` is unavailable")
            && error.contains("unreachable")
            && error.contains("max_stale_s"),
        "{error}"
    );
    assert!(!error.contains(V1), "{error}");
    assert_eq!(rig.vault_up(), 0.0);
    assert_eq!(rig.log_lines(FAILING), 1, "{}", rig.g.log());

    // A new server on the same address (dev mode keeps nothing: write the secret again).
    let bao = Bao::start_on(port);
    bao.put_secret(SECRET_PATH, json!({ "token": V2 }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "never recovered; log:\n{}",
            rig.g.log()
        );
        let v = rig.call();
        if v["status"] == 200 {
            assert_eq!(rig.last(), format!("Bearer {V2}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rig.log_lines(RECOVERED), 1, "{}", rig.g.log());
    assert_eq!(rig.log_lines(FAILING), 1);
    assert_eq!(rig.vault_up(), 1.0);
    rig.assert_log_clean(ROOT_TOKEN);
}
