//! The `isogate` command line on good and bad input.

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
    assert!(out.contains("ok (1 tenant)"), "{out}");
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
