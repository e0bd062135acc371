//! Test harness: starts the real `isogate` binary on free loopback ports with a config written
//! to a temporary directory, waits for `/readyz`, and gives an HTTP client for it.
#![allow(dead_code)]
#![allow(unreachable_pub)] // the harness is shared by test crates (binaries): nothing is reachable from outside

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// API key of tenant `alpha` in [`tenants_yaml`].
pub const ALPHA_KEY: &str = "alpha-key";
/// API key of tenant `beta` in [`tenants_yaml`].
pub const BETA_KEY: &str = "beta-key";

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A tenant entry for the config.
pub fn tenant_yaml(name: &str, key: &str, limits: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ {limits} }}\n",
        sha256_hex(key)
    )
}

/// Two tenants with ordinary limits.
pub fn tenants_yaml() -> String {
    let limits = "cpu_ms: 50, memory_mb: 32, wall_ms: 5000, subrequests: 5, max_concurrency: 16, max_cached_workers: 100, max_body_bytes: 65536";
    tenant_yaml("alpha", ALPHA_KEY, limits) + &tenant_yaml("beta", BETA_KEY, limits)
}

/// `ISOGATE_TEST_ISOLATION=thread` in the test's environment runs every gateway the harness
/// starts in thread mode (`pool.isolation: thread`), unless the test names an isolation itself;
/// CI runs the integration suite once per mode.
pub fn thread_mode() -> bool {
    std::env::var("ISOGATE_TEST_ISOLATION").is_ok_and(|v| v == "thread")
}

/// `pool` (a YAML flow-mapping body) with the isolation mode of this test run.
pub fn pool_for_mode(pool: &str) -> String {
    if thread_mode() && !pool.contains("isolation:") {
        if pool.trim().is_empty() {
            "isolation: thread".to_string()
        } else {
            format!("isolation: thread, {pool}")
        }
    } else {
        pool.to_string()
    }
}

/// A free loopback socket address (`127.0.0.1:PORT`), e.g. for [`Gateway::start_at`].
pub fn free_loopback_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Two different free loopback addresses (ingress, admin). A port freed by the probe can be
/// handed out again at once, so the second is drawn until it differs.
pub fn free_loopback_pair() -> (String, String) {
    let first = free_loopback_addr();
    let mut second = free_loopback_addr();
    while second == first {
        second = free_loopback_addr();
    }
    (first, second)
}

/// A port nothing listens on now and that this test process has not handed out before. It is
/// drawn *below* the kernel's ephemeral range, where neither `bind(…:0)` (the upstream servers)
/// nor an outgoing connection's local port can take it between this probe and the gateway's bind
/// (CI saw a gateway's ingress port taken that way); the tests of one binary run at once, so a
/// port is handed out once.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    // A per-process start, then linear probing: processes running at once start apart.
    let mut next = low + (std::process::id() as u16).wrapping_mul(7919) % (high - low);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..(high - low) {
        let port = next;
        next = if next + 1 >= high { low } else { next + 1 };
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    // No free port below the ephemeral range: any free one.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running gateway. Stopped (SIGTERM, then killed) when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub ingress: String,
    pub admin: String,
    pub client: Client,
    dir: PathBuf,
    config_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts a gateway with `pool` (YAML flow mapping body) and `tenants` (YAML list items).
    pub fn start(pool: &str, tenants: &str) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut g = Gateway::start_in(&dir, pool, tenants);
        g._tmp = Some(tmp);
        g
    }

    /// Starts a gateway whose state lives in `dir` (reused across restarts).
    pub fn start_in(dir: &Path, pool: &str, tenants: &str) -> Gateway {
        Gateway::start_full(dir, pool, tenants, "", &[])
    }

    /// Starts a gateway with extra top-level YAML (credentials, vaults) and environment.
    pub fn start_with(pool: &str, tenants: &str, extra: &str, env: &[(&str, &str)]) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut g = Gateway::start_full(&dir, pool, tenants, extra, env);
        g._tmp = Some(tmp);
        g
    }

    /// Starts a gateway with more `listen` settings (see [`Gateway::start_listening`]) in a
    /// temporary directory.
    pub fn start_listen(listen_extra: &str, pool: &str, tenants: &str, extra: &str) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ingress, admin) = free_loopback_pair();
        let mut g = Gateway::start_listening(
            tmp.path(),
            &ingress,
            &admin,
            listen_extra,
            pool,
            tenants,
            extra,
            &[],
        );
        g._tmp = Some(tmp);
        g
    }

    /// The most general start.
    pub fn start_full(
        dir: &Path,
        pool: &str,
        tenants: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let (ingress, admin) = free_loopback_pair();
        Gateway::start_at(dir, &ingress, &admin, pool, tenants, extra, env)
    }

    /// [`Gateway::start_full`] on given listener addresses (so the config can name them).
    pub fn start_at(
        dir: &Path,
        ingress: &str,
        admin: &str,
        pool: &str,
        tenants: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        Gateway::start_listening(dir, ingress, admin, "", pool, tenants, extra, env)
    }

    /// [`Gateway::start_at`] with more `listen` settings (`listen_extra`: YAML flow-mapping
    /// entries, e.g. `api_hosts: [api.test]`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_listening(
        dir: &Path,
        ingress: &str,
        admin: &str,
        listen_extra: &str,
        pool: &str,
        tenants: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let (ingress, admin) = (ingress.to_string(), admin.to_string());
        // Tests stop gateways often: no not-ready grace period unless a test asks for one.
        let extra = if extra.contains("shutdown:") {
            extra.to_string()
        } else {
            format!("{extra}shutdown: {{ grace_period_s: 0, drain_timeout_s: 10 }}\n")
        };
        let pool = pool_for_mode(pool);
        let listen_extra = if listen_extra.is_empty() {
            String::new()
        } else {
            format!(", {listen_extra}")
        };
        let config = format!(
            "listen: {{ ingress: \"{ingress}\", admin: \"{admin}\"{listen_extra} }}\nstate_dir: \"{}\"\npool: {{ {pool} }}\ntenants:\n{tenants}{extra}",
            dir.join("state").display()
        );
        let config_path = dir.join("isogate.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.join("isogate.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_isogate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn,isogate::egress=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start isogate");
        let client = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut g = Gateway {
            child: Some(child),
            ingress,
            admin,
            client,
            dir: dir.to_path_buf(),
            config_path,
            _tmp: None,
        };
        g.wait_ready();
        g
    }

    /// Polls `/readyz` (the gateway's readiness signal) until it answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("isogate exited early ({status}); log:\n{}", self.log());
            }
            if let Ok(r) = self.client.get(&url).timeout(Duration::from_secs(2)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "isogate did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Path of the config file the gateway runs on.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Rewrites the config file in place (same listeners and state dir) with new pool/tenants.
    pub fn rewrite_config(&self, pool: &str, tenants: &str) {
        let pool = pool_for_mode(pool);
        let config = format!(
            "listen: {{ ingress: \"{}\", admin: \"{}\" }}\nstate_dir: \"{}\"\npool: {{ {pool} }}\ntenants:\n{tenants}shutdown: {{ grace_period_s: 0, drain_timeout_s: 10 }}\n",
            self.ingress,
            self.admin,
            self.dir.join("state").display()
        );
        // Write-then-rename, as editors and Kubernetes do: the file is never half-written.
        let tmp = self.dir.join("isogate.yaml.new");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// Waits for the process to exit by itself; returns whether it exited with status 0.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding config, log and state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `GET /metrics` from the admin listener.
    pub fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .expect("metrics")
            .text()
            .expect("text")
    }

    /// The value of one sample line of `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("isogate.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Pids of the gateway's worker processes (its children running `isogate __worker`), sorted.
    pub fn worker_pids(&self) -> Vec<u32> {
        let parent = self.pid();
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if ppid != Some(parent) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            if !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == b"__worker") {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// Whether `/readyz` answers 200 now.
    pub fn is_ready(&self) -> bool {
        self.client
            .get(format!("http://{}/readyz", self.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }

    /// Resident set size of the gateway process and its worker processes (where the isolates
    /// live with `pool.isolation: process`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::iter::once(self.pid())
            .chain(self.worker_pids())
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingress, path)
    }

    pub fn post_json(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .expect("request")
    }

    /// The status of a trivial `POST /v1/execute` as `key` (auth, admission, pool).
    pub fn execute_status(&self, key: &str) -> u16 {
        self.post_json(key, "/v1/execute", &json!({"code": "async () => 1"}))
            .status()
            .as_u16()
    }

    pub fn execute(&self, key: &str, code: &str, env: Value) -> Value {
        let r = self.post_json(key, "/v1/execute", &json!({"code": code, "env": env}));
        assert_eq!(r.status(), 200);
        r.json().expect("json")
    }

    pub fn load(&self, key: &str, code: &Value, request: Option<Value>) -> Response {
        let mut body = json!({ "code": code });
        if let Some(r) = request {
            body["request"] = r;
        }
        self.post_json(key, "/v1/load", &body)
    }

    pub fn put_worker(&self, key: &str, id: &str, code: &Value) -> Response {
        self.client
            .put(self.url(&format!("/v1/workers/{id}")))
            .bearer_auth(key)
            .json(code)
            .send()
            .expect("request")
    }

    /// Stores a one-module Worker with source `src`; returns the status.
    pub fn put(&self, key: &str, id: &str, src: &str) -> u16 {
        self.put_worker(key, id, &worker(src)).status().as_u16()
    }

    pub fn get_worker(&self, key: &str, id: &str, rest: &str) -> Response {
        self.client
            .get(self.url(&format!("/w/{id}/{rest}")))
            .bearer_auth(key)
            .send()
            .expect("request")
    }

    /// `GET /v1/workers` as `key`.
    pub fn list(&self, key: &str) -> Value {
        self.client
            .get(self.url("/v1/workers"))
            .bearer_auth(key)
            .send()
            .expect("request")
            .json()
            .expect("json")
    }

    /// Calls the stored Worker `id` and returns the `count` field of its JSON answer.
    pub fn count(&self, key: &str, id: &str) -> u64 {
        let v: Value = self.get_worker(key, id, "").json().expect("json");
        v["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {v}"))
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(child) = self.child.as_ref() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// WorkerCode with one module `w.js`.
pub fn worker(src: &str) -> Value {
    json!({ "mainModule": "w.js", "modules": { "w.js": src } })
}

pub mod bao;
pub mod redis;
/// Loopback HTTP servers (shared with the benchmark runner: the `isogate-testkit` crate).
#[allow(unused_imports)] // not every test binary starts an upstream
pub use isogate_testkit::upstream;

/// The project's own Worker fixtures (the cases agents write).
pub mod fixtures {
    pub const HELLO: &str = r#"export default {
  async fetch(request, env, ctx) {
    return new Response("hello from isogate", { headers: { "content-type": "text/plain" } });
  },
};"#;

    pub const ECHO_JSON: &str = r#"export default {
  async fetch(request) {
    const url = new URL(request.url);
    const body = request.method === "GET" ? null : await request.json();
    return Response.json({ method: request.method, path: url.pathname,
                           query: Object.fromEntries(url.searchParams), body });
  },
};"#;

    pub const COUNTER: &str = r#"let count = 0;
export default {
  async fetch() {
    count += 1;
    return Response.json({ count });
  },
};"#;

    pub const CODEMODE: &str = r#"async (env) => {
  const ids = [1, 2, 3];
  const results = [];
  for (const id of ids) {
    console.log("looking up", id);
    results.push({ id, square: id * id });
  }
  return { total: results.reduce((a, r) => a + r.square, 0), results };
}"#;

    pub const HOSTILE_CPU: &str = r#"export default {
  async fetch() {
    while (true) {}
  },
};"#;

    pub const HOSTILE_MEMORY: &str = r#"export default {
  async fetch() {
    const hog = [];
    while (true) hog.push("x".repeat(1 << 16) + Math.random());
  },
};"#;

    pub const HOSTILE_ESCAPE: &str = r#"export default {
  async fetch() {
    const seen = {
      Deno: typeof Deno,
      process: typeof process,
      require: typeof require,
      ops: typeof globalThis.__ops,
    };
    try {
      await fetch("http://169.254.169.254/latest/meta-data/");
      seen.metadata = "reachable";
    } catch (e) {
      seen.metadata = "blocked: " + String(e.message).slice(0, 80);
    }
    return Response.json(seen);
  },
};"#;
}

/// Test certificates made with `rcgen`: a CA and leaf certificates it signs, written as PEM.
pub mod certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::path::{Path, PathBuf};

    /// A date: (year, month, day).
    pub type Ymd = (i32, u8, u8);

    /// A test certificate authority.
    pub struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    /// A leaf certificate's files.
    pub struct Leaf {
        pub cert_file: PathBuf,
        pub key_file: PathBuf,
        /// The leaf's DER (to recognise it in a handshake).
        pub der: Vec<u8>,
    }

    impl Ca {
        pub fn new() -> Ca {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "isogate test CA");
            let cert = params.self_signed(&key).expect("CA certificate");
            Ca { cert, key }
        }

        /// The CA certificate, PEM.
        pub fn pem(&self) -> String {
            self.cert.pem()
        }

        /// The CA certificate, DER.
        pub fn der(&self) -> Vec<u8> {
            self.cert.der().to_vec()
        }

        /// Writes `name.pem`/`name.key` in `dir`: a leaf for `names`, valid over
        /// `validity` ((year, month, day) from, to) or rcgen's default (1975-4096).
        pub fn leaf(
            &self,
            dir: &Path,
            name: &str,
            names: &[&str],
            validity: Option<(Ymd, Ymd)>,
        ) -> Leaf {
            let key = KeyPair::generate().expect("leaf key");
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .expect("leaf params");
            if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
                params.not_before = rcgen::date_time_ymd(y0, m0, d0);
                params.not_after = rcgen::date_time_ymd(y1, m1, d1);
            }
            let cert = params
                .signed_by(&key, &self.cert, &self.key)
                .expect("leaf certificate");
            let cert_file = dir.join(format!("{name}.pem"));
            let key_file = dir.join(format!("{name}.key"));
            std::fs::write(&cert_file, cert.pem()).expect("write cert");
            std::fs::write(&key_file, key.serialize_pem()).expect("write key");
            Leaf {
                cert_file,
                key_file,
                der: cert.der().to_vec(),
            }
        }
    }
}
