//! `isogate-bench`: end-to-end benchmark runner.
//!
//! Builds the release `isogate` binary with cargo, starts it on loopback with a bench config,
//! drives it with a keep-alive HTTP/1.1 load generator (fixed concurrency, fixed duration,
//! warm-up excluded, HDR histogram) and prints markdown tables.
//!
//! The load(), warm get() and memory scenarios also run against Cloudflare's workerd (installed
//! from npm into a temporary directory, see `peer.rs`) serving the same hello Worker through its
//! Worker Loader, interleaved pair by pair with isogate's runs so that drift on a shared machine
//! affects both alike. Without npm or workerd the runner says so and reports isogate alone.
//!
//! isogate runs in both isolation modes in one run (`pool.isolation: thread`, Workers on
//! isolate threads inside the gateway, and `process`, the default: confined worker processes
//! behind the wire), each mode's gateway started once and measured back to back with the other
//! and with workerd. RSS of a process-mode gateway is the gateway's plus its `__worker`
//! children's.
//!
//! ```text
//! cargo run --release -p isogate-benches -- [--quick] [--seconds N] [--no-workerd]
//!     [--only load|get|execute|egress|memory|tls|shared|apis] [--isolation both|process|thread]
//!     [--processes N]
//! ```
#![allow(unreachable_pub)] // a binary

mod client;
mod peer;

use client::Conn;
use hdrhistogram::Histogram;
use isogate_testkit::redis as upstream_redis;
use isogate_testkit::upstream;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "bench-key";
/// The key of the tenant `serial`, whose Workers serve one request at a time
/// (`max_concurrent_requests: 1`, how a cached Worker behaved before issue 10).
const SERIAL_KEY: &str = "bench-serial-key";
const HELLO: &str = r#"export default { async fetch() { return new Response("hello from isogate", { headers: { "content-type": "text/plain" } }); } }"#;
/// A Worker that touches what an isolate loads on first use: a streamed body, crypto.subtle and
/// Intl (for the memory cost of a cached Worker that uses them).
const WEB_APIS: &str = r#"export default { async fetch() { const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("x")); const s = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(d.byteLength); return new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(s)); c.close(); } })); } }"#;
const SNIPPET: &str = "async (env) => { const ids = [1, 2, 3]; const results = []; for (const id of ids) { results.push({ id, square: id * id }); } return { total: results.reduce((a, r) => a + r.square, 0), results }; }";

/// `pool.isolation` of an isogate under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Isolate threads inside the gateway process.
    Thread,
    /// Confined worker processes (the default).
    Process,
}

impl Isolation {
    fn as_str(self) -> &'static str {
        match self {
            Isolation::Thread => "thread",
            Isolation::Process => "process",
        }
    }
}

/// The modes `--isolation` names, thread (the baseline) first.
fn parse_isolation(v: &str) -> Result<Vec<Isolation>, String> {
    match v {
        "both" => Ok(vec![Isolation::Thread, Isolation::Process]),
        "thread" => Ok(vec![Isolation::Thread]),
        "process" => Ok(vec![Isolation::Process]),
        other => Err(format!(
            "--isolation {other}: expected both, process or thread"
        )),
    }
}

struct Opts {
    seconds: f64,
    warmup: f64,
    quick: bool,
    only: Option<String>,
    no_workerd: bool,
    isolation: Vec<Isolation>,
}

/// `--processes N`: `pool.processes` of a process-mode isogate (default: the gateway's own).
static PROCESSES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

impl Opts {
    /// Whether scenario `tag` runs (all do unless `--only` names another).
    fn wants(&self, tag: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == tag)
    }
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
    let isolation = args
        .iter()
        .position(|a| a == "--isolation")
        .map(|i| args.get(i + 1).map_or("", String::as_str))
        .map_or_else(
            || Ok(vec![Isolation::Thread, Isolation::Process]),
            parse_isolation,
        )
        .unwrap_or_else(|e| {
            eprintln!("isogate-bench: {e}");
            std::process::exit(2)
        });
    if let Some(n) = args
        .iter()
        .position(|a| a == "--processes")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<usize>().ok())
    {
        let _ = PROCESSES.set(n.max(1));
    }
    Opts {
        seconds,
        warmup: if quick { 0.3 } else { 2.0 },
        quick,
        only,
        no_workerd: args.iter().any(|a| a == "--no-workerd"),
        isolation,
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
            Dir::try_new(tag).expect("temp dir")
        }
        pub fn try_new(tag: &str) -> std::io::Result<Dir> {
            let p =
                std::env::temp_dir().join(format!("isogate-bench-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
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
    fn start(bin: &Path, tag: &str, isolation: Isolation, max_cached: usize) -> Gateway {
        Gateway::start_with(bin, tag, isolation, max_cached, "", &[])
    }

    /// `tenant_extra` is appended inside the tenant (e.g. an `egress:` section) and may be
    /// followed by top-level sections. The pool caches `max_cached` Workers per worker process
    /// (so that one tenant, which lives in one process, can cache that many in either mode);
    /// the tenant may cache `max_cached`.
    fn start_with(
        bin: &Path,
        tag: &str,
        isolation: Isolation,
        max_cached: usize,
        tenant_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        Gateway::start_listening(bin, tag, isolation, max_cached, "", tenant_extra, env)
    }

    /// [`Gateway::start_with`] with more `listen` settings (flow-mapping entries).
    fn start_listening(
        bin: &Path,
        tag: &str,
        isolation: Isolation,
        max_cached: usize,
        listen_extra: &str,
        tenant_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mode = isolation.as_str();
        let dir = tempfile_dir::Dir::new(&format!("{tag}-{mode}"));
        let ingress = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let sha = sha256_hex(KEY);
        // `pool.max_cached_workers` is divided among the worker processes (at most one per
        // core, at least 2); a single tenant is routed to one of them.
        let processes = match (isolation, PROCESSES.get()) {
            (Isolation::Process, Some(n)) => format!("processes: {n}, "),
            _ => String::new(),
        };
        let pool_cached = max_cached * PROCESSES.get().copied().unwrap_or(cores()).max(2);
        let config = format!(
            "listen: {{ ingress: \"{ingress}\", admin: \"{admin}\"{listen_extra} }}\n\
             state_dir: \"{}\"\n\
             pool: {{ isolation: {mode}, {processes}warm_isolates: 32, max_cached_workers: {pool_cached}, idle_ttl_s: 3600 }}\n\
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

    /// RSS of the gateway and of its worker processes (KiB).
    fn rss_kib(&self) -> u64 {
        let (gateway, workers) = self.rss_split_kib();
        gateway + workers
    }

    /// CPU time of the gateway and its worker processes so far (all threads), ns.
    fn cpu_ns(&self) -> u64 {
        let pid = self.child.id();
        let workers: u64 = children(pid, "__worker").into_iter().map(cpu_ns).sum();
        cpu_ns(pid) + workers
    }

    /// `(gateway, worker processes)` RSS in KiB.
    fn rss_split_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        let workers = children(pid, "__worker").into_iter().map(rss_kib).sum();
        (rss_kib(pid), workers)
    }
}

/// Pids of the processes whose parent is `parent` and whose command line has an argument
/// `arg`, from /proc.
fn children(parent: u32, arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            ppid == Some(parent)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|a| a == arg.as_bytes())
        })
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown; SIGKILL if the `kill` command is not at hand.
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has used so far, summed over its threads (each one's
/// `/proc/PID/task/TID/schedstat`: time on a CPU in ns), so threads still running count.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
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
    /// The API key it is sent with (its tenant).
    key: &'static str,
}

struct Outcome {
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    /// The first failure seen (a non-200 status or an I/O error), for the notes.
    first_error: Option<String>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Prints one round of a scenario as a table row (req/s, p50, p99, errors, or the error) and
/// hands back its outcome when it ran.
fn print_round<'a>(
    name: &str,
    round: usize,
    outcome: &'a Result<Outcome, String>,
) -> Option<&'a Outcome> {
    match outcome {
        Ok(o) => {
            println!(
                "| {name} (run {round}) | {:.0} | {:.3} | {:.3} | {} |",
                o.rps(),
                o.p(0.5),
                o.p(0.99),
                o.errors
            );
            Some(o)
        }
        Err(e) => {
            println!("| {name} (run {round}) | error: {e} | | | |");
            None
        }
    }
}

/// Runs `concurrency` keep-alive connections for warm-up + `seconds`; only requests that start
/// after the warm-up are recorded. A connection that cannot be (re)opened ends the run with
/// `Err`; non-200 answers and I/O errors on a request are counted in `errors`.
fn drive(
    addr: &str,
    req: &Req,
    concurrency: usize,
    warmup: f64,
    seconds: f64,
) -> Result<Outcome, String> {
    let to = addr.to_string();
    let connector: Connector = Arc::new(move || Conn::connect(&to));
    drive_on(addr, connector, req, concurrency, warmup, seconds)
}

/// Opens one keep-alive connection of a load generator.
type Connector = Arc<dyn Fn() -> std::io::Result<Conn> + Send + Sync>;

/// [`drive`] over connections that `connector` opens (plain or TLS); `addr` names them in errors.
fn drive_on(
    addr: &str,
    connector: Connector,
    req: &Req,
    concurrency: usize,
    warmup: f64,
    seconds: f64,
) -> Result<Outcome, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let auth = format!("Bearer {}", req.key);
    let new_hist = || {
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("histogram: {e}"))
    };
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, req, stop, auth, connector) = (
                addr.to_string(),
                req.clone(),
                stop.clone(),
                auth.clone(),
                connector.clone(),
            );
            std::thread::spawn(move || {
                let mut hist = new_hist()?;
                let (mut n, mut errors, mut first_error) = (0u64, 0u64, None);
                let connect = |stop: &AtomicBool| {
                    connector().map_err(|e| {
                        stop.store(true, Ordering::Relaxed);
                        format!("connect {addr}: {e}")
                    })
                };
                let mut conn = connect(&stop)?;
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let failure = match conn.request(req.method, &req.path, &headers, &req.body) {
                        Ok((200, _)) => None,
                        Ok((status, body)) => Some(format!(
                            "status {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(160)])
                        )),
                        Err(e) => {
                            conn = connect(&stop)?;
                            Some(format!("i/o: {e}"))
                        }
                    };
                    if t0 >= measure_from {
                        n += 1;
                        if let Some(f) = failure {
                            errors += 1;
                            first_error.get_or_insert(f);
                        }
                        let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
                Ok::<_, String>((n, errors, first_error, hist))
            })
        })
        .collect();
    let mut total = new_hist()?;
    let (mut requests, mut errors, mut first_error, mut failed) = (0, 0, None, None);
    for h in handles {
        match h.join() {
            Ok(Ok((n, e, f, hist))) => {
                requests += n;
                errors += e;
                first_error = first_error.or(f);
                let _ = total.add(hist);
            }
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("load thread panicked".to_string())),
        }
    }
    stop.store(true, Ordering::Relaxed);
    match failed {
        Some(e) => Err(e),
        None => Ok(Outcome {
            requests,
            errors,
            seconds,
            hist: total,
            first_error,
        }),
    }
}

/// One measured run, the server's RSS (KiB) just before and just after it, and the server's
/// CPU time during its measured window (ns).
struct Run {
    o: Outcome,
    rss_start: u64,
    rss_end: u64,
    cpu_ns: u64,
}

impl Run {
    /// Server CPU time per request completed in the measured window, µs.
    fn cpu_us_per_request(&self) -> Option<f64> {
        (self.o.requests > 0 && self.cpu_ns > 0)
            .then(|| self.cpu_ns as f64 / 1000.0 / self.o.requests as f64)
    }
}

fn measure(
    addr: &str,
    rss: impl Fn() -> u64,
    cpu: impl Fn() -> u64 + Send + Sync,
    req: &Req,
    c: usize,
    opts: &Opts,
) -> Result<Run, String> {
    let rss_start = rss();
    // The server's CPU clock is read when the load generator's measured window opens and
    // closes (it starts timing as `drive` begins: the same instants, within scheduling noise).
    let (o, cpu_ns) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(opts.warmup));
            let from = cpu();
            std::thread::sleep(Duration::from_secs_f64(opts.seconds));
            cpu().saturating_sub(from)
        });
        let o = drive(addr, req, c, opts.warmup, opts.seconds);
        (o, sampler.join().unwrap_or(0))
    });
    Ok(Run {
        o: o?,
        rss_start,
        rss_end: rss(),
        cpu_ns,
    })
}

/// One run against workerd. A workerd that has exited is dropped, so later runs report n/a;
/// a run in which every request failed is an error.
fn measure_peer(
    wd: &mut Option<peer::Workerd>,
    req: &Req,
    c: usize,
    opts: &Opts,
) -> Option<Result<Run, String>> {
    let w = wd.as_mut()?;
    let pid = w.pid();
    let run = measure(&w.addr, || w.rss_kib(), || cpu_ns(pid), req, c, opts);
    if let Err(e) = w.alive() {
        *wd = None;
        return Some(Err(e));
    }
    Some(run.and_then(|r| {
        if r.o.requests > 0 && r.o.errors == r.o.requests {
            Err(format!(
                "all {} requests failed (first: {})",
                r.o.requests,
                r.o.first_error.as_deref().unwrap_or("?")
            ))
        } else {
            Ok(r)
        }
    }))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The cells of one side of a comparison row: req/s, p50/p99, RSS start → end, CPU per request.
fn cells(run: Option<&Result<Run, String>>, none: &str) -> [String; 4] {
    match run {
        Some(Ok(r)) => {
            let errors = if r.o.errors > 0 {
                format!(" ({} errors)", r.o.errors)
            } else {
                String::new()
            };
            [
                format!("{:.0}{errors}", r.o.rps()),
                format!("{:.3} / {:.3}", r.o.p(0.5), r.o.p(0.99)),
                format!("{:.1} → {:.1}", mib(r.rss_start), mib(r.rss_end)),
                r.cpu_us_per_request()
                    .map_or_else(|| "?".into(), |us| format!("{us:.0}")),
            ]
        }
        Some(Err(_)) => [
            "error".into(),
            "error".into(),
            "error".into(),
            "error".into(),
        ],
        None => [none.into(), none.into(), none.into(), none.into()],
    }
}

/// `a / b` as a ratio cell, or `—`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn main() {
    let opts = parse_opts();
    let bin = build_isogate();
    let cores = cores();
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
    let modes: Vec<&str> = opts.isolation.iter().map(|i| i.as_str()).collect();
    println!(
        "# isogate end-to-end benchmark ({} mode)\n\nmachine: {cores} cores, {mem_gib:.0} GiB; engine: quickjs (rquickjs 0.11); {}s per scenario after {}s warm-up; isolation: {}\n",
        if opts.quick { "quick" } else { "full" },
        opts.seconds,
        opts.warmup,
        modes.join(" + ")
    );

    let peer_wanted = opts.wants("load") || opts.wants("get") || opts.wants("memory");
    let install = if opts.no_workerd {
        println!("workerd: skipped (--no-workerd)\n");
        None
    } else if !peer_wanted {
        None
    } else {
        let t0 = Instant::now();
        match peer::install() {
            Ok(i) => {
                println!(
                    "peer: {} (npm workerd@{}, installed in {:.1}s; native binary {})\n",
                    i.version,
                    peer::WORKERD_NPM_VERSION,
                    t0.elapsed().as_secs_f64(),
                    i.bin.display()
                );
                Some(i)
            }
            Err(e) => {
                println!("workerd: {e} (reporting isogate only)\n");
                None
            }
        }
    };

    if opts.wants("load") || opts.wants("get") || opts.wants("execute") {
        main_table(&bin, install.as_ref(), &opts);
    }

    if opts.wants("egress") {
        for &mode in &opts.isolation {
            egress_scenario(&bin, mode, &opts);
        }
    }

    if opts.wants("memory") {
        memory_table(&bin, install.as_ref(), &opts);
    }

    if opts.wants("tls") {
        tls_scenario(&bin, &opts);
    }

    if opts.wants("shared") {
        shared_scenario(&bin, &opts);
    }

    if opts.wants("apis") {
        apis_scenario(&bin, &opts);
    }
}

/// A cell of a memory table: KiB, `error` (with a note) or `n/a`.
fn kib_cell<T>(
    r: Option<&Result<T, String>>,
    value: impl Fn(&T) -> f64,
    who: &str,
    notes: &mut Vec<String>,
) -> String {
    match r {
        Some(Ok(k)) => format!("{:.0}", value(k)),
        Some(Err(e)) => {
            notes.push(format!("{who}: {e}"));
            "error".into()
        }
        None => "n/a".into(),
    }
}

/// Scenario 5: RSS at idle and growth per distinct cached Worker; each isogate mode, then
/// workerd, for each N.
fn memory_table(bin: &Path, install: Option<&peer::Install>, opts: &Opts) {
    let sizes: &[usize] = if opts.quick { &[200] } else { &[200, 1000] };
    let mut header = String::from("\n| cached Workers N |");
    let mut rule = String::from("|---|");
    for mode in &opts.isolation {
        header.push_str(&format!(
            " isogate {} idle RSS MiB | isogate {} RSS growth per Worker (KiB) |",
            mode.as_str(),
            mode.as_str()
        ));
        rule.push_str("---|---|");
    }
    header.push_str(" workerd idle RSS MiB | workerd RSS growth per Worker (KiB) |");
    rule.push_str("---|---|");
    for mode in &opts.isolation {
        header.push_str(&format!(" workerd ÷ {} |", mode.as_str()));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    let mut notes = Vec::new();
    for &n in sizes {
        let mut row = format!("| {n} |");
        let mut per_worker = Vec::new();
        for &mode in &opts.isolation {
            let m = isogate_memory(bin, mode, n, HELLO);
            let idle = match &m {
                Ok(m) if mode == Isolation::Process => format!(
                    "{:.1} ({:.1} gateway + {:.1} workers)",
                    mib(m.idle.0 + m.idle.1),
                    mib(m.idle.0),
                    mib(m.idle.1)
                ),
                Ok(m) => format!("{:.1}", mib(m.idle.0 + m.idle.1)),
                Err(_) => "error".into(),
            };
            let who = format!("isogate {}: N={n}", mode.as_str());
            let growth = kib_cell(Some(&m), |m| m.per_worker, &who, &mut notes);
            row.push_str(&format!(" {idle} | {growth} |"));
            per_worker.push(m.ok().map(|m| m.per_worker));
        }
        let peer = install.map(|i| workerd_memory(i, n));
        let peer_idle = match &peer {
            Some(Ok((idle, _))) => format!("{:.1}", mib(*idle)),
            Some(Err(_)) => "error".into(),
            None => "n/a".into(),
        };
        let who = format!("workerd: N={n}");
        let growth = kib_cell(peer.as_ref(), |(_, k)| *k, &who, &mut notes);
        row.push_str(&format!(" {peer_idle} | {growth} |"));
        let peer_k = peer.as_ref().and_then(|r| r.as_ref().ok().map(|(_, k)| *k));
        for k in per_worker {
            row.push_str(&format!(" {} |", ratio(peer_k, k)));
        }
        println!("{row}");
    }
    println!(
        "\nidle RSS: just after the gateway is ready (warm isolates filled), before any Worker ran; for \
         `process` the gateway's VmRSS plus its `__worker` processes'. Growth: RSS (same sum) from just \
         before to just after creating and calling N distinct Workers, divided by N; workerd ÷ mode above \
         1× means isogate uses less memory per Worker."
    );
    for n in &notes {
        println!("- {n}");
    }
    // The same for a Worker that loads streams, crypto.subtle and Intl (isogate only).
    let n = sizes[0];
    let mut header = String::from("\n| cached Workers N (using streams, crypto.subtle, Intl) |");
    let mut rule = String::from("|---|");
    let mut row = format!("| {n} |");
    for &mode in &opts.isolation {
        header.push_str(&format!(
            " isogate {} RSS growth per Worker (KiB) |",
            mode.as_str()
        ));
        rule.push_str("---|");
        match isogate_memory(bin, mode, n, WEB_APIS) {
            Ok(m) => row.push_str(&format!(" {:.0} |", m.per_worker)),
            Err(e) => row.push_str(&format!(" error: {e} |")),
        }
    }
    println!("{header}\n{rule}\n{row}");
}

/// One isogate under test: its mode and gateway.
struct Side {
    mode: Isolation,
    g: Gateway,
}

/// Scenarios 1–3: load(), warm get() and execute at c=1 and c=16; each isogate mode and
/// workerd run back to back for each scenario and concurrency.
fn main_table(bin: &Path, install: Option<&peer::Install>, opts: &Opts) {
    let worker = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    let sides: Vec<Side> = opts
        .isolation
        .iter()
        .map(|&mode| {
            let serial = format!(
                "  - name: serial\n    api_keys: [{{ sha256: \"{}\" }}]\n    \
                 limits: {{ cpu_ms: 1000, wall_ms: 10000, max_concurrency: 64, max_queue: 1024, max_concurrent_requests: 1 }}\n",
                sha256_hex(SERIAL_KEY)
            );
            let g = Gateway::start_with(bin, "main", mode, 1000, &serial, &[]);
            let mut conn = Conn::connect(&g.ingress).expect("connect");
            let sleepy =
                serde_json::json!({"mainModule": "w.js", "modules": {"w.js": peer::SLEEPY}});
            for (key, id, code) in [
                (KEY, "hello", &worker),
                (KEY, "sleepy", &sleepy),
                (SERIAL_KEY, "sleepy", &sleepy),
            ] {
                let (status, _) = conn
                    .request(
                        "PUT",
                        &format!("/v1/workers/{id}"),
                        &[("authorization", &format!("Bearer {key}"))],
                        &serde_json::to_vec(code).unwrap_or_default(),
                    )
                    .expect("put worker");
                assert!(status == 201 || status == 200, "PUT {id} ({key}): {status}");
            }
            Side { mode, g }
        })
        .collect();
    let load = Req {
        method: "POST",
        path: "/v1/load".into(),
        body: serde_json::to_vec(&serde_json::json!({ "code": worker })).unwrap_or_default(),
        key: KEY,
    };
    let get = Req {
        method: "GET",
        path: "/w/hello/".into(),
        body: Vec::new(),
        key: KEY,
    };
    let get_sleepy = Req {
        method: "GET",
        path: "/w/sleepy/".into(),
        body: Vec::new(),
        key: KEY,
    };
    let get_sleepy_serial = Req {
        key: SERIAL_KEY,
        ..get_sleepy.clone()
    };
    let exec = Req {
        method: "POST",
        path: "/v1/execute".into(),
        body: serde_json::to_vec(&serde_json::json!({ "code": SNIPPET })).unwrap_or_default(),
        key: KEY,
    };
    let peer_get = |path: &str| Req {
        method: "GET",
        path: path.into(),
        body: Vec::new(),
        key: KEY,
    };
    let (wd_load, wd_get) = (peer_get("/load"), peer_get("/get"));
    let wd_get_sleepy = peer_get("/get-sleepy");
    let wd_load_once = peer_get("/load-once");

    let both = sides.len() == 2;
    let mut header = String::from("| scenario | c |");
    let mut rule = String::from("|---|---|");
    for s in &sides {
        header.push_str(&format!(" {} req/s |", s.mode.as_str()));
        rule.push_str("---|");
    }
    header.push_str(" workerd req/s |");
    rule.push_str("---|");
    if both {
        header.push_str(" process ÷ thread |");
        rule.push_str("---|");
    }
    for s in &sides {
        header.push_str(&format!(" {} ÷ workerd |", s.mode.as_str()));
        rule.push_str("---|");
    }
    for s in &sides {
        header.push_str(&format!(" {} p50/p99 ms |", s.mode.as_str()));
        rule.push_str("---|");
    }
    header.push_str(" workerd p50/p99 ms |");
    rule.push_str("---|");
    for s in &sides {
        header.push_str(&format!(" {} RSS start→end MiB |", s.mode.as_str()));
        rule.push_str("---|");
    }
    header.push_str(" workerd RSS start→end MiB |");
    rule.push_str("---|");
    for s in &sides {
        header.push_str(&format!(" {} CPU µs/req |", s.mode.as_str()));
        rule.push_str("---|");
    }
    header.push_str(" workerd CPU µs/req |");
    rule.push_str("---|");
    println!("{header}\n{rule}");

    let mut notes = Vec::new();
    for (tag, name, req, peer_req) in [
        ("load", "load() hello", &load, Some(&wd_load)),
        (
            "load",
            "load() hello vs workerd LOADER.load()",
            &load,
            Some(&wd_load_once),
        ),
        ("get", "warm get() hello", &get, Some(&wd_get)),
        (
            "get",
            "get() of a Worker that awaits 20 ms (one cached Worker)",
            &get_sleepy,
            Some(&wd_get_sleepy),
        ),
        (
            "get",
            "the same, max_concurrent_requests: 1 (isogate only; before issue 10)",
            &get_sleepy_serial,
            None,
        ),
        ("execute", "execute snippet (isogate only)", &exec, None),
    ] {
        if !opts.wants(tag) {
            continue;
        }
        // A fresh workerd per scenario, so that isolates its loader retained during one
        // scenario (load() keeps every id it saw) do not weigh on the next.
        let mut wd = match (peer_req, install) {
            (Some(_), Some(i)) => match peer::Workerd::start(i, tag, HELLO) {
                Ok(w) => Some(w),
                Err(e) => {
                    notes.push(format!("workerd: {name}: {e}"));
                    None
                }
            },
            _ => None,
        };
        for c in [1usize, 16] {
            // Back to back: each isogate mode, then workerd, on the same scenario and
            // concurrency.
            let runs: Vec<Result<Run, String>> = sides
                .iter()
                .map(|s| {
                    let g = &s.g;
                    measure(&g.ingress, || g.rss_kib(), || g.cpu_ns(), req, c, opts)
                })
                .collect();
            let peer = peer_req.and_then(|r| measure_peer(&mut wd, r, c, opts));
            let labelled = sides
                .iter()
                .map(|s| s.mode.as_str())
                .zip(runs.iter().map(Some))
                .chain([("workerd", peer.as_ref())]);
            for (who, run) in labelled {
                match run {
                    Some(Err(e)) => notes.push(format!("{who}: {name} c={c}: {e}")),
                    Some(Ok(r)) if r.o.errors > 0 => notes.push(format!(
                        "{who}: {name} c={c}: {} of {} requests failed (first: {})",
                        r.o.errors,
                        r.o.requests,
                        r.o.first_error.as_deref().unwrap_or("?")
                    )),
                    _ => {}
                }
            }
            let none = if peer_req.is_some() { "n/a" } else { "—" };
            let rps = |r: Option<&Result<Run, String>>| {
                r.and_then(|r| r.as_ref().ok()).map(|r| r.o.rps())
            };
            let iso: Vec<[String; 4]> = runs.iter().map(|r| cells(Some(r), none)).collect();
            let [w_rps, w_lat, w_rss, w_cpu] = cells(peer.as_ref(), none);
            let mut row = format!("| {name} | {c} |");
            for [r, _, _, _] in &iso {
                row.push_str(&format!(" {r} |"));
            }
            row.push_str(&format!(" {w_rps} |"));
            if both {
                row.push_str(&format!(
                    " {} |",
                    ratio(rps(runs.get(1)), rps(runs.first()))
                ));
            }
            for r in &runs {
                row.push_str(&format!(" {} |", ratio(rps(Some(r)), rps(peer.as_ref()))));
            }
            for [_, l, _, _] in &iso {
                row.push_str(&format!(" {l} |"));
            }
            row.push_str(&format!(" {w_lat} |"));
            for [_, _, m, _] in &iso {
                row.push_str(&format!(" {m} |"));
            }
            row.push_str(&format!(" {w_rss} |"));
            for [_, _, _, u] in &iso {
                row.push_str(&format!(" {u} |"));
            }
            row.push_str(&format!(" {w_cpu} |"));
            println!("{row}");
        }
    }
    println!(
        "\nratio columns: req/s ÷ req/s (above 1× the first named is faster). \
         RSS is the VmRSS of the isogate gateway (for `process`: plus its `__worker` processes) and of the \
         workerd process just before and after each run; one isogate per mode serves all rows, a fresh \
         workerd each scenario. CPU µs/req: the server's CPU time (every thread of the gateway and, for \
         `process`, its `__worker` processes; of the workerd process) in the measured window ÷ the requests \
         completed in it (the load generator's own CPU is not in it). workerd's load() is \
         `LOADER.get(crypto.randomUUID(), ...)` (a fresh isolate per request, which workerd keeps cached: its RSS grows), \
         the `LOADER.load()` rows use workerd's one-shot `LOADER.load(...)` (not retained), its get() `LOADER.get(\"hello\", ...)`."
    );
    for n in &notes {
        println!("- {n}");
    }
    drop(sides);
}

/// What the memory scenario found for one isogate mode.
struct Memory {
    /// `(gateway, worker processes)` RSS in KiB once ready, before any Worker ran.
    idle: (u64, u64),
    /// RSS growth per cached Worker, KiB.
    per_worker: f64,
}

/// isogate: idle RSS, and RSS growth per cached Worker after storing and calling `n` distinct
/// Workers.
fn isogate_memory(bin: &Path, mode: Isolation, n: usize, src: &str) -> Result<Memory, String> {
    let g = Gateway::start(bin, &format!("mem{n}"), mode, n + 10);
    // Let the warm pool's refill and start-up allocations settle.
    std::thread::sleep(Duration::from_millis(300));
    let idle = g.rss_split_kib();
    let mut conn = Conn::connect(&g.ingress).map_err(|e| format!("connect: {e}"))?;
    let auth = format!("Bearer {KEY}");
    let worker = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": src}});
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
        let code = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!("const id = {i}; {src}")}});
        let body = serde_json::to_vec(&code).unwrap_or_default();
        let headers = [("authorization", auth.as_str())];
        match conn.request("PUT", &format!("/v1/workers/w{i}"), &headers, &body) {
            Ok((200 | 201, _)) => {}
            other => return Err(format!("PUT w{i}: {other:?}")),
        }
        match conn.request("GET", &format!("/w/w{i}/"), &headers, b"") {
            Ok((200, _)) => {}
            other => return Err(format!("GET w{i}: {other:?}")),
        }
    }
    let after = g.rss_kib();
    Ok(Memory {
        idle,
        per_worker: after.saturating_sub(before) as f64 / n as f64,
    })
}

/// workerd: RSS at idle (KiB) and growth per cached Worker after calling `n` distinct Worker ids
/// through the loader.
fn workerd_memory(install: &peer::Install, n: usize) -> Result<(u64, f64), String> {
    let mut w = peer::Workerd::start(install, &format!("mem{n}"), HELLO)?;
    let mut conn = Conn::connect(&w.addr).map_err(|e| format!("connect: {e}"))?;
    // Start-up already called /load and /get once: the path is warm.
    let before = w.rss_kib();
    for i in 0..n {
        match conn.request("GET", &format!("/mem/{i}"), &[], b"") {
            Ok((200, _)) => {}
            other => {
                w.alive()?;
                return Err(format!("GET /mem/{i}: {other:?}"));
            }
        }
    }
    let after = w.rss_kib();
    Ok((before, after.saturating_sub(before) as f64 / n as f64))
}

/// Scenario: a Worker that fetches a loopback upstream through the full egress pipeline (rule
/// match, rate-limit check, SSRF-checked resolution, header credential injection, scrubbing)
/// versus a client calling that upstream directly. All at c=1.
fn egress_scenario(bin: &Path, mode: Isolation, opts: &Opts) {
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
        mode,
        100,
        &egress,
        &[("BENCH_UPSTREAM_TOKEN", "bench-secret-token-0123456789")],
    );
    let fetcher = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!(
        "export default {{ async fetch() {{ const r = await fetch(\"http://127.0.0.1:{port}/items\"); return new Response(await r.text()); }} }}"
    )}});
    let hello = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    put_workers(&g.ingress, &[("fetcher", &fetcher), ("hello", &hello)]);
    let get = |id: &str| Req {
        method: "GET",
        path: format!("/w/{id}/"),
        body: Vec::new(),
        key: KEY,
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
    println!(
        "\n| egress (c=1), isogate only, isolation: {} | p50 ms | p99 ms | errors |",
        mode.as_str()
    );
    println!("|---|---|---|---|");
    for (name, o) in [
        ("get() of a Worker that fetches the upstream", &through),
        ("get() of hello (no fetch)", &plain),
        ("client → upstream directly", &direct),
    ] {
        match o {
            Ok(o) => println!(
                "| {name} | {:.3} | {:.3} | {} |",
                o.p(0.5),
                o.p(0.99),
                o.errors
            ),
            Err(e) => println!("| {name} | error: {e} | | |"),
        }
    }
    if let (Ok(through), Ok(plain), Ok(direct)) = (&through, &plain, &direct) {
        println!(
            "| **added by the egress hop** (fetching − hello − direct) | {:.3} | {:.3} | |",
            o_sub(through, plain, direct, 0.5),
            o_sub(through, plain, direct, 0.99)
        );
    }
}

/// Scenario: warm get() of the hello Worker through a public route, over plain HTTP and over
/// TLS (keep-alive, c=16, runs alternated), and the rate of full TLS handshakes (no session
/// resumption) the ingress completes. isogate only: the peer's TLS is not configured.
fn tls_scenario(bin: &Path, opts: &Opts) {
    let mode = *opts.isolation.last().unwrap_or(&Isolation::Process);
    let certs = tempfile_dir::Dir::new("tls-certs");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .expect("leaf")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    let (cert_file, key_file) = (
        certs.path().join("bench.pem"),
        certs.path().join("bench.key"),
    );
    std::fs::write(&cert_file, leaf.pem()).expect("write cert");
    std::fs::write(&key_file, leaf_key.serialize_pem()).expect("write key");
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let g = Gateway::start_listening(
        bin,
        "tls",
        mode,
        100,
        &format!(", ingress_tls: \"{tls_addr}\""),
        &format!(
            "    routes: [{{ host: bench.test, worker: hello, client_rate_limit: {{ per_second: 1000000, burst: 1000000 }} }}]\n\
             tls: {{ certificates: [{{ cert_file: \"{}\", key_file: \"{}\" }}] }}\n",
            cert_file.display(),
            key_file.display()
        ),
        &[],
    );
    let hello = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    put_workers(&g.ingress, &[("hello", &hello)]);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("CA root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |resume: bool| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(c)
    };
    let keepalive = client(true);
    let plain_addr = g.ingress.clone();
    let plain: Connector =
        Arc::new(move || Conn::connect(&plain_addr).map(|c| c.with_host("bench.test")));
    let api_addr = g.ingress.clone();
    let api: Connector = Arc::new(move || Conn::connect(&api_addr));
    let tls_to = tls_addr.clone();
    let tls: Connector =
        Arc::new(move || Conn::connect_tls(&tls_to, "bench.test", keepalive.clone()));
    let req = Req {
        method: "GET",
        path: "/".into(),
        body: Vec::new(),
        key: KEY,
    };
    let rounds = if opts.quick { 1 } else { 2 };
    let c = 16;
    println!(
        "\n| warm get() through a public route (c={c}, keep-alive), isolation: {} | req/s | p50 ms | p99 ms | errors |",
        mode.as_str()
    );
    println!("|---|---|---|---|---|");
    let through_api = Req {
        path: "/w/hello/".into(),
        ..req.clone()
    };
    let (mut plain_rps, mut tls_rps, mut api_rps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, connector, into, req) in [
            ("route, plain HTTP", plain.clone(), &mut plain_rps, &req),
            ("route, TLS 1.3", tls.clone(), &mut tls_rps, &req),
            (
                "API `/w/hello/` (key), plain HTTP",
                api.clone(),
                &mut api_rps,
                &through_api,
            ),
        ] {
            let outcome = drive_on(&g.ingress, connector, req, c, opts.warmup, opts.seconds);
            if let Some(o) = print_round(name, round, &outcome) {
                into.push(o.rps());
            }
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    if let (Some(p), Some(t)) = (mean(&plain_rps), mean(&tls_rps)) {
        println!(
            "| **TLS / plain throughput (mean of the runs)** | {:.2}× | | | |",
            t / p
        );
    }
    if let (Some(p), Some(a)) = (mean(&plain_rps), mean(&api_rps)) {
        println!(
            "| **route / API throughput, plain (mean of the runs)** | {:.2}× | | | |",
            p / a
        );
    }

    // Full handshakes: fresh TCP connection, TLS 1.3 handshake without resumption, close.
    let fresh = client(false);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = 8;
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(opts.warmup);
    let end = warm_end + Duration::from_secs_f64(opts.seconds);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, config, stop) = (tls_addr.clone(), fresh.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut n, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = client::handshake(&addr, "bench.test", config.clone()).is_ok();
                    if t0 >= warm_end {
                        if ok {
                            n += 1;
                        } else {
                            errors += 1;
                        }
                    }
                }
                (n, errors)
            })
        })
        .collect();
    let (mut n, mut errors) = (0, 0);
    for h in handles {
        if let Ok((a, b)) = h.join() {
            n += a;
            errors += b;
        }
    }
    stop.store(true, Ordering::Relaxed);
    println!(
        "\nfull TLS 1.3 handshakes (ECDSA P-256 certificate, X25519, no resumption; {threads} client threads on the same machine): {:.0}/s, {errors} errors",
        n as f64 / opts.seconds
    );
}

/// Scenario: what sharing state through Redis costs (`shared.redis` against a single replica's
/// SQLite store and in-process limiters): warm get() at c=16 (the code is held in memory after
/// the first request), and the egress hop at c=1 with a rule rate limit checked in Redis (one
/// EVALSHA round trip) against one checked in process. Runs alternated; process mode.
fn shared_scenario(bin: &Path, opts: &Opts) {
    let redis = match upstream_redis::RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            println!("\nshared-state scenario skipped: {e}");
            return;
        }
    };
    let upstream = upstream::Upstream::start(|_| {
        upstream::Answer::json(200, &serde_json::json!({"ok": true, "items": [1, 2, 3]}))
    });
    let port = upstream.port;
    let egress = format!(
        "    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n          rate_limit: {{ per_second: 1000000, burst: 1000000 }}\n"
    );
    let mode = *opts.isolation.last().unwrap_or(&Isolation::Process);
    let local = Gateway::start_with(bin, "local", mode, 100, &egress, &[]);
    let shared = Gateway::start_with(
        bin,
        "shared",
        mode,
        100,
        &format!(
            "{egress}shared: {{ redis: {{ url: \"{}\" }} }}\n",
            redis.url()
        ),
        &[],
    );
    let fetcher = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!(
        "export default {{ async fetch() {{ const r = await fetch(\"http://127.0.0.1:{port}/items\"); return new Response(await r.text()); }} }}"
    )}});
    let hello = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    for g in [&local, &shared] {
        put_workers(&g.ingress, &[("fetcher", &fetcher), ("hello", &hello)]);
    }
    let get = |id: &str| Req {
        method: "GET",
        path: format!("/w/{id}/"),
        body: Vec::new(),
        key: KEY,
    };
    let rounds = if opts.quick { 1 } else { 2 };
    println!(
        "\n| shared state (Redis) vs one replica, isolation: {} | req/s | p50 ms | p99 ms | errors |",
        mode.as_str()
    );
    println!("|---|---|---|---|---|");
    let mut p50 = std::collections::BTreeMap::<&str, Vec<f64>>::new();
    let mut rps = std::collections::BTreeMap::<&str, Vec<f64>>::new();
    for round in 1..=rounds {
        for (name, g, id, c) in [
            ("warm get() c=16, local store", &local, "hello", 16),
            ("warm get() c=16, shared store", &shared, "hello", 16),
            ("egress hop c=1, local limiter", &local, "fetcher", 1),
            ("egress hop c=1, shared limiter", &shared, "fetcher", 1),
        ] {
            let outcome = drive(&g.ingress, &get(id), c, opts.warmup, opts.seconds);
            if let Some(o) = print_round(name, round, &outcome) {
                p50.entry(name).or_default().push(o.p(0.5));
                rps.entry(name).or_default().push(o.rps());
            }
        }
    }
    let mean = |v: Option<&Vec<f64>>| {
        v.filter(|v| !v.is_empty())
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(l), Some(s)) = (
        mean(rps.get("warm get() c=16, local store")),
        mean(rps.get("warm get() c=16, shared store")),
    ) {
        println!(
            "| **warm get(): shared / local throughput** | {:.2}× | | | |",
            s / l
        );
    }
    if let (Some(l), Some(s)) = (
        mean(p50.get("egress hop c=1, local limiter")),
        mean(p50.get("egress hop c=1, shared limiter")),
    ) {
        println!(
            "| **egress: added by the shared limiter (p50)** | | {:.0} µs | | |",
            (s - l) * 1000.0
        );
    }
}

/// What a tenant API call costs through the gateway (issue 12): a Worker that calls
/// `env.calc.sum(...)` (an OpenAPI operation on a loopback upstream) against the same Worker
/// without the call, and against calling the upstream directly. Added by the gateway =
/// p50(with the call) − p50(without) − p50(direct). Also the size of `/mcp`'s `tools/list`.
fn apis_scenario(bin: &Path, opts: &Opts) {
    let spec = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "calc", "version": "1"},
        "paths": {"/sum": {"post": {
            "operationId": "sum",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["a", "b"],
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}
            }}}},
            "responses": {"200": {"description": "the sum"}}
        }}}
    });
    let upstream = upstream::Upstream::start(move |seen| match seen.target.as_str() {
        "/openapi.json" => upstream::Answer::json(200, &spec),
        _ => upstream::Answer::json(200, &serde_json::json!({"sum": 3})),
    });
    let port = upstream.port;
    let tenant = format!(
        "    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n    apis:\n      - name: calc\n        openapi: {{ spec: \"http://127.0.0.1:{port}/openapi.json\", base_url: \"http://127.0.0.1:{port}\" }}\n"
    );
    let mode = *opts.isolation.last().unwrap_or(&Isolation::Process);
    let g = Gateway::start_with(bin, "apis", mode, 100, &tenant, &[]);
    let caller = serde_json::json!({"mainModule": "w.js", "modules": {"w.js":
        "export default { async fetch(request, env) { return Response.json(await env.calc.sum({ body: { a: 1, b: 2 } })); } }"
    }});
    let fetcher = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": format!(
        "export default {{ async fetch() {{ const r = await fetch(\"http://127.0.0.1:{port}/sum\", {{ method: \"POST\", body: '{{\"a\":1,\"b\":2}}' }}); return Response.json(await r.json()); }} }}"
    )}});
    let hello = serde_json::json!({"mainModule": "w.js", "modules": {"w.js": HELLO}});
    put_workers(
        &g.ingress,
        &[
            ("caller", &caller),
            ("fetcher", &fetcher),
            ("hello", &hello),
        ],
    );
    let get = |id: &str| Req {
        method: "GET",
        path: format!("/w/{id}/"),
        body: Vec::new(),
        key: KEY,
    };
    let direct = Req {
        method: "POST",
        path: "/sum".into(),
        body: br#"{"a":1,"b":2}"#.to_vec(),
        key: KEY,
    };
    let upstream_addr = format!("127.0.0.1:{port}");
    println!(
        "\n| tenant API call (OpenAPI, loopback upstream), c=1, isolation: {} | req/s | p50 ms | p99 ms | errors |",
        mode.as_str()
    );
    println!("|---|---|---|---|---|");
    let rounds = if opts.quick { 1 } else { 2 };
    let mut p50 = std::collections::BTreeMap::<&str, Vec<f64>>::new();
    for round in 1..=rounds {
        for (name, addr, req) in [
            (
                "get() of a Worker that calls env.calc.sum",
                g.ingress.as_str(),
                get("caller"),
            ),
            (
                "get() of a Worker that fetch()es the same URL",
                g.ingress.as_str(),
                get("fetcher"),
            ),
            (
                "get() of the hello Worker (no call)",
                g.ingress.as_str(),
                get("hello"),
            ),
            (
                "the upstream called directly",
                upstream_addr.as_str(),
                direct.clone(),
            ),
        ] {
            let outcome = drive(addr, &req, 1, opts.warmup, opts.seconds);
            if let Some(o) = print_round(name, round, &outcome) {
                p50.entry(name).or_default().push(o.p(0.5));
            }
        }
    }
    let mean = |k: &str| {
        p50.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(with), Some(without), Some(direct)) = (
        mean("get() of a Worker that calls env.calc.sum"),
        mean("get() of the hello Worker (no call)"),
        mean("the upstream called directly"),
    ) {
        println!(
            "| **added by the gateway to an API call (p50)** | | {:.0} µs | | |",
            (with - without - direct) * 1000.0
        );
        if let Some(fetched) = mean("get() of a Worker that fetch()es the same URL") {
            println!(
                "| **added by a `fetch()` of the same URL (p50), for comparison** | | {:.0} µs | | |",
                (fetched - without - direct) * 1000.0
            );
        }
    }
    // The size of the MCP endpoint's tool list (what an agent's context pays for it).
    let mut conn = Conn::connect(&g.ingress).expect("connect");
    let auth = format!("Bearer {KEY}");
    let (status, body) = conn
        .request(
            "POST",
            "/mcp",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .expect("tools/list");
    println!(
        "| **`/mcp` tools/list** (HTTP {status}) | | {} bytes, ~{} tokens | | |",
        body.len(),
        body.len().div_ceil(4)
    );
}

/// Stores each `(id, WorkerCode)` through the API of the gateway at `addr`.
fn put_workers(addr: &str, workers: &[(&str, &serde_json::Value)]) {
    let mut conn = Conn::connect(addr).expect("connect");
    let auth = format!("Bearer {KEY}");
    for (id, code) in workers {
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
}

fn o_sub(a: &Outcome, b: &Outcome, c: &Outcome, q: f64) -> f64 {
    a.p(q) - b.p(q) - c.p(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_modes_parse() {
        assert_eq!(
            parse_isolation("both").unwrap(),
            vec![Isolation::Thread, Isolation::Process]
        );
        assert_eq!(parse_isolation("thread").unwrap(), vec![Isolation::Thread]);
        assert_eq!(
            parse_isolation("process").unwrap(),
            vec![Isolation::Process]
        );
        assert!(parse_isolation("threads").is_err());
        assert!(parse_isolation("").is_err());
    }

    #[test]
    fn children_finds_a_worker_child_by_argument_and_its_rss() {
        use std::io::BufRead;
        // `sh -c CMD NAME`: NAME is $0, so the shell's command line carries `__worker`. Each
        // shell says "ready" once it runs (its command line is in /proc only after exec has
        // finished setting it up; reading it earlier can find it empty).
        let spawn = |name: &str| {
            let mut child = Command::new("sh")
                .args(["-c", "echo ready; read line", name])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn sh");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
                .read_line(&mut line)
                .expect("ready line");
            assert_eq!(line.trim(), "ready");
            child
        };
        let mut worker = spawn("__worker");
        let mut other = spawn("other");
        let me = std::process::id();
        let found = children(me, "__worker");
        let _ = worker.kill();
        let _ = other.kill();
        let _ = worker.wait();
        let _ = other.wait();
        assert_eq!(found, vec![worker.id()]);
        assert!(rss_kib(me) > 0);
        assert!(children(me, "__worker").is_empty());
    }
}
