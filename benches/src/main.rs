//! `isogate-bench`: end-to-end benchmark runner.
//!
//! Builds the release `isogate` binary with cargo, starts it on loopback with a bench config,
//! drives it with a keep-alive HTTP/1.1 load generator (fixed concurrency, fixed duration,
//! warm-up excluded, HDR histogram) and prints one markdown table.
//!
//! ```text
//! cargo run --release -p isogate-benches -- [--quick] [--seconds N] [--only load|get|execute|memory]
//! ```

mod client;
#[path = "../../tests/common/upstream.rs"]
mod upstream;

use client::Conn;
use hdrhistogram::Histogram;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "bench-key";
const HELLO: &str = r#"export default { async fetch() { return new Response("hello from isogate", { headers: { "content-type": "text/plain" } }); } }"#;
const SNIPPET: &str = "async (env) => { const ids = [1, 2, 3]; const results = []; for (const id of ids) { results.push({ id, square: id * id }); } return { total: results.reduce((a, r) => a + r.square, 0), results }; }";

struct Opts {
    seconds: f64,
    warmup: f64,
    quick: bool,
    only: Option<String>,
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1.0 } else { 10.0 });
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    Opts {
        seconds,
        warmup: if quick { 0.3 } else { 2.0 },
        quick,
        only,
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn build_isogate() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "isogate", "--bin", "isogate"])
        .current_dir(workspace_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of isogate failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("release").join("isogate")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Gateway {
    child: Child,
    ingress: String,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A temporary directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("isogate-bench-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Gateway {
    fn start(bin: &Path, tag: &str, max_cached: usize) -> Gateway {
        Gateway::start_with(bin, tag, max_cached, "", &[])
    }

    /// `tenant_extra` is appended inside the tenant (e.g. an `egress:` section) and may be
    /// followed by top-level sections.
    fn start_with(
        bin: &Path,
        tag: &str,
        max_cached: usize,
        tenant_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile_dir::Dir::new(tag);
        let ingress = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let sha = sha256_hex(KEY);
        let config = format!(
            "listen: {{ ingress: \"{ingress}\", admin: \"{admin}\" }}\n\
             state_dir: \"{}\"\n\
             pool: {{ warm_isolates: 32, max_cached_workers: {max_cached}, idle_ttl_s: 3600 }}\n\
             tenants:\n  - name: bench\n    api_keys: [{{ sha256: \"{sha}\" }}]\n    \
             limits: {{ cpu_ms: 1000, memory_mb: 64, wall_ms: 10000, max_concurrency: 64, max_cached_workers: {max_cached}, max_queue: 1024 }}\n{tenant_extra}",
            dir.path().join("state").display()
        );
        let cfg = dir.path().join("bench.yaml");
        std::fs::write(&cfg, config).expect("write config");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start isogate");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Conn::connect(&admin) {
                if let Ok((200, _)) = c.request("GET", "/readyz", &[], b"") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "isogate did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway {
            child,
            ingress,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One scenario's request.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    body: Vec<u8>,
}

struct Outcome {
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `concurrency` keep-alive connections for warm-up + `seconds`; only requests that start
/// after the warm-up are recorded.
fn drive(addr: &str, req: &Req, concurrency: usize, warmup: f64, seconds: f64) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let auth = format!("Bearer {KEY}");
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, req, stop, auth) =
                (addr.to_string(), req.clone(), stop.clone(), auth.clone());
            std::thread::spawn(move || {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let (mut n, mut errors) = (0u64, 0u64);
                let mut conn = Conn::connect(&addr).expect("connect");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = match conn.request(req.method, &req.path, &headers, &req.body) {
                        Ok((200, _)) => true,
                        Ok(_) => false,
                        Err(_) => {
                            conn = Conn::connect(&addr).expect("reconnect");
                            false
                        }
                    };
                    if t0 >= measure_from {
                        n += 1;
                        if !ok {
                            errors += 1;
                        }
                        let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
                (n, errors, hist)
            })
        })
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut requests, mut errors) = (0, 0);
    for h in handles {
        let (n, e, hist) = h.join().expect("load thread");
        requests += n;
        errors += e;
        let _ = total.add(hist);
    }
    stop.store(true, Ordering::Relaxed);
    Outcome {
        requests,
        errors,
        seconds,
        hist: total,
    }
}

fn main() {
    let opts = parse_opts();
    let bin = build_isogate();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    println!(
        "# isogate end-to-end benchmark ({} mode)\n\nmachine: {cores} cores, {mem_gib:.0} GiB; engine: quickjs (rquickjs 0.11); {}s per scenario after {}s warm-up\n",
        if opts.quick { "quick" } else { "full" },
        opts.seconds,
        opts.warmup
    );

    let g = Gateway::start(&bin, "main", 1000);
    let worker = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    let load = Req {
        method: "POST",
        path: "/v1/load".into(),
        body: serde_json::to_vec(&serde_json::json!({ "code": worker })).unwrap_or_default(),
    };
    let mut conn = Conn::connect(&g.ingress).expect("connect");
    let auth = format!("Bearer {KEY}");
    let (status, _) = conn
        .request(
            "PUT",
            "/v1/workers/hello",
            &[("authorization", &auth)],
            &serde_json::to_vec(&worker).unwrap_or_default(),
        )
        .expect("put worker");
    assert!(status == 201 || status == 200, "PUT hello: {status}");
    let get = Req {
        method: "GET",
        path: "/w/hello/".into(),
        body: Vec::new(),
    };
    let exec = Req {
        method: "POST",
        path: "/v1/execute".into(),
        body: serde_json::to_vec(&serde_json::json!({ "code": SNIPPET })).unwrap_or_default(),
    };

    println!("| scenario | c | req/s | p50 ms | p99 ms | errors | RSS start → end (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    for (tag, name, req) in [
        ("load", "load() hello", &load),
        ("get", "warm get() hello", &get),
        ("execute", "execute snippet", &exec),
    ] {
        if opts.only.as_deref().is_some_and(|o| o != tag) {
            continue;
        }
        for c in [1usize, 16] {
            let before = g.rss_kib();
            let o = drive(&g.ingress, req, c, opts.warmup, opts.seconds);
            let after = g.rss_kib();
            println!(
                "| {name} | {c} | {:.0} | {:.3} | {:.3} | {} | {:.1} → {:.1} |",
                o.rps(),
                o.p(0.5),
                o.p(0.99),
                o.errors,
                before as f64 / 1024.0,
                after as f64 / 1024.0
            );
        }
    }
    drop(g);

    if opts.only.as_deref().is_none_or(|o| o == "egress") {
        egress_scenario(&bin, &opts);
    }

    println!("\n| cached Workers N | RSS growth per Worker (KiB) |");
    println!("|---|---|");
    let sizes: &[usize] = match (opts.quick, opts.only.as_deref()) {
        (_, Some(o)) if o != "memory" => &[],
        (true, _) => &[200],
        (false, _) => &[200, 1000],
    };
    for &n in sizes {
        let g = Gateway::start(&bin, &format!("mem{n}"), n + 10);
        let mut conn = Conn::connect(&g.ingress).expect("connect");
        // Warm the path once so one-time allocations are not charged to the Workers.
        let warm = serde_json::to_vec(&worker).unwrap_or_default();
        let _ = conn.request(
            "PUT",
            "/v1/workers/warmup",
            &[("authorization", &auth)],
            &warm,
        );
        let _ = conn.request("GET", "/w/warmup/", &[("authorization", &auth)], b"");
        let before = g.rss_kib();
        for i in 0..n {
            let code = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!("const id = {i}; {HELLO}")}});
            let body = serde_json::to_vec(&code).unwrap_or_default();
            let (s, _) = conn
                .request(
                    "PUT",
                    &format!("/v1/workers/w{i}"),
                    &[("authorization", &auth)],
                    &body,
                )
                .expect("put");
            assert!(s == 201 || s == 200);
            let (s, _) = conn
                .request(
                    "GET",
                    &format!("/w/w{i}/"),
                    &[("authorization", &auth)],
                    b"",
                )
                .expect("get");
            assert_eq!(s, 200);
        }
        let after = g.rss_kib();
        println!(
            "| {n} | {:.0} |",
            after.saturating_sub(before) as f64 / n as f64
        );
    }
}

/// Scenario: a Worker that fetches a loopback upstream through the full egress pipeline (rule
/// match, rate-limit check, SSRF-checked resolution, header credential injection, scrubbing)
/// versus a client calling that upstream directly. All at c=1.
fn egress_scenario(bin: &Path, opts: &Opts) {
    let upstream = upstream::Upstream::start(|_| {
        upstream::Answer::json(200, &serde_json::json!({"ok": true, "items": [1, 2, 3]}))
    });
    let port = upstream.port;
    let egress = format!(
        "    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n          credential: upstream\n\
         credentials:\n  - name: upstream\n    source: {{ env: BENCH_UPSTREAM_TOKEN }}\n    inject: {{ header: Authorization, value: \"Bearer ${{secret}}\" }}\n"
    );
    let g = Gateway::start_with(
        bin,
        "egress",
        100,
        &egress,
        &[("BENCH_UPSTREAM_TOKEN", "bench-secret-token-0123456789")],
    );
    let auth = format!("Bearer {KEY}");
    let mut conn = Conn::connect(&g.ingress).expect("connect");
    let fetcher = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!(
        "export default {{ async fetch() {{ const r = await fetch(\"http://127.0.0.1:{port}/items\"); return new Response(await r.text()); }} }}"
    )}});
    let hello = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    for (id, code) in [("fetcher", &fetcher), ("hello", &hello)] {
        let (s, _) = conn
            .request(
                "PUT",
                &format!("/v1/workers/{id}"),
                &[("authorization", &auth)],
                &serde_json::to_vec(code).unwrap_or_default(),
            )
            .expect("put");
        assert!(s == 201 || s == 200, "PUT {id}: {s}");
    }
    let get = |id: &str| Req {
        method: "GET",
        path: format!("/w/{id}/"),
        body: Vec::new(),
    };
    let through = drive(&g.ingress, &get("fetcher"), 1, opts.warmup, opts.seconds);
    let plain = drive(&g.ingress, &get("hello"), 1, opts.warmup, opts.seconds);
    let direct = drive(
        &format!("127.0.0.1:{port}"),
        &get("direct"),
        1,
        opts.warmup,
        opts.seconds,
    );
    println!("\n| egress (c=1) | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|");
    for (name, o) in [
        ("get() of a Worker that fetches the upstream", &through),
        ("get() of hello (no fetch)", &plain),
        ("client → upstream directly", &direct),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {} |",
            o.p(0.5),
            o.p(0.99),
            o.errors
        );
    }
    println!(
        "| **added by the egress hop** (fetching − hello − direct) | {:.3} | {:.3} | |",
        o_sub(&through, &plain, &direct, 0.5),
        o_sub(&through, &plain, &direct, 0.99)
    );
}

fn o_sub(a: &Outcome, b: &Outcome, c: &Outcome, q: f64) -> f64 {
    a.p(q) - b.p(q) - c.p(q)
}
