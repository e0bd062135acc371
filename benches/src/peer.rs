//! The peer run: Cloudflare's `workerd`, installed from the npm registry into a temporary
//! directory, serving the same hello Worker through its Worker Loader binding so that isogate's
//! `load()` and `get()` can be measured side by side with the same load generator.
//!
//! The parent Worker routes
//! - `/load`    → `env.LOADER.get(crypto.randomUUID(), ...)`: a fresh isolate per request, like
//!   isogate's `POST /v1/load`;
//! - `/load-once` → `env.LOADER.load(...)`: workerd's own one-shot load (not retained), a second
//!   point of comparison because `get(randomUUID)` keeps every isolate it created;
//! - `/get`     → `env.LOADER.get("hello", ...)`: one warm isolate, like isogate's `/w/hello/`;
//! - `/mem/<i>` → `env.LOADER.get("w<i>", ...)` with code that differs per `i`, for the
//!   RSS-per-cached-Worker scenario;
//! - `/ready`   → 200 from the parent itself (readiness probe).
//!
//! Every failure is returned as a message (`Err(String)`), never a panic: the runner prints
//! `workerd: <message>` and goes on with isogate's figures.

use crate::client::Conn;
use crate::tempfile_dir::Dir;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The npm release of workerd the peer run installs (`npm install workerd@<this>`). Pinned so
/// that runs compare against the same runtime; its build date (`workerd --version` prints
/// `workerd 2026-11-17`) bounds [`COMPAT_DATE`]. Bump it deliberately and re-run the full
/// benchmark when you do.
pub const WORKERD_NPM_VERSION: &str = "1.20261117.1";

/// `compatibilityDate` of the parent and of every loaded Worker (must not be later than the
/// workerd build's date).
const COMPAT_DATE: &str = "2025-06-01";

/// How long `npm install` and workerd's start-up may take before the peer run is abandoned.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An npm install of workerd in a temporary directory (removed on drop).
pub struct Install {
    /// The native workerd executable (not a node wrapper), so its pid is workerd itself.
    pub bin: PathBuf,
    /// `workerd --version`, e.g. `workerd 2026-11-17`.
    pub version: String,
    _dir: Dir,
}

/// Installs the pinned workerd with `npm install` into a fresh temporary directory.
pub fn install() -> Result<Install, String> {
    let dir = Dir::try_new("workerd-npm").map_err(|e| format!("temp dir: {e}"))?;
    std::fs::write(dir.path().join("package.json"), "{\"private\": true}\n")
        .map_err(|e| format!("write package.json: {e}"))?;
    let log_path = dir.path().join("npm.log");
    let log = File::create(&log_path).map_err(|e| format!("npm log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| format!("npm log: {e}"))?;
    let spec = format!("workerd@{WORKERD_NPM_VERSION}");
    let child = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            &spec,
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("npm is not available ({e}); install Node.js/npm to compare"))?;
    let status = wait_with_timeout(child, INSTALL_TIMEOUT)
        .map_err(|e| format!("npm install {spec}: {e}; {}", tail(&log_path)))?;
    if !status.success() {
        return Err(format!(
            "npm install {spec} failed ({status}): {}",
            tail(&log_path)
        ));
    }
    let bin = native_binary(&dir.path().join("node_modules"))?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("run {} --version: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Install {
        bin,
        version,
        _dir: dir,
    })
}

/// Finds the native workerd executable. `.bin/workerd` links to `workerd/bin/workerd`, which the
/// package's postinstall replaces with the native binary but which is a node wrapper script when
/// install scripts did not run; the platform package (`@cloudflare/workerd-linux-64`, ...)
/// always holds the native binary, so it is preferred.
fn native_binary(node_modules: &Path) -> Result<PathBuf, String> {
    let platform = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("workerd-linux-64"),
        ("linux", "aarch64") => Some("workerd-linux-arm64"),
        ("macos", "x86_64") => Some("workerd-darwin-64"),
        ("macos", "aarch64") => Some("workerd-darwin-arm64"),
        _ => None,
    };
    let mut candidates = Vec::new();
    if let Some(p) = platform {
        candidates.push(node_modules.join("@cloudflare").join(p).join("bin/workerd"));
    }
    candidates.push(node_modules.join(".bin/workerd"));
    for c in &candidates {
        if is_native(c) {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "no native workerd binary after npm install (looked at {}; `.bin/workerd` is missing or a wrapper script)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// ELF or Mach-O magic: a native executable rather than a `#!/usr/bin/env node` script.
fn is_native(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && (magic == *b"\x7fELF"
            || magic == [0xcf, 0xfa, 0xed, 0xfe]
            || magic == [0xca, 0xfe, 0xba, 0xbe])
}

/// A running `workerd serve` on a free loopback port; killed on drop.
pub struct Workerd {
    child: Child,
    /// `127.0.0.1:<port>` of its HTTP socket.
    pub addr: String,
    log: PathBuf,
    _dir: Dir,
}

impl Workerd {
    /// Writes the config and the parent Worker, starts workerd, waits until `/ready` answers and
    /// checks that `/load` and `/get` return the hello Worker's body.
    pub fn start(install: &Install, tag: &str, hello: &str) -> Result<Workerd, String> {
        let dir = Dir::try_new(&format!("workerd-{tag}")).map_err(|e| format!("temp dir: {e}"))?;
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).map_err(|e| format!("write {name}: {e}"))
        };
        write("parent.js", parent_worker(hello))?;
        write("config.capnp", config(&addr))?;
        let log = dir.path().join("workerd.log");
        let out = File::create(&log).map_err(|e| format!("workerd log: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("workerd log: {e}"))?;
        let child = Command::new(&install.bin)
            .args(["serve", "config.capnp", "--experimental"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", install.bin.display()))?;
        let mut w = Workerd {
            child,
            addr,
            log,
            _dir: dir,
        };
        w.wait_ready()?;
        for path in ["/load", "/get"] {
            w.smoke(path)?;
        }
        Ok(w)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut c) = Conn::connect(&self.addr) {
                if let Ok((200, _)) = c.request("GET", "/ready", &[], b"") {
                    return Ok(());
                }
            }
            self.alive()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready on {} after {START_TIMEOUT:?}: {}",
                    self.addr,
                    tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request that must return the hello Worker's response.
    fn smoke(&self, path: &str) -> Result<(), String> {
        let mut c = Conn::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
        match c.request("GET", path, &[], b"") {
            Ok((200, body)) if body.starts_with(b"hello from isogate") => Ok(()),
            Ok((status, body)) => Err(format!(
                "GET {path} answered {status} {:?}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]),
                tail(&self.log)
            )),
            Err(e) => Err(format!("GET {path}: {e}: {}", tail(&self.log))),
        }
    }

    /// `Err` with the exit status and the log's tail once the process has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("exited ({status}): {}", tail(&self.log))),
            Err(e) => Err(format!("wait: {e}")),
        }
    }

    /// The workerd process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS of the workerd process itself.
    pub fn rss_kib(&self) -> u64 {
        crate::rss_kib(self.child.id())
    }
}

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An I/O-bound Worker: every request waits 20 ms (a timer, as if on an upstream) before it
/// answers. Served as the cached Worker `sleepy` on both sides.
pub const SLEEPY: &str = r#"export default { async fetch() { await new Promise((r) => setTimeout(r, 20)); return new Response("slept"); } }"#;

/// The parent Worker. `hello` is embedded as a JSON string literal (valid JavaScript), so the
/// loaded Workers run exactly the source isogate runs; `/mem/<i>` prepends `const id = <i>; `
/// as isogate's memory scenario does.
fn parent_worker(hello: &str) -> String {
    let hello = serde_json::to_string(hello).unwrap_or_default();
    let sleepy = serde_json::to_string(SLEEPY).unwrap_or_default();
    format!(
        r#"const HELLO = {hello};
const SLEEPY = {sleepy};
const code = (source) => () => ({{
  compatibilityDate: "{COMPAT_DATE}",
  mainModule: "w.js",
  modules: {{ "w.js": source }},
}});
export default {{
  async fetch(request, env) {{
    const path = new URL(request.url).pathname;
    let worker;
    if (path === "/load") {{
      worker = env.LOADER.get(crypto.randomUUID(), code(HELLO));
    }} else if (path === "/load-once") {{
      worker = env.LOADER.load(code(HELLO)());
    }} else if (path === "/get") {{
      worker = env.LOADER.get("hello", code(HELLO));
    }} else if (path === "/get-sleepy") {{
      worker = env.LOADER.get("sleepy", code(SLEEPY));
    }} else if (path.startsWith("/mem/") && /^[0-9]+$/.test(path.slice(5))) {{
      const i = Number(path.slice(5));
      worker = env.LOADER.get(`w${{i}}`, code(`const id = ${{i}}; ${{HELLO}}`));
    }} else if (path === "/ready") {{
      return new Response("ready");
    }} else {{
      return new Response("not found", {{ status: 404 }});
    }}
    return worker.getEntrypoint().fetch(request);
  }},
}};
"#
    )
}

fn config(addr: &str) -> String {
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "parent", worker = .parent) ],
  sockets = [ (name = "http", address = "{addr}", http = (), service = "parent") ],
);

const parent :Workerd.Worker = (
  modules = [ (name = "parent.js", esModule = embed "parent.js") ],
  compatibilityDate = "{COMPAT_DATE}",
  compatibilityFlags = ["experimental"],
  bindings = [ (name = "LOADER", workerLoader = ()) ],
);
"#
    )
}

fn wait_with_timeout(
    mut child: Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// The last lines of a log file, on one line, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(5)..].join(" | ");
    if last.is_empty() {
        "(no output)".into()
    } else {
        last
    }
}
