//! The supply-chain policy of `deny.toml` (cargo-deny's format), enforced offline from
//! `cargo metadata --locked --offline`: every package of Cargo.lock has a license the policy
//! allows, comes from an allowed registry (or is a workspace path), is not banned, and is not
//! affected by a RustSec advisory (vendored in `supply-chain/advisories/`) that `deny.toml`
//! does not list, with a reason, under `advisories.ignore`.

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

/// A RustSec advisory: its TOML front matter.
struct Advisory {
    id: String,
    package: String,
    patched: Vec<semver::VersionReq>,
    unaffected: Vec<semver::VersionReq>,
    withdrawn: bool,
    kind: String,
}

impl Advisory {
    fn parse(text: &str) -> Advisory {
        let front = text
            .strip_prefix("```toml\n")
            .and_then(|t| t.split("\n```").next())
            .expect("an advisory starts with a ```toml block");
        let doc: toml_edit::DocumentMut = front.parse().expect("advisory TOML");
        let reqs = |key: &str| -> Vec<semver::VersionReq> {
            doc.get("versions")
                .and_then(|v| v.get(key))
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            let r = r.as_str().expect("a version requirement");
                            semver::VersionReq::parse(r).unwrap_or_else(|e| panic!("{r}: {e}"))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let field = |key: &str| {
            doc["advisory"]
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Advisory {
            id: field("id").expect("advisory.id"),
            package: field("package").expect("advisory.package"),
            patched: reqs("patched"),
            unaffected: reqs("unaffected"),
            withdrawn: field("withdrawn").is_some(),
            kind: field("informational").unwrap_or_else(|| "vulnerability".into()),
        }
    }

    /// Whether `version` is affected (neither patched nor unaffected).
    fn affects(&self, version: &semver::Version) -> bool {
        !self.withdrawn
            && !self
                .patched
                .iter()
                .chain(&self.unaffected)
                .any(|r| r.comparators.iter().all(|c| within(c, version)))
    }
}

/// Whether `v` satisfies comparator `c`, by version order: unlike `VersionReq::matches`, a
/// pre-release counts (0.11.0-rc.3 is patched by `>= 0.10.3`, as it is newer).
fn within(c: &semver::Comparator, v: &semver::Version) -> bool {
    use semver::{Op, Version};
    let (minor, patch) = (c.minor.unwrap_or(0), c.patch.unwrap_or(0));
    let mut base = Version::new(c.major, minor, patch);
    base.pre = c.pre.clone();
    let bump_major = Version::new(c.major + 1, 0, 0);
    let bump_minor = Version::new(c.major, minor + 1, 0);
    let (lower, upper) = match c.op {
        Op::Exact if c.minor.is_some() && c.patch.is_some() => return *v == base,
        Op::Greater => return *v > base,
        Op::GreaterEq => return *v >= base,
        Op::Less => return *v < base,
        Op::LessEq => return *v <= base,
        Op::Tilde if c.minor.is_some() => (base, bump_minor),
        Op::Caret if c.major > 0 || c.minor.is_none() => (base, bump_major),
        Op::Caret if minor > 0 || c.patch.is_none() => (base, bump_minor),
        Op::Caret => (base, Version::new(0, 0, patch + 1)),
        // `=1`, `=1.2`, `~1`, `1.*`, `1.2.*`: everything under the named prefix.
        _ if c.minor.is_none() => (base, bump_major),
        _ => (base, bump_minor),
    };
    *v >= lower && *v < upper
}

fn advisories() -> Vec<Advisory> {
    let dir = repo_root().join("supply-chain/advisories");
    let mut out = Vec::new();
    for krate in std::fs::read_dir(&dir).expect("supply-chain/advisories") {
        for file in std::fs::read_dir(krate.unwrap().path()).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            out.push(Advisory::parse(&text));
        }
    }
    out
}

/// `advisories.ignore` of deny.toml: ids, each with a reason.
fn ignored() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("deny.toml")).expect("deny.toml");
    let doc: toml_edit::DocumentMut = text.parse().expect("deny.toml is TOML");
    doc["advisories"]["ignore"]
        .as_array()
        .expect("deny.toml: advisories.ignore is an array")
        .iter()
        .map(|v| {
            let t = v
                .as_inline_table()
                .expect("{ id = \"RUSTSEC-…\", reason = \"…\" }");
            assert!(
                t.get("reason")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.len() > 10),
                "an ignored advisory needs a reason: {t}"
            );
            t.get("id")
                .and_then(|i| i.as_str())
                .expect("id")
                .to_string()
        })
        .collect()
}

#[test]
fn no_dependency_is_affected_by_an_advisory_not_ignored_with_a_reason() {
    let advisories = advisories();
    assert!(
        advisories.len() > 50,
        "{} advisories vendored",
        advisories.len()
    );
    let ignored = ignored();
    let mut affected = Vec::new();
    let mut used_ignores = BTreeSet::new();
    for p in packages().iter().filter(|p| p["source"].is_string()) {
        let name = p["name"].as_str().unwrap_or_default();
        let version = semver::Version::parse(p["version"].as_str().unwrap_or_default())
            .expect("a package version");
        for a in advisories.iter().filter(|a| a.package == name) {
            if a.affects(&version) {
                if ignored.contains(&a.id) {
                    used_ignores.insert(a.id.clone());
                } else {
                    affected.push(format!("{name} {version}: {} ({})", a.id, a.kind));
                }
            }
        }
    }
    assert!(
        affected.is_empty(),
        "advisories affect Cargo.lock: {affected:#?}"
    );
    // An ignore that no longer matches anything is stale.
    let stale: Vec<&String> = ignored.difference(&used_ignores).collect();
    assert!(
        stale.is_empty(),
        "deny.toml ignores advisories that affect nothing: {stale:?}"
    );
}

#[test]
fn advisory_versions_are_read_as_rustsec_means_them() {
    let a = Advisory::parse(
        "```toml\n[advisory]\nid = \"RUSTSEC-0000-0000\"\npackage = \"x\"\n\n[versions]\npatched = [\">= 1.2.3\", \"~1.1.9\"]\nunaffected = [\"< 1.0.0\"]\n```\n# x\n",
    );
    for (v, affected) in [
        ("0.9.0", false),
        ("1.0.0", true),
        ("1.1.8", true),
        ("1.1.9", false),
        ("1.2.0", true),
        ("1.2.3-rc.1", true),
        ("1.2.3", false),
        ("1.3.0-rc.1", false),
        ("2.0.0", false),
    ] {
        assert_eq!(
            a.affects(&semver::Version::parse(v).unwrap()),
            affected,
            "{v}"
        );
    }
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
