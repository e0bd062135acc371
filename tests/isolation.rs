//! The second wall (issue 9) against the real binary: Workers run in confined worker processes
//! (seccomp, no_new_privs, empty environment) that hold no secret; the confinement kills what an
//! engine bug could do; a supervisor replaces a dead worker, fails only the invocations that were
//! in flight on it, and kills a worker whose invocation overruns its limits inside one native
//! call; tenants that kill workers repeatedly are cordoned in a quarantine worker.
//!
//! Every gateway here names `isolation: process` (or `thread`) itself, so this file means the
//! same under `ISOGATE_TEST_ISOLATION=thread`.
#![allow(unsafe_code)] // reading and signalling worker processes in tests (OS APIs); each block has a `// SAFETY:` line

mod common;

use common::upstream::echo;
use common::{fixtures, worker, Gateway};
use isogate_gateway::supervisor::cordon::home;
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

const PROCESSES: usize = 2;
const POOL: &str = "isolation: process, processes: 2, threads: 4, warm_isolates: 4, max_cached_workers: 100, idle_ttl_s: 300";
const LIMITS: &str = "cpu_ms: 2000, memory_mb: 64, wall_ms: 20000, subrequests: 50, max_concurrency: 8, max_cached_workers: 10, max_body_bytes: 1048576";
const PROBES: &[(&str, &str)] = &[("ISOGATE_TEST_PROBES", "1")];

/// A tenant name whose home worker (of [`PROCESSES`]) is `slot`, distinct from `not`.
fn tenant_on(slot: usize, not: &[&str]) -> String {
    (0..)
        .map(|i| format!("t{i}"))
        .find(|t| home(t, PROCESSES) == slot && !not.contains(&t.as_str()))
        .expect("a tenant name")
}

fn key(tenant: &str) -> String {
    format!("{tenant}-key")
}

fn tenant(name: &str, limits: &str) -> String {
    common::tenant_yaml(name, &key(name), limits)
}

/// Polls `cond` until it holds, at most `limit`; panics with `what` otherwise.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn restarts(g: &Gateway, cause: &str) -> f64 {
    g.metric(&format!(
        "isogate_worker_restarts_total{{cause=\"{cause}\"}}"
    ))
}

fn all_restarts(g: &Gateway) -> f64 {
    g.metrics()
        .lines()
        .filter(|l| l.starts_with("isogate_worker_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn status_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// `POST /v1/execute` as `tenant`: (HTTP status, body).
fn execute(g: &Gateway, tenant: &str, code: &str) -> (u16, Value) {
    let r = g.post_json(&key(tenant), "/v1/execute", &json!({ "code": code }));
    let status = r.status().as_u16();
    (status, r.json().expect("json"))
}

/// The `kind` of an execute answer's error (`null` when it succeeded).
fn kind(v: &Value) -> Value {
    v["error"]["kind"].clone()
}

fn served(g: &Gateway, tenant: &str) {
    let (s, v) = execute(g, tenant, "async () => 40 + 2");
    assert_eq!((s, &v["result"]), (200, &json!(42)), "{v}");
}

/// Waits until `PROCESSES` workers are up, none of them in `gone`, and the gateway is ready.
fn wait_replaced(g: &Gateway, gone: &[u32]) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_for("the worker to be replaced", Duration::from_secs(30), || {
        pids = g.worker_pids();
        pids.len() == PROCESSES && pids.iter().all(|p| !gone.contains(p)) && g.is_ready()
    });
    pids
}

/// `POST /debug/probe/{what}?tenant=`: status and body.
fn probe(g: &Gateway, what: &str, tenant: &str) -> (u16, Value) {
    let r = g
        .client
        .post(format!(
            "http://{}/debug/probe/{what}?tenant={tenant}",
            g.admin
        ))
        .send()
        .expect("probe");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// The pid of `tenant`'s worker process, found by the probe route: the worker that a `socket`
/// probe kills is the tenant's, and its replacement is the one new pid.
fn worker_of(g: &Gateway, tenant: &str) -> u32 {
    let before = g.worker_pids();
    let seccomp = restarts(g, "seccomp");
    let (s, v) = probe(g, "socket", tenant);
    assert_eq!(s, 200, "{v}");
    let killed = v["pid"].as_u64().expect("pid") as u32;
    assert!(before.contains(&killed), "{killed} not in {before:?}");
    wait_for("the seccomp kill", Duration::from_secs(20), || {
        restarts(g, "seccomp") > seccomp
    });
    let after = wait_replaced(g, &[killed]);
    let new: Vec<u32> = after
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "before {before:?} after {after:?}");
    new[0]
}

#[test]
fn workers_exist_and_are_confined() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start(POOL, &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)));
    let pids = g.worker_pids();
    assert_eq!(pids.len(), PROCESSES, "worker processes: {pids:?}");
    assert_eq!(g.metric("isogate_worker_processes"), PROCESSES as f64);
    for &pid in &pids {
        assert_ne!(pid, g.pid());
        let status = status_of(pid);
        assert!(status.contains("Seccomp:\t2"), "pid {pid}:\n{status}");
        assert!(status.contains("NoNewPrivs:\t1"), "pid {pid}:\n{status}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(
            environ.is_empty(),
            "pid {pid} environment: {}",
            String::from_utf8_lossy(&environ)
        );
        // A worker holds no network socket: every socket it has is an unnamed AF_UNIX one
        // (its channel to the gateway and its runtime's internal socket pairs).
        let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).expect("net/unix");
        let unnamed: Vec<&str> = unix
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 7).then(|| f[6])
            })
            .collect();
        let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .filter_map(|l| {
                Some(
                    l.strip_prefix("socket:[")?
                        .trim_end_matches(']')
                        .to_string(),
                )
            })
            .collect();
        assert!(!sockets.is_empty(), "pid {pid} has no channel");
        for inode in &sockets {
            assert!(
                unnamed.contains(&inode.as_str()),
                "pid {pid} holds socket {inode}, not an unnamed unix socket"
            );
        }
    }
    // The gateway itself is not under the worker filter (it must open sockets and files).
    assert!(status_of(g.pid()).contains("Seccomp:\t0"));
    // Both workers serve.
    served(&g, &a);
    served(&g, &b);
    assert_eq!(g.worker_pids(), pids);
    // The probe route exists only with ISOGATE_TEST_PROBES=1.
    let (s, _) = probe(&g, "socket", &a);
    assert_eq!(s, 404);
    assert_eq!(g.worker_pids(), pids);
}

#[test]
fn the_filter_kills_a_worker_that_opens_a_socket_or_a_file() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start_with(
        POOL,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    served(&g, &a);
    for (n, what) in ["socket", "open"].into_iter().enumerate() {
        let before = g.worker_pids();
        let (s, v) = probe(&g, what, &a);
        assert_eq!(s, 200, "{v}");
        let pid = v["pid"].as_u64().expect("pid") as u32;
        assert!(before.contains(&pid), "{pid} not in {before:?}");
        wait_for(
            &format!("the {what} probe's seccomp kill"),
            Duration::from_secs(20),
            || restarts(&g, "seccomp") == (n + 1) as f64,
        );
        let after = wait_replaced(&g, &[pid]);
        // Only the probed worker was replaced.
        let kept: Vec<_> = before.iter().filter(|p| **p != pid).collect();
        assert!(
            kept.iter().all(|p| after.contains(p)),
            "{before:?} {after:?}"
        );
        served(&g, &a);
        served(&g, &b);
    }
    assert_eq!(all_restarts(&g), 2.0, "{}", g.metrics());
    assert!(
        !g.log().contains("confinement is not in force"),
        "{}",
        g.log()
    );
}

#[test]
fn unbounded_native_allocation_in_a_worker_ends_at_the_process_limit() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let pool = format!("{POOL}, process_memory_mb: 256");
    let g = Gateway::start_with(
        &pool,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    let gateway = g.pid();
    let (s, v) = probe(&g, "exhaust", &a);
    assert_eq!(s, 200, "{v}");
    let pid = v["pid"].as_u64().expect("pid") as u32;
    wait_for("the abort", Duration::from_secs(30), || {
        restarts(&g, "abort") == 1.0
    });
    wait_replaced(&g, &[pid]);
    assert_eq!(g.pid(), gateway);
    assert!(g
        .client
        .get(format!("http://{}/healthz", g.admin))
        .send()
        .is_ok_and(|r| r.status() == 200));
    served(&g, &a);
    served(&g, &b);
    assert_eq!(all_restarts(&g), 1.0, "{}", g.metrics());
}

/// The Worker's memory and environment, searched for `needles`; which were found.
fn scan_process(pid: u32, needles: &[&[u8]]) -> Vec<usize> {
    let mut found = Vec::new();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    for (i, n) in needles.iter().enumerate() {
        if memchr::memmem::find(&environ, n).is_some() {
            found.push(i);
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Read in chunks that overlap by the longest needle, so no match straddles two reads.
        let mut at = start;
        let mut carry: Vec<u8> = Vec::new();
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            if mem.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            let got = match mem.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break, // unreadable region (guard pages etc.)
                Ok(n) => n,
            };
            scanned += got as u64;
            carry.extend_from_slice(&buf[..got]);
            for (i, n) in needles.iter().enumerate() {
                if !found.contains(&i) && memchr::memmem::find(&carry, n).is_some() {
                    found.push(i);
                }
            }
            let keep = carry.len().min(longest);
            carry.drain(..carry.len() - keep);
            at += got as u64;
        }
    }
    assert!(scanned > 1 << 20, "scanned only {scanned} bytes of {pid}");
    found
}

#[test]
fn no_secret_in_a_worker_process() {
    use base64::Engine as _;
    let secret = format!("isogate-wall-secret-{}-Zq8x", std::process::id());
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("Bearer {secret}"));
    let plain_b64 = base64::engine::general_purpose::STANDARD.encode(&secret);
    let upstream = echo();
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let egress = format!(
        "    egress:\n      mode: enforce\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          credential: wall\n          name: echo\n",
        upstream.port
    );
    let tenants = format!(
        "{}{egress}{}{egress}",
        tenant(&a, LIMITS),
        tenant(&b, LIMITS)
    );
    let credentials = "credentials:\n  - name: wall\n    source: { env: ISOGATE_TEST_WALL_SECRET }\n    inject: { header: Authorization, value: \"Bearer ${secret}\" }\n";
    let g = Gateway::start_with(
        POOL,
        &tenants,
        credentials,
        &[("ISOGATE_TEST_WALL_SECRET", secret.as_str())],
    );
    let url = upstream.url("/api/whoami");
    let fetcher = worker(&format!(
        r#"export default {{ async fetch() {{
            const seen = [];
            for (let i = 0; i < 10; i++) {{
                const r = await fetch("{url}?i=" + i, {{ method: "POST", body: "x".repeat(100) }});
                seen.push(r.headers.get("x-echo-authorization"), await r.text());
            }}
            return Response.json(seen);
        }} }}"#
    ));
    for t in [&a, &b] {
        for _ in 0..5 {
            let r = g.load(&key(t), &fetcher, None);
            assert_eq!(r.status(), 200);
            let text = r.text().unwrap();
            assert!(text.contains("Bearer [REDACTED]"), "{text}");
            assert!(!text.contains(&secret));
        }
    }
    assert!(
        g.metric(r#"isogate_credentials_injected_total{credential="wall"}"#) >= 100.0,
        "{}",
        g.metrics()
    );
    let needles: [&[u8]; 3] = [secret.as_bytes(), encoded.as_bytes(), plain_b64.as_bytes()];
    let pids = g.worker_pids();
    assert_eq!(pids.len(), PROCESSES);
    for pid in pids {
        let found = scan_process(pid, &needles);
        assert!(
            found.is_empty(),
            "worker {pid} holds the secret (needles {found:?})"
        );
    }
    // Control: the same scan finds the secret in the gateway, which holds it.
    let found = scan_process(g.pid(), &needles);
    assert!(
        found.contains(&0),
        "the scan does not find the secret where it is"
    );
}

#[test]
fn kill_9_of_a_worker_fails_only_its_in_flight_requests() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start_with(
        POOL,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    let pid_a = worker_of(&g, &a);
    let pid_b = *g
        .worker_pids()
        .iter()
        .find(|p| **p != pid_a)
        .expect("the other worker");
    let slow = |ms: u64| {
        worker(&format!(
            "export default {{ async fetch() {{ await new Promise(r => setTimeout(r, {ms})); return new Response('slow done'); }} }}"
        ))
    };
    let in_flight = g.metric("isogate_worker_invocations_in_flight");
    std::thread::scope(|s| {
        let (ka, kb) = (key(&a), key(&b));
        let (ga, gb) = (&g, &g);
        let (slow_a, slow_b) = (slow(15_000), slow(3_000));
        let on_a = s.spawn(move || {
            let r = ga.load(&ka, &slow_a, None);
            let status = r.status().as_u16();
            (status, r.json::<Value>().unwrap_or(Value::Null))
        });
        let on_b = s.spawn(move || {
            let r = gb.load(&kb, &slow_b, None);
            (r.status().as_u16(), r.text().unwrap_or_default())
        });
        wait_for(
            "both slow requests in flight",
            Duration::from_secs(10),
            || g.metric("isogate_worker_invocations_in_flight") >= in_flight + 2.0,
        );
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid_a.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let started = Instant::now();
        let (status, v) = on_a.join().unwrap();
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["kind"], "worker_crashed", "{v}");
        assert!(started.elapsed() < Duration::from_secs(10), "{v}");
        let (status, text) = on_b.join().unwrap();
        assert_eq!((status, text.as_str()), (200, "slow done"));
    });
    assert_eq!(restarts(&g, "signal"), 1.0, "{}", g.metrics());
    let pids = wait_replaced(&g, &[pid_a]);
    assert!(pids.contains(&pid_b), "the other worker was not replaced");
    served(&g, &a);
    let r = g.load(&key(&a), &worker(fixtures::HELLO), None);
    assert_eq!(r.text().unwrap(), "hello from isogate");
    served(&g, &b);
}

const STALL: &str = "async () => 'a'.repeat(2e6).indexOf('a'.repeat(2e3) + 'b')";
const STALL_LIMITS: &str = "cpu_ms: 50, memory_mb: 64, wall_ms: 2000, subrequests: 5, max_concurrency: 8, max_cached_workers: 10, max_body_bytes: 65536";

/// How much slower than its CPU time a busy thread runs right now (>= 1): the watchdog reads the
/// worker thread's CPU clock, and on an oversubscribed machine (CI runners, parallel builds) CPU
/// time advances slower than wall time, so the CPU part of a wall-time bound is scaled by this.
fn cpu_slowdown() -> f64 {
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut x = 0u64;
    while thread_cpu() - cpu < Duration::from_millis(100) {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    (wall.elapsed().as_secs_f64() / 0.1).max(1.0)
}

/// Runs the indexOf stall as `tenant`: its error kind and how long the request took.
fn stall(g: &Gateway, tenant: &str) -> (Value, Duration) {
    let started = Instant::now();
    let (s, v) = execute(g, tenant, STALL);
    let took = started.elapsed();
    assert!(s == 200 || s == 503, "{s} {v}");
    (kind(&v), took)
}

#[test]
fn a_stall_inside_one_native_call_ends_as_cpu_limit_and_others_are_served() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let pool = format!("{POOL}, grace_ms: 100");
    let g = Gateway::start(
        &pool,
        &(tenant(&a, STALL_LIMITS) + &tenant(&b, STALL_LIMITS)),
    );
    served(&g, &a);
    served(&g, &b);
    let kills = g.metric(r#"isogate_watchdog_kills_total{limit="cpu"}"#);
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Stops B's loop however the scope ends (an assertion failing included).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&done);
        let other = s.spawn(|| {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || n == 0 {
                let started = Instant::now();
                served(&g, &b);
                worst = worst.max(started.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20)); // paced: B must not load the machine
            }
            (worst, n)
        });
        for round in 0..3 {
            // The issue's bound: cpu_ms + grace_ms + 250 ms (the CPU part scaled by contention).
            let slowdown = cpu_slowdown();
            let bound =
                Duration::from_millis(50 + 100).mul_f64(slowdown) + Duration::from_millis(250);
            let (kind, took) = stall(&g, &a);
            assert_eq!(kind, "cpu_limit", "round {round}");
            assert!(
                took <= bound,
                "round {round}: the stall took {took:?} (bound {bound:?}, CPU slowdown {slowdown:.2})"
            );
            // The next request of A runs on the replaced worker.
            served(&g, &a);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (worst, n) = other.join().unwrap();
        assert!(
            worst < Duration::from_secs(1),
            "tenant B waited {worst:?} (of {n} requests)"
        );
    });
    assert_eq!(
        g.metric(r#"isogate_watchdog_kills_total{limit="cpu"}"#),
        kills + 3.0
    );
    assert_eq!(restarts(&g, "watchdog_cpu"), 3.0);
}

#[test]
fn huge_buffer_costs_at_most_one_worker_and_the_gateway_serves_on() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start(POOL, &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)));
    let gateway = g.pid();
    let pids = g.worker_pids();
    let (s, v) = execute(&g, &a, "async () => Buffer.alloc(2**40).length");
    assert!(s == 200 || s == 503, "{s} {v}");
    assert_eq!(kind(&v), "memory_limit", "{v}");
    assert!(all_restarts(&g) <= 1.0, "{}", g.metrics());
    let after = wait_replaced(&g, &[]);
    // B's worker is untouched.
    let b_worker: Vec<_> = pids.iter().filter(|p| after.contains(p)).collect();
    assert!(!b_worker.is_empty(), "{pids:?} {after:?}");
    assert_eq!(g.pid(), gateway);
    served(&g, &a);
    served(&g, &b);
}

const BLOBS: &str = r#"const blobs = [];
export default { async fetch() {
    for (let i = 0; i < 4; i++) blobs.push(new Blob([new Uint8Array(4 << 20).fill(i + 1)]));
    return Response.json({ blobs: blobs.length });
} }"#;

#[test]
fn blob_accumulation_ends_at_the_limit_without_harming_the_other_worker() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start(POOL, &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)));
    assert_eq!(g.put(&key(&a), "hoard", BLOBS), 201);
    assert_eq!(g.put(&key(&b), "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(&key(&b), "counter"), 1);
    let pids = g.worker_pids();
    let mut ended = None;
    for i in 0..200 {
        let r = g.get_worker(&key(&a), "hoard", "");
        let status = r.status().as_u16();
        let v: Value = r.json().expect("json");
        if status != 200 {
            ended = Some((i, status, v));
            break;
        }
        assert_eq!(v["blobs"], 4 * (i + 1), "{v}");
    }
    let (i, status, v) = ended.expect("the hoard never hit a limit");
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        v["error"]["kind"], "memory_limit",
        "after {i} requests: {v}"
    );
    // The other worker kept its process and B's Worker its state.
    let b_pid: Vec<_> = pids
        .iter()
        .filter(|p| g.worker_pids().contains(p))
        .collect();
    assert!(!b_pid.is_empty(), "both workers were replaced");
    assert_eq!(g.count(&key(&b), "counter"), 2);
    // A's Worker starts afresh.
    let r = g.get_worker(&key(&a), "hoard", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["blobs"], 4);
}

#[test]
fn a_tenant_that_keeps_killing_workers_is_cordoned_in_the_quarantine_worker() {
    let a = tenant_on(0, &[]);
    let b = tenant_on(0, &[&a]); // shares A's home worker
    let c = tenant_on(1, &[]);
    let pool = format!(
        "{POOL}, grace_ms: 100, quarantine: {{ after_kills: 2, window_s: 60, hold_s: 60 }}"
    );
    let g = Gateway::start(
        &pool,
        &(tenant(&a, STALL_LIMITS) + &tenant(&b, STALL_LIMITS) + &tenant(&c, STALL_LIMITS)),
    );
    for round in 1..=2 {
        let (kind, _) = stall(&g, &a);
        assert_eq!(kind, "cpu_limit", "round {round}");
        wait_for("the restart", Duration::from_secs(20), || {
            restarts(&g, "watchdog_cpu") == round as f64
        });
    }
    wait_for("the cordon", Duration::from_secs(5), || {
        g.metric("isogate_cordoned_tenants") == 1.0
    });
    assert!(g.log().contains("quarantine"), "{}", g.log());
    let homes = wait_replaced(&g, &[]);
    // A now runs in a third worker process, the quarantine worker.
    served(&g, &a);
    let mut quarantine = 0;
    wait_for("the quarantine worker", Duration::from_secs(20), || {
        let pids = g.worker_pids();
        let extra: Vec<_> = pids.iter().filter(|p| !homes.contains(p)).collect();
        if pids.len() == PROCESSES + 1 && extra.len() == 1 {
            quarantine = *extra[0];
            true
        } else {
            false
        }
    });
    assert!(status_of(quarantine).contains("Seccomp:\t2"));
    // B, on A's home worker, builds up state there.
    assert_eq!(g.put(&key(&b), "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(&key(&b), "counter"), 1);
    assert_eq!(g.count(&key(&b), "counter"), 2);
    // A's next stall costs only the quarantine worker.
    let (kind, _) = stall(&g, &a);
    assert_eq!(kind, "cpu_limit");
    wait_for("the third restart", Duration::from_secs(20), || {
        restarts(&g, "watchdog_cpu") == 3.0
    });
    let pids = g.worker_pids();
    assert!(homes.iter().all(|p| pids.contains(p)), "{homes:?} {pids:?}");
    assert!(!pids.contains(&quarantine));
    assert_eq!(g.count(&key(&b), "counter"), 3);
    served(&g, &c);
    served(&g, &a);
    assert_eq!(g.metric("isogate_cordoned_tenants"), 1.0);
}

#[test]
fn readyz_is_not_ready_while_the_workers_are_down() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    // Many warm isolates per worker: a restarted worker takes a while to be ready again.
    let pool = "isolation: process, processes: 2, threads: 2, warm_isolates: 64, max_cached_workers: 100, idle_ttl_s: 300";
    let g = Gateway::start(pool, &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)));
    assert!(g.is_ready());
    let before = g.worker_pids();
    assert_eq!(before.len(), PROCESSES);
    for pid in &before {
        assert!(std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill")
            .success());
    }
    wait_for(
        "/readyz to report not ready",
        Duration::from_secs(10),
        || !g.is_ready(),
    );
    let r = g
        .client
        .get(format!("http://{}/healthz", g.admin))
        .send()
        .expect("healthz");
    assert_eq!(r.status(), 200, "the gateway itself stays healthy");
    let after = wait_replaced(&g, &before);
    assert_eq!(after.len(), PROCESSES);
    served(&g, &a);
    served(&g, &b);
}

#[test]
fn thread_mode_has_no_worker_processes_and_still_serves() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let pool =
        "isolation: thread, threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";
    let g = Gateway::start_with(
        pool,
        &(tenant(&a, STALL_LIMITS) + &tenant(&b, STALL_LIMITS)),
        "",
        PROBES,
    );
    assert!(g.worker_pids().is_empty());
    assert_eq!(g.metric("isogate_worker_processes"), 0.0);
    served(&g, &a);
    served(&g, &b);
    assert_eq!(g.put(&key(&b), "counter", fixtures::COUNTER), 201);
    assert_eq!(g.count(&key(&b), "counter"), 1);
    // A memory bomb is still stopped in the isolate.
    let (_, v) = execute(&g, &a, "async () => Buffer.alloc(2**40).length");
    assert_eq!(kind(&v), "memory_limit", "{v}");
    // There is no worker to probe.
    let (s, v) = probe(&g, "socket", &a);
    assert_eq!(s, 409, "{v}");
    assert_eq!(g.count(&key(&b), "counter"), 2);
    assert!(g.worker_pids().is_empty());
}

#[test]
fn the_harness_runs_gateways_in_the_mode_ci_asks_for() {
    // A gateway started without naming an isolation: process mode by default, thread mode
    // under ISOGATE_TEST_ISOLATION=thread (the second CI pass).
    let a = tenant_on(0, &[]);
    let g = Gateway::start(
        "threads: 2, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300",
        &tenant(&a, LIMITS),
    );
    let workers = g.worker_pids().len();
    if common::thread_mode() {
        assert_eq!(workers, 0);
    } else {
        assert!(workers >= PROCESSES, "{workers} worker processes");
    }
    served(&g, &a);
}

#[test]
fn a_worker_whose_heartbeats_stop_is_killed_and_replaced() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start_with(
        POOL,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    let pid_a = worker_of(&g, &a);
    // Frozen (as a worker stuck outside any invocation would be): no heartbeat, no answer.
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid_a.to_string()])
        .status()
        .expect("kill")
        .success());
    wait_for("the heartbeat kill", Duration::from_secs(20), || {
        g.metric(r#"isogate_watchdog_kills_total{limit="heartbeat"}"#) == 1.0
    });
    let pids = wait_replaced(&g, &[pid_a]);
    assert_eq!(pids.len(), PROCESSES);
    assert_eq!(restarts(&g, "heartbeat"), 1.0, "{}", g.metrics());
    served(&g, &a);
    served(&g, &b);
}

#[test]
fn a_malformed_or_oversized_frame_kills_that_worker_never_the_gateway() {
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start_with(
        POOL,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    let gateway = g.pid();
    for (n, what) in ["garbage", "oversized"].into_iter().enumerate() {
        let before = g.worker_pids();
        let (s, v) = probe(&g, what, &a);
        assert_eq!(s, 200, "{v}");
        let pid = v["pid"].as_u64().expect("pid") as u32;
        wait_for(
            &format!("the {what} frame's kill"),
            Duration::from_secs(20),
            || restarts(&g, "malformed") == (n + 1) as f64,
        );
        assert_eq!(
            g.metric(r#"isogate_watchdog_kills_total{limit="malformed"}"#),
            (n + 1) as f64
        );
        let after = wait_replaced(&g, &[pid]);
        let kept: Vec<_> = before.iter().filter(|p| **p != pid).collect();
        assert!(
            kept.iter().all(|p| after.contains(p)),
            "{before:?} {after:?}"
        );
        assert_eq!(g.pid(), gateway);
        served(&g, &a);
        served(&g, &b);
    }
    assert_eq!(all_restarts(&g), 2.0, "{}", g.metrics());
}

#[test]
fn invocations_only_queued_on_a_lost_worker_run_on_its_replacement() {
    // One isolate thread per worker: while A's first invocation spins, A's second waits in the
    // worker's queue, dispatched but not started.
    let pool = "isolation: process, processes: 2, threads: 1, warm_isolates: 2, max_cached_workers: 100, idle_ttl_s: 300";
    let (a, b) = (tenant_on(0, &[]), tenant_on(1, &[]));
    let g = Gateway::start_with(
        pool,
        &(tenant(&a, LIMITS) + &tenant(&b, LIMITS)),
        "",
        PROBES,
    );
    let pid_a = worker_of(&g, &a);
    let spin =
        "async () => { const t = Date.now() + 1500; while (Date.now() < t) {} return 'spun'; }";
    let in_flight = g.metric("isogate_worker_invocations_in_flight");
    std::thread::scope(|s| {
        let first = s.spawn(|| execute(&g, &a, spin));
        wait_for("the spin in flight", Duration::from_secs(10), || {
            g.metric("isogate_worker_invocations_in_flight") >= in_flight + 1.0
        });
        let second = s.spawn(|| execute(&g, &a, "async () => 'queued then served'"));
        wait_for("the second in flight", Duration::from_secs(10), || {
            g.metric("isogate_worker_invocations_in_flight") >= in_flight + 2.0
        });
        assert!(std::process::Command::new("kill")
            .args(["-9", &pid_a.to_string()])
            .status()
            .expect("kill")
            .success());
        let (_, v) = first.join().unwrap();
        assert_eq!(kind(&v), "worker_crashed", "{v}");
        let (s2, v) = second.join().unwrap();
        assert_eq!(s2, 200, "{v}");
        assert_eq!(v["result"], "queued then served", "{v}");
    });
    wait_replaced(&g, &[pid_a]);
    served(&g, &b);
}
