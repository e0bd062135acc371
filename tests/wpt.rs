//! Web Platform Tests through the real gateway.
//!
//! The WPT files under `tests/wpt/wpt/` are verbatim copies of one upstream revision (see
//! `tests/wpt/SOURCES.md`). Each `.any.js` test that runs in a worker global becomes one Worker:
//! the runner's prelude (a `location` for the file, relative `fetch()` URLs resolved against it,
//! `self.GLOBAL`, the completion hook), then `resources/testharness.js`, the file's
//! `// META: script=` includes and the test itself as classic scripts (see [`module`]), and a
//! fetch handler that answers the harness's results as JSON. It runs through `POST /v1/load` of a real `isogate` (the default isolation:
//! a confined worker process), with the WPT tree served by a real HTTP server on loopback that
//! the tenant's egress policy allows (tests fetch their data files, e.g. `urltestdata.json`).
//!
//! `tests/wpt/expectations.txt` lists every subtest known to fail, one line each:
//! `file<TAB>subtest<TAB>reason` (`*` as the subtest: the file as a whole — it did not load, or
//! the harness itself errored or timed out). The test fails when a subtest that is expected to
//! pass fails, when one that is expected to fail passes, and when a listed subtest no longer
//! exists, so the list stays true. `ISOGATE_WPT_BLESS=1` rewrites the list from the run (the
//! reason is the failure's message). A Rust panic in the gateway's log fails the test too.

mod common;

use common::upstream::{Answer, Upstream};
use common::{sha256_hex, Gateway};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "wpt-key";
/// The harness's own timeout for a file (`timeout()` marks unfinished subtests TIMEOUT).
const FILE_TIMEOUT_MS: u64 = 10_000;
/// For files marked `// META: timeout=long`.
const LONG_TIMEOUT_MS: u64 = 30_000;
/// Files run at once (each on an isolate thread of the gateway).
const PARALLEL: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/wpt")
}

/// One test file and what its `// META:` lines say.
struct TestFile {
    /// Path under the WPT root, `/`-separated.
    path: String,
    scripts: Vec<String>,
    long: bool,
}

/// Whether a `global=` list includes a worker-like scope.
fn runs_in_workers(globals: &str) -> bool {
    globals.split(',').map(str::trim).any(|g| {
        matches!(
            g,
            "worker" | "dedicatedworker" | "serviceworker" | "sharedworker" | "shadowrealm"
        ) || g.starts_with("dedicatedworker-")
    })
}

/// Resolves a META script path against the test file's directory (or the WPT root for `/…`).
fn resolve(file: &str, script: &str) -> String {
    let mut parts: Vec<&str> = if script.starts_with('/') {
        Vec::new()
    } else {
        let mut dir: Vec<&str> = file.split('/').collect();
        dir.pop();
        dir
    };
    for seg in script.trim_start_matches('/').split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let path = parts.join("/");
    // The WPT server serves this path from the webidl2 library.
    if path == "resources/WebIDLParser.js" {
        return "resources/webidl2/lib/webidl2.js".into();
    }
    path
}

fn discover() -> Vec<TestFile> {
    let base = root().join("wpt");
    let mut found = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read tests/wpt") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".any.js") {
                found.push(path);
            }
        }
    }
    found.sort();
    let mut files = Vec::new();
    for path in found {
        let rel = path
            .strip_prefix(&base)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("read test");
        let mut file = TestFile {
            path: rel.clone(),
            scripts: Vec::new(),
            long: false,
        };
        let mut in_workers = true;
        for line in text.lines() {
            let Some(meta) = line.strip_prefix("// META:") else {
                if line.trim().is_empty() {
                    continue;
                }
                break;
            };
            let meta = meta.trim();
            if let Some(g) = meta.strip_prefix("global=") {
                in_workers = runs_in_workers(g);
            } else if let Some(s) = meta.strip_prefix("script=") {
                file.scripts.push(resolve(&rel, s.trim()));
            } else if meta == "timeout=long" {
                file.long = true;
            }
        }
        if in_workers {
            files.push(file);
        }
    }
    files
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join("wpt").join(path))
        .unwrap_or_else(|e| panic!("{path}: {e} (a META script missing from tests/wpt?)"))
}

/// A `.sub.` file is a template the WPT server fills in (`{{host}}`, `{{ports[http][0]}}`, ...);
/// here every host is loopback and every port the data server's (one origin: the cross-origin
/// cases of such tests cannot pass and are listed as expected failures).
fn substitute(path: &str, text: String, port: u16) -> String {
    if !path.contains(".sub.") {
        return text;
    }
    let mut out = text;
    for (from, to) in [
        ("{{host}}", "127.0.0.1".to_string()),
        ("{{domains[www]}}", "127.0.0.1".to_string()),
        ("{{domains[www1]}}", "127.0.0.1".to_string()),
        ("{{domains[www2]}}", "127.0.0.1".to_string()),
        ("{{hosts[alt][]}}", "127.0.0.1".to_string()),
        ("{{ports[http][0]}}", port.to_string()),
        ("{{ports[http][1]}}", port.to_string()),
        ("{{ports[https][0]}}", port.to_string()),
        ("{{ports[https][1]}}", port.to_string()),
    ] {
        out = out.replace(from, &to);
    }
    out
}

/// The Worker module for `file`, its data served from `base` (`http://127.0.0.1:PORT/`).
///
/// As the WPT server's `.any.worker.js` wrapper does: `self.GLOBAL` says "worker", then
/// testharness.js, the META scripts and the test run as one classic script in the global scope
/// (one indirect `eval` of their concatenation: sloppy mode, top-level bindings shared as with
/// `importScripts`), then `done()`. An uncaught error makes the harness status ERROR with that
/// error as its message (as the harness's global error handler would).
fn module(file: &TestFile, base: &str) -> String {
    let timeout = if file.long {
        LONG_TIMEOUT_MS
    } else {
        FILE_TIMEOUT_MS
    };
    let mut scripts = vec![(
        "resources/testharness.js".to_string(),
        read("resources/testharness.js"),
    )];
    scripts.push((
        "isogate-wpt-hook.js".to_string(),
        r#"add_completion_callback((tests, status) => __wptResolve({
  status: status.status,
  message: status.message === null || status.message === undefined ? null : String(status.message),
  tests: tests.map((t) => ({ name: String(t.name), status: t.status, message: t.message === null || t.message === undefined ? null : String(t.message) })),
}));"#
            .to_string(),
    ));
    let port: u16 = base
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    for script in &file.scripts {
        scripts.push((script.clone(), substitute(script, read(script), port)));
    }
    scripts.push((file.path.clone(), read(&file.path)));
    let scripts: Vec<Value> = scripts
        .into_iter()
        .map(|(name, src)| json!([name, src]))
        .collect();
    format!(
        r#"// isogate WPT runner
globalThis.location = new URL({url});
globalThis.GLOBAL = {{ isWindow: () => false, isWorker: () => true, isShadowRealm: () => false }};
{{
  const nativeFetch = globalThis.fetch;
  globalThis.fetch = function fetch(input, init) {{
    try {{
      if (typeof input === "string" || input instanceof URL) input = new URL(String(input), location.href).href;
    }} catch (e) {{
      return Promise.reject(new TypeError(e.message));
    }}
    return init === undefined ? nativeFetch(input) : nativeFetch(input, init);
  }};
}}
let __wptResolve;
const __wptFinished = new Promise((resolve) => {{ __wptResolve = resolve; }});
const __wptErrors = [];
globalThis.__wptResolve = (r) => __wptResolve(r);
const __wptSource = {scripts}.map(([name, src]) => `\n;// ---- ${{name}}\n${{src}}\n`).join("");
try {{
  (0, eval)(__wptSource);
}} catch (e) {{
  __wptErrors.push(`${{e && e.name}}: ${{e && e.message}}`);
}}
try {{
  done();
}} catch (e) {{
  __wptErrors.push(`done(): ${{e && e.name}}: ${{e && e.message}}`);
}}
export default {{
  async fetch() {{
    const timer = setTimeout(() => timeout(), {timeout});
    const results = await __wptFinished;
    clearTimeout(timer);
    if (__wptErrors.length > 0) {{
      results.status = 1;
      results.message = "uncaught " + __wptErrors.join("; ") + (results.message ? "; " + results.message : "");
    }}
    return new Response(JSON.stringify(results), {{ headers: {{ "content-type": "application/json" }} }});
  }},
}};
"#,
        url = serde_json::to_string(&format!("{base}{}", file.path)).unwrap(),
        scripts = Value::Array(scripts)
    )
}

/// What one file produced: subtest name → failure reason (None: passed), and the file-level
/// failure, if any.
#[derive(Default)]
struct FileResult {
    subtests: BTreeMap<String, Option<String>>,
    file_failure: Option<String>,
}

const STATUS: [&str; 5] = ["PASS", "FAIL", "TIMEOUT", "NOTRUN", "PRECONDITION_FAILED"];
const HARNESS: [&str; 4] = ["OK", "ERROR", "TIMEOUT", "PRECONDITION_FAILED"];

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.trim();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s.to_string()
    }
}

fn run_file(g: &Gateway, file: &TestFile, base: &str) -> FileResult {
    let code = json!({ "mainModule": "test.js", "modules": { "test.js": module(file, base) } });
    let mut result = FileResult::default();
    let response = match g
        .client
        .post(g.url("/v1/load"))
        .bearer_auth(KEY)
        .json(&json!({ "code": code }))
        .timeout(Duration::from_secs(120))
        .send()
    {
        Ok(r) => r,
        Err(e) => {
            result.file_failure = Some(one_line(&format!("request failed: {e}")));
            return result;
        }
    };
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            result.file_failure = Some(one_line(&format!("HTTP {status}: {text}")));
            return result;
        }
    };
    if status != 200 || v.get("tests").is_none() {
        let why = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let kind = v["error"]["kind"].as_str().unwrap_or("?");
        result.file_failure = Some(one_line(&format!("HTTP {status} {kind}: {why}")));
        return result;
    }
    let harness = v["status"].as_u64().unwrap_or(1) as usize;
    if harness != 0 {
        result.file_failure = Some(one_line(&format!(
            "harness {}: {}",
            HARNESS.get(harness).unwrap_or(&"?"),
            v["message"].as_str().unwrap_or("")
        )));
    }
    for t in v["tests"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("").to_string();
        let code = t["status"].as_u64().unwrap_or(1) as usize;
        let outcome = if code == 0 {
            None
        } else {
            Some(one_line(&format!(
                "{}: {}",
                STATUS.get(code).unwrap_or(&"?"),
                t["message"].as_str().unwrap_or("")
            )))
        };
        // Duplicate names: a failure of any of them counts.
        let entry = result.subtests.entry(name).or_insert(None);
        if entry.is_none() {
            *entry = outcome;
        }
    }
    result
}

/// Control characters in names (tabs and newlines would break the line format) as `\u{..}`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

type Key = (String, String);

fn expectations() -> BTreeMap<Key, String> {
    let text = std::fs::read_to_string(root().join("expectations.txt")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let (Some(file), Some(name)) = (cols.next(), cols.next()) else {
            panic!(
                "tests/wpt/expectations.txt:{}: expected file<TAB>subtest<TAB>reason",
                n + 1
            );
        };
        out.insert(
            (file.to_string(), name.to_string()),
            cols.next().unwrap_or("").to_string(),
        );
    }
    out
}

fn area(file: &str) -> String {
    let parts: Vec<&str> = file.split('/').collect();
    match parts.as_slice() {
        ["fetch", "api", sub, ..] => format!("fetch/api/{sub}"),
        [a, b, _, ..] => format!("{a}/{b}"),
        [a, ..] => a.to_string(),
        [] => String::new(),
    }
}

#[test]
fn web_platform_tests_pass_as_expected() {
    let files = discover();
    assert!(files.len() > 150, "only {} WPT files found", files.len());

    let wpt = root().join("wpt");
    let server = Upstream::start(move |seen| {
        let path = seen.target.split('?').next().unwrap_or("/");
        let rel = path.trim_start_matches('/');
        let full = wpt.join(rel);
        match (rel.contains(".."), std::fs::read(&full)) {
            (false, Ok(body)) => {
                let kind = if rel.ends_with(".json") {
                    "application/json"
                } else if rel.ends_with(".js") {
                    "text/javascript"
                } else {
                    "application/octet-stream"
                };
                Answer {
                    status: 200,
                    headers: vec![("content-type".into(), kind.into())],
                    body,
                }
            }
            _ => Answer {
                status: 404,
                headers: vec![],
                body: b"not found".to_vec(),
            },
        }
    });
    let base = format!("http://127.0.0.1:{}/", server.port);
    let tenant = format!(
        "  - name: wpt\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ cpu_ms: 60000, wall_ms: 60000, memory_mb: 256, subrequests: 200, max_concurrency: 16, max_body_bytes: 16777216 }}\n    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          methods: [GET, HEAD, POST]\n          name: wpt\n",
        sha256_hex(KEY),
        server.port
    );
    let g = Gateway::start("threads: 2", &tenant);

    let queue = Arc::new(Mutex::new(files.into_iter().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(BTreeMap::<String, FileResult>::new()));
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            let (queue, results, g, base) = (queue.clone(), results.clone(), &g, &base);
            s.spawn(move || loop {
                let Some(file) = queue.lock().unwrap().pop() else {
                    return;
                };
                let r = run_file(g, &file, base);
                results.lock().unwrap().insert(file.path.clone(), r);
            });
        }
    });
    let results = std::mem::take(&mut *results.lock().unwrap());

    // Observed failures, keyed as in the expectations file.
    let mut failed: BTreeMap<Key, String> = BTreeMap::new();
    let mut seen: BTreeSet<Key> = BTreeSet::new();
    let mut per_area: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (file, r) in &results {
        let key = (file.clone(), "*".to_string());
        seen.insert(key.clone());
        if let Some(why) = &r.file_failure {
            failed.insert(key, why.clone());
        }
        let tally = per_area.entry(area(file)).or_default();
        for (name, outcome) in &r.subtests {
            let key = (file.clone(), escape(name));
            seen.insert(key.clone());
            tally.1 += 1;
            match outcome {
                None => tally.0 += 1,
                Some(why) => {
                    failed.insert(key, why.clone());
                }
            }
        }
    }
    let (passed, total) = per_area
        .values()
        .fold((0, 0), |(p, t), (ap, at)| (p + ap, t + at));
    println!("WPT subtests passed, by area:");
    for (a, (p, t)) in &per_area {
        println!("  {a:<40} {p:>5} / {t:<5}");
    }
    println!(
        "  {:<40} {passed:>5} / {total:<5} ({:.1} %)",
        "total",
        100.0 * passed as f64 / total.max(1) as f64
    );

    let panics: Vec<String> = g
        .log()
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_string)
        .collect();
    assert!(panics.is_empty(), "Rust panics during WPT: {panics:#?}");

    if std::env::var("ISOGATE_WPT_BLESS").is_ok_and(|v| v == "1") {
        let mut out = String::from(
            "# WPT subtests known to fail on isogate: file<TAB>subtest<TAB>reason (`*`: the whole file).\n\
             # Checked by tests/wpt.rs; regenerate with ISOGATE_WPT_BLESS=1 cargo test --test wpt.\n",
        );
        for ((file, name), why) in &failed {
            out.push_str(&format!("{file}\t{name}\t{why}\n"));
        }
        std::fs::write(root().join("expectations.txt"), out).expect("write expectations");
        return;
    }

    let expected = expectations();
    let mut problems = Vec::new();
    for (key, why) in &failed {
        if !expected.contains_key(key) {
            problems.push(format!(
                "unexpected failure: {} :: {} — {why}",
                key.0, key.1
            ));
        }
    }
    for key in expected.keys() {
        if !seen.contains(key) {
            problems.push(format!(
                "listed but not run (stale entry): {} :: {}",
                key.0, key.1
            ));
        } else if !failed.contains_key(key) {
            problems.push(format!(
                "unexpected pass (remove it from tests/wpt/expectations.txt): {} :: {}",
                key.0, key.1
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} WPT discrepancies:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
