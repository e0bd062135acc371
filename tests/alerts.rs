//! The alerting rules in `deploy/prometheus/alerts.yaml` are valid and unit-tested with the
//! real `promtool` (`promtool check rules`, `promtool test rules` on
//! `deploy/prometheus/alerts.test.yaml`), and every alert has test cases there.
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it). The tests find
//! it through `ISOGATE_PROMTOOL` or on `PATH`; a missing promtool FAILS these tests (it is not a
//! reason to skip them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yaml";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The promtool binary: `ISOGATE_PROMTOOL`, else `promtool` on `PATH`. Panics when there is
/// none: these tests must not pass without running it.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("ISOGATE_PROMTOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is missing: install Debian's `prometheus` package \
                 (apt-get install prometheus; .ci/run does) or set ISOGATE_PROMTOOL"
            )
        })
}

/// Runs `promtool <args> <file>` and asserts it succeeds; returns its stdout.
fn run_promtool(args: &[&str], rel: &str) -> String {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .arg(repo_root().join(rel))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} {rel} failed ({}):\n{stdout}{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// Names of the alerting rules (`- alert: Name` lines).
fn alert_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// The test cases of a promtool test file per alert: (cases where the alert must fire, cases
/// where it must not), from each `alertname:` and the `exp_alerts:` after it.
fn test_cases(text: &str) -> BTreeMap<String, (usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("alertname:") else {
            continue;
        };
        let expected = lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .find_map(|l| l.strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("the test of {name} has no exp_alerts"))
            .trim();
        let entry = cases.entry(name.trim().to_string()).or_default();
        if expected == "[]" {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    cases
}

#[test]
fn promtool_check_rules_accepts_the_alerts() {
    let out = run_promtool(&["check", "rules"], ALERTS);
    let rules = alert_names(&read(ALERTS)).len();
    assert!(
        out.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool found a different number of rules than the {rules} alerts: {out}"
    );
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let out = run_promtool(&["test", "rules"], ALERT_TESTS);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_firing_and_silent_test_cases() {
    let alerts = alert_names(&read(ALERTS));
    assert!(alerts.len() >= 14, "only {} alerts", alerts.len());
    let tests = read(ALERT_TESTS);
    assert!(
        tests
            .lines()
            .any(|l| l.trim() == "- alerts.yaml" || l.trim() == "- ./alerts.yaml"),
        "{ALERT_TESTS} must load alerts.yaml in rule_files"
    );
    let cases = test_cases(&tests);
    let unknown: Vec<&String> = cases.keys().filter(|n| !alerts.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{ALERT_TESTS} tests alerts that alerts.yaml lacks: {unknown:?}"
    );
    let untested: Vec<String> = alerts
        .iter()
        .filter_map(|name| match cases.get(name) {
            Some((firing, silent)) if *firing > 0 && *silent > 0 => None,
            Some((firing, silent)) => {
                Some(format!("{name} ({firing} firing, {silent} silent cases)"))
            }
            None => Some(format!("{name} (no case)")),
        })
        .collect();
    assert!(
        untested.is_empty(),
        "every alert needs a case where it fires and one where it must not: {untested:?}"
    );
}

#[test]
fn test_case_scanner_counts_firing_and_silent_cases() {
    let cases = test_cases(
        "  - eval_time: 5m\n    alertname: A\n    exp_alerts: []\n  - eval_time: 9m\n    \
         alertname: A\n    exp_alerts:\n      - exp_labels: {}\n    alertname: B\n    \
         exp_alerts:\n",
    );
    assert_eq!(cases.get("A"), Some(&(1, 1)));
    assert_eq!(cases.get("B"), Some(&(1, 0)));
    assert_eq!(
        alert_names("rules:\n  - alert: X\n    expr: up\n  - alert: Y\n"),
        BTreeSet::from(["X".to_string(), "Y".to_string()])
    );
}

/// Every alert carries `runbook_url: "RUNBOOK.md#<name in lower case>"`, and RUNBOOK.md has that
/// section (a `## Name` heading, whose anchor is the lower-cased name).
#[test]
fn every_alert_links_its_runbook_section() {
    let rules = read("deploy/prometheus/alerts.yaml");
    let runbook = read("RUNBOOK.md");
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .collect();
    let names = alert_names(&rules);
    assert!(names.len() >= 15, "{names:?}");
    let links: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect();
    assert_eq!(
        links.len(),
        names.len(),
        "one runbook_url per alert: {links:?}"
    );
    for name in &names {
        let link = format!("RUNBOOK.md#{}", name.to_lowercase());
        assert!(links.contains(&link), "{name} has no runbook_url {link}");
        assert!(
            headings.contains(name),
            "RUNBOOK.md has no section \"## {name}\""
        );
    }
    // No section for an alert that does not exist.
    for heading in &headings {
        assert!(
            names.contains(heading),
            "RUNBOOK.md section {heading} has no alert"
        );
    }
}
