//! `@isogate/codemode` (clients/codemode): the `IsogateExecutor` for `@cloudflare/codemode`,
//! with the real codemode package from npm (createCodeTool, the Executor contract), against the
//! real gateway. The Node.js side is clients/codemode/test/executor.test.mjs (node:test); this
//! test builds the package with its pinned TypeScript, starts the gateway and runs it.
//!
//! Needs Node.js and the package's npm dependencies in clients/codemode/node_modules
//! (scripts/prerequisites.sh, `ensure_codemode`, installs them with `npm ci`).

mod common;

use common::{tenant_yaml, Gateway};
use std::path::PathBuf;
use std::process::Command;

const KEY: &str = "codemode-key";

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("clients/codemode")
}

#[test]
fn the_executor_runs_codemode_against_the_gateway() {
    let dir = package_dir();
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "clients/codemode's npm packages are missing: run `npm ci` there (scripts/prerequisites.sh does)"
    );
    let built = Command::new(&tsc)
        .arg("-p")
        .arg(&dir)
        .output()
        .expect("tsc runs");
    assert!(
        built.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let limits = "cpu_ms: 100, memory_mb: 64, wall_ms: 5000, subrequests: 5, max_concurrency: 8, max_cached_workers: 10, max_body_bytes: 1048576";
    let g = Gateway::start(
        "threads: 2, warm_isolates: 2",
        &tenant_yaml("agents", KEY, limits),
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .args(["--import", "./test/register.mjs", "test/executor.test.mjs"])
        .env("ISOGATE_URL", g.url(""))
        .env("ISOGATE_KEY", KEY)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // node:test's summary: every test ran and passed.
    assert!(stdout.contains("# pass 5"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
    // The tool calls went through the gateway's streamed protocol.
    let ok = g.metric(r#"isogate_client_tool_calls_total{outcome="ok",tenant="agents"}"#);
    assert!(ok >= 14.0, "{ok}");
}
