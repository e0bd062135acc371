//! The supply-chain policy of `deny.toml` (cargo-deny's format), enforced offline from
//! `cargo metadata --locked --offline`: every package of Cargo.lock has a license the policy
//! allows, comes from an allowed registry (or is a workspace path), and is not banned.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

struct Policy {
    licenses: BTreeSet<String>,
    banned: BTreeSet<String>,
    registries: BTreeSet<String>,
}

fn policy() -> Policy {
    let text = std::fs::read_to_string(repo_root().join("deny.toml")).expect("deny.toml");
    let doc: toml_edit::DocumentMut = text.parse().expect("deny.toml is TOML");
    let strings = |table: &str, key: &str| -> BTreeSet<String> {
        doc[table][key]
            .as_array()
            .unwrap_or_else(|| panic!("deny.toml: {table}.{key} is an array"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    };
    let banned = doc["bans"]["deny"]
        .as_array()
        .expect("deny.toml: bans.deny is an array")
        .iter()
        .map(|v| {
            let t = v.as_inline_table().expect("{ crate = \"name\" }");
            t.get("crate")
                .or_else(|| t.get("name"))
                .and_then(|n| n.as_str())
                .expect("a crate name")
                .to_string()
        })
        .collect();
    Policy {
        licenses: strings("licenses", "allow"),
        banned,
        registries: strings("sources", "allow-registry"),
    }
}

/// Whether an SPDX expression is satisfied by `allowed` (`OR`: one side; `AND`: both; `/` is
/// the legacy spelling of `OR`; `A WITH B` must be allowed as written). A malformed expression
/// is not.
fn satisfied(expression: &str, allowed: &BTreeSet<String>) -> bool {
    let spaced = expression
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    let ok = or(&tokens, &mut at, allowed);
    ok == Some(true) && at == tokens.len()
}

fn or(tokens: &[&str], at: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    let mut ok = and(tokens, at, allowed)?;
    while tokens.get(*at) == Some(&"OR") {
        *at += 1;
        ok |= and(tokens, at, allowed)?;
    }
    Some(ok)
}

fn and(tokens: &[&str], at: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    let mut ok = one(tokens, at, allowed)?;
    while tokens.get(*at) == Some(&"AND") {
        *at += 1;
        ok &= one(tokens, at, allowed)?;
    }
    Some(ok)
}

fn one(tokens: &[&str], at: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    match *tokens.get(*at)? {
        "(" => {
            *at += 1;
            let ok = or(tokens, at, allowed)?;
            (tokens.get(*at) == Some(&")")).then(|| {
                *at += 1;
                ok
            })
        }
        ")" | "AND" | "OR" | "WITH" => None,
        license => {
            *at += 1;
            let mut name = license.to_string();
            if tokens.get(*at) == Some(&"WITH") {
                name = format!("{name} WITH {}", tokens.get(*at + 1)?);
                *at += 2;
            }
            Some(allowed.contains(&name))
        }
    }
}

fn packages() -> Vec<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    metadata["packages"].as_array().expect("packages").clone()
}

#[test]
fn every_dependency_meets_the_deny_toml_policy() {
    let policy = policy();
    let packages = packages();
    assert!(packages.len() > 100, "{} packages", packages.len());
    let mut problems = Vec::new();
    for p in &packages {
        let id = format!(
            "{} {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
        match p["license"].as_str() {
            Some(l) if satisfied(l, &policy.licenses) => {}
            Some(l) => problems.push(format!("{id}: license {l:?} is not allowed")),
            None => problems.push(format!("{id}: no license")),
        }
        match p["source"].as_str() {
            None => {} // a workspace member
            Some(s) => match s.strip_prefix("registry+") {
                Some(registry) if policy.registries.contains(registry) => {}
                _ => problems.push(format!("{id}: source {s} is not allowed")),
            },
        }
        if policy
            .banned
            .contains(p["name"].as_str().unwrap_or_default())
        {
            problems.push(format!("{id}: banned"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn spdx_expressions_are_evaluated_as_cargo_deny_does() {
    let allowed: BTreeSet<String> = ["MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (expression, ok) in [
        ("MIT", true),
        ("GPL-3.0", false),
        ("MIT OR GPL-3.0", true),
        ("MIT AND GPL-3.0", false),
        ("(MIT OR Apache-2.0) AND GPL-3.0", false),
        ("(MIT OR GPL-3.0) AND Apache-2.0", true),
        ("MIT/Apache-2.0", true),
        ("Apache-2.0 WITH LLVM-exception", true),
        ("GPL-2.0 WITH Classpath-exception-2.0", false),
        ("MIT OR", false),
        ("(MIT", false),
    ] {
        assert_eq!(satisfied(expression, &allowed), ok, "{expression}");
    }
}
