//! The `isogate` command line on good and bad input.

mod common;

use std::process::Command;

fn isogate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isogate"))
        .args(args)
        .output()
        .expect("run isogate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `isogate explain --config CONFIG --tenant TENANT METHOD URL`.
fn explain(config: &str, tenant: &str, method: &str, url: &str) -> (i32, String, String) {
    isogate(&[
        "explain", "--config", config, "--tenant", tenant, method, url,
    ])
}

fn example() -> String {
    format!(
        "{}/../deploy/examples/isogate.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn check_accepts_the_example_config() {
    let (code, out, err) = isogate(&["check", "--config", &example()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 tenant, 0 public routes)"), "{out}");
}

#[test]
fn check_rejects_a_bad_config_naming_the_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("cpu_ms: 50", "cpu_mss: 50");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = isogate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("tenants[0].limits.cpu_mss"), "{err}");
    let (code, _, err) = isogate(&["check", "--config", "/nonexistent/isogate.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/isogate.yaml"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "tenants: []\n").unwrap();
    let (code, _, err) = isogate(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("tenants"), "{err}");
}

#[test]
fn hash_key_prints_a_key_and_its_sha256() {
    let (code, out, _) = isogate(&["hash-key"]);
    assert_eq!(code, 0);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("api key: "))
        .unwrap()
        .trim();
    let sha = out
        .lines()
        .find_map(|l| l.strip_prefix("sha256:  "))
        .unwrap()
        .trim();
    use sha2::Digest;
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(key.as_bytes())));
    assert!(key.len() > 40);
}

fn deploy(file: &str) -> String {
    format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn egress_example() -> String {
    deploy("examples/egress.yaml")
}

#[test]
fn check_accepts_the_egress_example() {
    let (code, out, err) = isogate(&["check", "--config", &egress_example()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 tenant, 0 public routes)"), "{out}");
}

#[test]
fn checked_in_schema_matches_the_binary() {
    let (code, out, err) = isogate(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let generated: serde_json::Value = serde_json::from_str(&out).expect("schema is JSON");
    assert_eq!(generated["title"], "Config");
    let path = deploy("isogate.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let checked_in: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        generated == checked_in,
        "deploy/isogate.schema.json is out of date with the config types; regenerate it with\n  \
         cargo run -q -p isogate -- schema > deploy/isogate.schema.json"
    );
}

/// A configuration whose rules need no DNS beyond `localhost`. (Its listeners are not bound:
/// `explain` only reads them, to refuse them as destinations.)
const LOCAL: &str = r#"
listen: { ingress: "127.0.0.1:18080", admin: "127.0.0.1:19090" }
tenants:
  - name: ops
    api_keys: [{ sha256: "1111111111111111111111111111111111111111111111111111111111111111" }]
    egress:
      rate_limit: { per_second: 20, burst: 40 }
      allow:
        - host: localhost
          name: local-dev
          ports: [8080]
          allow_private: true
          credential: local
          rate_limit: { per_second: 2, burst: 4 }
        - host: 169.254.169.254
          name: metadata
          allow_private: true
        - host: 169.254.170.2
          name: ecs
          allow_private: true
        - host: fd00:ec2::23
          name: eks
          allow_private: true
        - host: metadata.google.internal
          name: gcp
          allow_private: true
        - host: localhost
          name: self
          ports: [19090]
          allow_private: true
  - name: rollout
    api_keys: [{ sha256: "3333333333333333333333333333333333333333333333333333333333333333" }]
    egress:
      mode: report
      allow:
        - host: localhost
          ports: [8080]
          allow_private: true
  - name: strict
    api_keys: [{ sha256: "2222222222222222222222222222222222222222222222222222222222222222" }]
    egress:
      allow:
        - host: localhost
          ports: [8080]
        - host: 168.63.129.16
          name: azure
credentials:
  - name: local
    source: { env: LOCAL_TOKEN }
    inject: { query: token, value: "${secret}" }
"#;

fn local_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.yaml");
    std::fs::write(&path, LOCAL).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn explain_an_allowed_request_with_credential_and_rate_limits() {
    let (code, out, err) = explain(
        &egress_example(),
        "demo",
        "GET",
        "https://api.github.com/repos/x/y",
    );
    assert!(out.contains("host:      api.github.com"), "{out}{err}");
    assert!(out.contains("port:      443"), "{out}");
    assert!(out.contains("path:      /repos/x/y"), "{out}");
    assert!(out.contains("allow, rule `api.github.com`"), "{out}");
    assert!(out.contains("github -> header `Authorization`"), "{out}");
    assert!(out.contains("rule:      5/s, burst 10"), "{out}");
    assert!(out.contains("tenant:    50/s, burst 100"), "{out}");
    // api.github.com may not resolve here (offline): then the gateway would refuse it too.
    if out.contains("verdict:   pass") {
        assert_eq!(code, 0, "{out}");
    } else {
        assert!(
            out.contains("verdict:   unresolved") || out.contains("verdict:   refused"),
            "{out}"
        );
        assert_eq!(code, 2, "{out}");
    }
}

#[test]
fn explain_localhost_with_allow_private_passes() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(&config, "ops", "POST", "http://LOCALHOST:8080/a/./b?x=1");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("host:      localhost"), "{out}");
    assert!(out.contains("path:      /a/b"), "{out}");
    assert!(out.contains("query:     x=1"), "{out}");
    assert!(out.contains("allow, rule `local-dev`"), "{out}");
    assert!(out.contains("local -> query parameter `token`"), "{out}");
    assert!(out.contains("rule:      2/s, burst 4"), "{out}");
    assert!(out.contains("tenant:    20/s, burst 40"), "{out}");
    assert!(
        out.contains("loopback address (allowed by allow_private)"),
        "{out}"
    );
    assert!(out.contains("verdict:   pass"), "{out}");
}

#[test]
fn explain_localhost_without_allow_private_is_refused() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(&config, "strict", "GET", "http://localhost:8080/");
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("allow, rule `localhost`"), "{out}");
    assert!(out.contains("credential:  none"), "{out}");
    assert!(out.contains("rule:      none"), "{out}");
    assert!(out.contains("loopback address (blocked)"), "{out}");
    assert!(out.contains("verdict:   refused"), "{out}");
}

#[test]
fn explain_cloud_metadata_is_refused_even_with_allow_private() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(
        &config,
        "ops",
        "GET",
        "http://169.254.169.254/latest/meta-data/",
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("allow, rule `metadata`"), "{out}");
    assert!(out.contains("allow_private: true"), "{out}");
    assert!(out.contains("cloud metadata address"), "{out}");
    assert!(out.contains("verdict:   refused"), "{out}");
}

#[test]
fn explain_an_unknown_host_is_denied() {
    let (code, out, err) = explain(
        &egress_example(),
        "demo",
        "GET",
        "https://evil.example.org/x",
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("deny: no egress rule allows host evil.example.org"),
        "{out}"
    );
    assert!(out.contains("credential:  none"), "{out}");
}

#[test]
fn explain_json_has_the_documented_shape() {
    let (_dir, config) = local_config();
    let (code, out, err) = isogate(&[
        "explain",
        "--json",
        "-c",
        &config,
        "-t",
        "ops",
        "GET",
        "http://localhost:8080/x",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(v["target"]["scheme"], "http");
    assert_eq!(v["target"]["host"], "localhost");
    assert_eq!(v["target"]["port"], 8080);
    assert_eq!(v["target"]["path"], "/x");
    assert_eq!(v["decision"]["allowed"], true);
    assert_eq!(v["decision"]["rule"], "local-dev");
    assert!(v["decision"]["reason"].is_null());
    assert_eq!(v["decision"]["mode"], "enforce");
    assert_eq!(v["credential"]["name"], "local");
    assert_eq!(v["credential"]["inject"]["query"], "token");
    assert_eq!(v["rate_limits"]["rule"]["per_second"], 2);
    assert_eq!(v["rate_limits"]["rule"]["burst"], 4);
    assert_eq!(v["rate_limits"]["tenant"]["per_second"], 20);
    assert_eq!(v["ssrf"]["verdict"], "pass");
    assert_eq!(v["ssrf"]["allow_private"], true);
    let addresses = v["ssrf"]["addresses"].as_array().unwrap();
    assert!(!addresses.is_empty());
    for a in addresses {
        assert_eq!(a["range"], "loopback", "{a}");
        assert!(a["ip"].is_string(), "{a}");
    }

    let (code, out, _) = isogate(&[
        "explain",
        "--json",
        "-c",
        &config,
        "-t",
        "strict",
        "DELETE",
        "https://nowhere.invalid/",
    ]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(v["decision"]["allowed"], false);
    assert!(v["decision"]["rule"].is_null());
    assert_eq!(
        v["decision"]["reason"],
        "no egress rule allows host nowhere.invalid"
    );
    assert!(v["credential"].is_null());
    assert!(v["rate_limits"]["rule"].is_null());
    assert!(v["rate_limits"]["tenant"].is_null());
}

#[test]
fn explain_an_unknown_tenant_lists_the_tenants() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(&config, "nobody", "GET", "http://localhost/");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("unknown tenant `nobody`"), "{err}");
    assert!(err.contains("ops, rollout, strict"), "{err}");
}

#[test]
fn explain_rejects_a_bad_config_naming_the_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(egress_example())
        .unwrap()
        .replace("per_second: 5,", "per_secnd: 5,");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = isogate(&[
        "explain",
        "-c",
        path.to_str().unwrap(),
        "-t",
        "demo",
        "GET",
        "https://api.github.com/",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains("tenants[0].egress.allow[0].rate_limit.per_secnd"),
        "{err}"
    );
}

#[test]
fn explain_argument_errors_exit_1_and_refused_urls_exit_2() {
    // Exit 2 means "denied or refused", so a usage error must not produce it.
    let (code, _, err) = isogate(&["explain", "-c", &egress_example(), "-t", "demo", "GET"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = explain(&egress_example(), "demo", "GET", "ftp://api.github.com/");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("URL scheme `ftp` is not allowed"), "{err}");
    let (code, out, _) = isogate(&["explain", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit status:"), "{out}");
}

/// Defect 9: credential endpoints stay closed under `allow_private`, in every form.
#[test]
fn explain_credential_endpoints_are_refused_under_allow_private() {
    let (_dir, config) = local_config();
    for (url, service) in [
        (
            "http://169.254.170.2/v2/credentials/x",
            "AWS ECS task credentials",
        ),
        (
            "http://[fd00:ec2::23]/v1/credentials",
            "AWS EKS Pod Identity agent (IPv6)",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "GCP metadata server",
        ),
    ] {
        let (code, out, err) = explain(&config, "ops", "GET", url);
        assert_eq!(code, 2, "{url}: {out}{err}");
        assert!(out.contains("decision:    allow"), "{url}: {out}");
        assert!(out.contains("allow_private: true"), "{url}: {out}");
        assert!(out.contains(service), "{url}: {out}");
        assert!(out.contains("verdict:   refused"), "{url}: {out}");
    }
    // Azure's WireServer is a public address, and still refused without allow_private.
    let (code, out, err) = explain(&config, "strict", "GET", "http://168.63.129.16/machine");
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("Azure WireServer"), "{out}");
    assert!(out.contains("verdict:   refused"), "{out}");
}

/// Defect 8: a report-mode request on a port its host's rule does not allow gets no
/// `allow_private`.
#[test]
fn explain_report_mode_other_port_is_not_private() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(&config, "rollout", "GET", "http://localhost:8081/");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("deny: port 8081 is not allowed for host localhost (mode report)"),
        "{out}"
    );
    assert!(out.contains("allow_private: false"), "{out}");
    assert!(out.contains("loopback address (blocked)"), "{out}");
    assert!(
        out.contains("result:      refused by the SSRF guard"),
        "{out}"
    );
    // The matching port is private-open.
    let (code, out, err) = explain(&config, "rollout", "GET", "http://localhost:8080/");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("allow_private: true"), "{out}");
}

/// The gateway's own listeners are refused even under an allow_private rule naming them.
#[test]
fn explain_the_gateways_own_listener_is_refused() {
    let (_dir, config) = local_config();
    let (code, out, err) = explain(&config, "ops", "GET", "http://localhost:19090/metrics");
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("allow, rule `self`"), "{out}");
    assert!(
        out.contains("the gateway's own listener 127.0.0.1:19090"),
        "{out}"
    );
    assert!(out.contains("verdict:   refused"), "{out}");
}

/// Runs `isogate serve` on free ports through `wrap` (a command line prefix, e.g. `script` for a
/// terminal) and returns the log lines up to and including "isogate starting", with terminal
/// colours removed; then stops it (SIGTERM; the config has no grace period).
fn serve_log(wrap: &[&str], extra_args: &[&str]) -> Vec<String> {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!(
        "isogate-cli-log-{}-{}",
        std::process::id(),
        extra_args.len() + wrap.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (ingress, admin) = common::free_loopback_pair();
    let config = dir.join("isogate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ ingress: \"{ingress}\", admin: \"{admin}\" }}\nstate_dir: \"{}\"\n\
             pool: {{ isolation: thread, threads: 1, warm_isolates: 1 }}\n\
             shutdown: {{ grace_period_s: 0, drain_timeout_s: 0 }}\ntenants:\n{}",
            dir.join("state").display(),
            common::tenant_yaml("alpha", common::ALPHA_KEY, "cpu_ms: 50")
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_isogate");
    let mut line = vec![bin.to_string()];
    line.extend(extra_args.iter().map(|a| a.to_string()));
    line.extend([
        "serve".into(),
        "--config".into(),
        config.display().to_string(),
    ]);
    let mut cmd = match wrap {
        [] => Command::new(bin),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(line.join(" ")).arg("/dev/null");
            c
        }
    };
    if wrap.is_empty() {
        cmd.args(&line[1..]);
    }
    // `script` writes the terminal's output (the gateway's stderr) to its stdout.
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start isogate");
    let out = if wrap.is_empty() {
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no \"isogate starting\" line; got {lines:#?}"));
        let plain = strip_ansi(&l);
        let done = plain.contains("isogate starting");
        lines.push(plain);
        if done {
            break;
        }
    }
    // The gateway: the child itself, or the process `script` runs (found by its config path).
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.starts_with(bin) && cmdline.contains(&config.display().to_string()))
                .then_some(pid)
        })
        .collect();
    assert!(!pids.is_empty(), "the gateway's process is not found");
    for pid in pids {
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Logs are for people at a terminal and for machines otherwise; `--log-format` wins; pingora's
/// own start-up lines stay below the default level.
#[test]
fn logs_are_human_readable_at_a_terminal_and_json_otherwise() {
    let starting = |lines: &[String]| lines.last().cloned().unwrap();

    let piped = serve_log(&[], &[]);
    let v: serde_json::Value = serde_json::from_str(&starting(&piped)).expect("a JSON line");
    assert_eq!(v["fields"]["message"], "isogate starting", "{v}");
    assert!(
        piped.iter().all(|l| !l.contains("pingora_core")),
        "pingora's info lines at the default level: {piped:#?}"
    );

    // A terminal: `script` gives the gateway a pseudo-terminal as stderr.
    let terminal = serve_log(&["script", "-qfec"], &[]);
    let line = starting(&terminal);
    assert!(!line.trim_start().starts_with('{'), "{line}");
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("isogate_gateway"), "{line}");

    let asked = serve_log(&["script", "-qfec"], &["--log-format", "json"]);
    let line = starting(&asked);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
    assert_eq!(v["level"], "INFO", "{v}");
}

/// An ingress address that is taken fails `serve` at once, naming the field (pingora alone would
/// retry it in the background while the admin port reported ready).
#[test]
fn serve_refuses_a_listen_address_that_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ingress = taken.local_addr().unwrap();
    let (_, admin) = common::free_loopback_pair();
    let dir = std::env::temp_dir().join(format!("isogate-cli-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("isogate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ ingress: \"{ingress}\", admin: \"{admin}\" }}\nstate_dir: \"{}\"\n\
             pool: {{ isolation: thread, threads: 1, warm_isolates: 1 }}\ntenants:\n{}",
            dir.join("state").display(),
            common::tenant_yaml("alpha", common::ALPHA_KEY, "cpu_ms: 50")
        ),
    )
    .unwrap();
    // Without the check the gateway would keep running (pingora retrying the address): bounded.
    let mut child = Command::new(env!("CARGO_BIN_EXE_isogate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run isogate");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        let _ = tx.send((child.wait().unwrap(), err));
    });
    let ended = rx.recv_timeout(std::time::Duration::from_secs(30));
    if ended.is_err() {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (status, err) = ended.expect("serve kept running on a taken address");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("listen.ingress: cannot listen on {ingress}")),
        "{err}"
    );
    drop(taken);
}
