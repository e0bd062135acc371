//! ARCHITECTURE.md's invariants that the source can prove, checked here rather than only stated:
//! the one-way crate graph, engine containment, and where `unsafe` may appear (each use with a
//! `// SAFETY:` line).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The names a crate depends on (normal and target-specific dependencies; not dev- or
/// build-dependencies), from its Cargo.toml.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]"
                || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            names.push(name.to_string());
        }
    }
    names
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The workspace's library and binary sources (not tests, benches or vendored code).
fn sources() -> Vec<PathBuf> {
    [
        "gateway/src",
        "isolate-pool/src",
        "config/src",
        "policy/src",
    ]
    .iter()
    .flat_map(|d| rust_files(&root().join(d)))
    .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn the_crate_graph_is_one_way() {
    let workspace = |deps: Vec<String>| -> Vec<String> {
        deps.into_iter()
            .filter(|d| d.starts_with("isogate"))
            .collect()
    };
    assert_eq!(workspace(dependencies("policy")), Vec::<String>::new());
    assert_eq!(workspace(dependencies("config")), ["isogate-policy"]);
    assert_eq!(
        workspace(dependencies("isolate-pool")),
        Vec::<String>::new()
    );
    // The pool knows the engine, not the gateway's server, store or metrics.
    for dep in dependencies("isolate-pool") {
        for forbidden in ["pingora", "prometheus", "rusqlite", "redis", "hyper"] {
            assert!(!dep.starts_with(forbidden), "isolate-pool depends on {dep}");
        }
    }
    // `policy` is pure: no I/O runtime, no engine.
    for dep in dependencies("policy") {
        for forbidden in ["tokio", "rquickjs", "llrt", "pingora", "hyper"] {
            assert!(!dep.starts_with(forbidden), "policy depends on {dep}");
        }
    }
}

#[test]
fn engine_types_stay_in_the_engine_module() {
    let engine = root().join("isolate-pool/src/engine");
    let mut leaks = Vec::new();
    for file in sources().into_iter().filter(|f| !f.starts_with(&engine)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("rquickjs") || code.contains("llrt_") {
                leaks.push(format!("{}:{}: {}", relative(&file), n + 1, line.trim()));
            }
        }
    }
    assert!(leaks.is_empty(), "engine types outside engine/: {leaks:#?}");
}

/// Files that may use `unsafe`: the engine (bytecode loading, the allocator hooks, the async
/// context FFI) and the OS interfaces (thread CPU clocks, confinement, the worker channel's fd,
/// spawning workers).
const UNSAFE_ALLOWED: &[&str] = &[
    "gateway/src/supervisor/process.rs",
    "isolate-pool/src/activity.rs",
    "isolate-pool/src/confine.rs",
    "isolate-pool/src/engine/bytecode.rs",
    "isolate-pool/src/engine/context.rs",
    "isolate-pool/src/engine/jslayer.rs",
    "isolate-pool/src/engine/memory.rs",
    "isolate-pool/src/engine/mod.rs",
    "isolate-pool/src/worker.rs",
];

#[test]
fn unsafe_appears_only_where_an_engine_or_os_api_requires_it_each_with_a_safety_line() {
    let mut files = Vec::new();
    let mut unexplained = Vec::new();
    for file in sources() {
        let name = relative(&file);
        if name.ends_with("/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut uses = 0;
        for (n, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // Blocks and impls of unsafe traits; `unsafe fn` declarations (an allocator's
            // trait methods, an FFI callback) are what the blocks inside them justify.
            let is_use = ["unsafe {", "unsafe impl"].iter().any(|u| code.contains(u));
            if !is_use {
                continue;
            }
            uses += 1;
            // The reason is on the line or in the comment block just above it.
            let explained = (n.saturating_sub(8)..=n).any(|i| lines[i].contains("SAFETY"));
            if !explained {
                unexplained.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
        if uses > 0 {
            files.push(name);
        }
    }
    assert!(
        unexplained.is_empty(),
        "unsafe without a // SAFETY: line: {unexplained:#?}"
    );
    assert_eq!(
        files, UNSAFE_ALLOWED,
        "unsafe outside the engine and the OS interfaces (or a file that no longer needs it)"
    );
}
