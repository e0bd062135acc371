//! Unit tests for parsing, validation and lowering.

use super::*;
use isogate_policy::ApiKeyHash;

const DEMO_KEY_SHA256: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";

/// The reference document from the specification.
const EXAMPLE: &str = r#"
listen: { ingress: "127.0.0.1:8080", admin: "127.0.0.1:9090" }
state_dir: "./isogate-state"
pool: { threads: 2, warm_isolates: 8, max_cached_workers: 1000, idle_ttl_s: 300 }
tenants:
  - name: demo
    api_keys:
      - sha256: "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"   # sha256 of "demo-key"
    limits: { cpu_ms: 50, memory_mb: 64, wall_ms: 10000, subrequests: 20, max_concurrency: 16, max_cached_workers: 100, max_body_bytes: 1048576 }
"#;

fn key_hex(key: &str) -> String {
    ApiKeyHash::of_key(key).to_hex()
}

/// A minimal valid tenant entry (list item) with the given name and key.
fn tenant(name: &str, key: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n",
        key_hex(key)
    )
}

/// A minimal valid document with one tenant and `extra` appended at top level.
fn doc(extra: &str) -> String {
    format!("tenants:\n{}{extra}", tenant("demo", "demo-key"))
}

/// A document with a single tenant whose `limits` block is `limits`.
fn doc_with_limits(limits: &str) -> String {
    format!("{}    limits: {limits}\n", doc(""))
}

/// Parses `yaml`, expecting a parse error; returns its fields.
fn parse_error(yaml: &str) -> (String, String, Option<usize>, Option<usize>) {
    match Config::from_yaml_str(yaml, "test.yaml") {
        Err(ConfigError::Parse {
            origin,
            path,
            message,
            line,
            column,
        }) => {
            assert_eq!(origin, "test.yaml");
            (path, message, line, column)
        }
        other => panic!("expected a parse error for\n{yaml}\ngot {other:?}"),
    }
}

/// Parses `yaml`, expecting validation errors; returns them.
fn validation_errors(yaml: &str) -> Vec<ValidationError> {
    match Config::from_yaml_str(yaml, "test.yaml") {
        Err(ConfigError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            errors
        }
        other => panic!("expected validation errors for\n{yaml}\ngot {other:?}"),
    }
}

/// Asserts that `yaml` fails validation with exactly one error, at `path`,
/// and returns its message.
fn single_error_at(yaml: &str, path: &str) -> String {
    let errors = validation_errors(yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, path, "{errors:#?}");
    errors[0].message.clone()
}

fn load_ok(yaml: &str) -> Config {
    match Config::from_yaml_str(yaml, "test.yaml") {
        Ok(config) => config,
        Err(error) => panic!("expected\n{yaml}\nto load, got: {error}"),
    }
}

// ---------------------------------------------------------------- parsing

#[test]
fn example_document_parses_with_the_right_values() {
    let config = load_ok(EXAMPLE);

    assert_eq!(config.listen.ingress, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.listen.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.state_dir, PathBuf::from("./isogate-state"));
    assert_eq!(
        config.pool,
        PoolConfig {
            threads: Some(2),
            warm_isolates: 8,
            max_cached_workers: 1000,
            idle_ttl_s: 300,
            queue_capacity: 1024,
            ..PoolConfig::default()
        }
    );
    assert_eq!(config.pool.isolation, Isolation::Process);
    assert_eq!(config.pool_threads(), 2);
    assert_eq!(config.pool.idle_ttl(), Duration::from_secs(300));

    assert_eq!(config.tenants.len(), 1);
    let demo = &config.tenants[0];
    assert_eq!(demo.name, "demo");
    assert_eq!(
        demo.api_keys,
        vec![ApiKeyConfig {
            sha256: DEMO_KEY_SHA256.to_owned()
        }]
    );
    assert_eq!(
        demo.limits,
        LimitsConfig {
            cpu_ms: 50,
            memory_mb: 64,
            wall_ms: 10_000,
            subrequests: 20,
            max_concurrency: 16,
            max_concurrent_requests: 32,
            max_cached_workers: 100,
            max_body_bytes: 1_048_576,
            // Not in the document: defaults.
            max_queue: 64,
            queue_timeout_ms: 5_000,
        }
    );
}

#[test]
fn omitted_fields_take_defaults() {
    let config = load_ok(&doc(""));
    assert_eq!(config.listen.ingress, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.listen.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.state_dir, PathBuf::from("./isogate-state"));
    assert_eq!(config.pool, PoolConfig::default());
    assert_eq!(config.pool.threads, None);
    assert_eq!(config.pool.warm_isolates, 8);
    assert_eq!(config.pool.max_cached_workers, 1000);
    assert_eq!(config.pool.idle_ttl_s, 300);
    assert_eq!(config.pool.queue_capacity, 1024);
    assert!(config.pool_threads() >= 1);

    let limits = config.tenants[0].limits;
    assert_eq!(limits, LimitsConfig::default());
    assert_eq!(
        (
            limits.cpu_ms,
            limits.memory_mb,
            limits.wall_ms,
            limits.subrequests
        ),
        (50, 64, 30_000, 50)
    );
    assert_eq!(
        (
            limits.max_concurrency,
            limits.max_cached_workers,
            limits.max_body_bytes,
            limits.max_queue,
            limits.queue_timeout_ms
        ),
        (16, 100, 1_048_576, 64, 5_000)
    );
}

#[test]
fn partially_specified_sections_keep_other_defaults() {
    let config = load_ok(&format!(
        "{}    limits: {{ wall_ms: 1000 }}\nlisten: {{ admin: \"127.0.0.1:9999\" }}\npool: {{ queue_capacity: 7 }}\n",
        doc("")
    ));
    assert_eq!(config.listen.ingress, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.listen.admin, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(config.pool.queue_capacity, 7);
    assert_eq!(config.pool.warm_isolates, 8);
    assert_eq!(config.tenants[0].limits.wall_ms, 1000);
    assert_eq!(config.tenants[0].limits.cpu_ms, 50);
}

#[test]
fn unknown_top_level_field_is_rejected() {
    let (path, message, line, _) = parse_error(&doc("bogus: 1\n"));
    assert_eq!(path, "bogus");
    assert!(
        message.starts_with("unknown field `bogus`, expected one of `listen`"),
        "{message}"
    );
    assert_eq!(line, Some(5));
}

#[test]
fn unknown_pool_field_is_rejected() {
    let (path, message, line, _) = parse_error(&doc("pool:\n  threads: 2\n  thread: 2\n"));
    assert_eq!(path, "pool.thread");
    assert!(message.starts_with("unknown field `thread`"), "{message}");
    assert_eq!(line, Some(7));
}

#[test]
fn unknown_listen_field_is_rejected() {
    let (path, message, _, _) = parse_error(&doc("listen: { public: \"0.0.0.0:80\" }\n"));
    assert_eq!(path, "listen.public");
    assert!(message.starts_with("unknown field `public`"), "{message}");
}

#[test]
fn unknown_tenant_field_is_rejected() {
    let yaml = format!("{}    quota: 5\n", doc(""));
    let (path, message, line, _) = parse_error(&yaml);
    assert_eq!(path, "tenants[0].quota");
    assert!(message.starts_with("unknown field `quota`"), "{message}");
    assert_eq!(line, Some(5));
}

#[test]
fn unknown_api_key_field_is_rejected() {
    let yaml = "tenants:\n  - name: demo\n    api_keys:\n      - sha512: abc\n";
    let (path, message, _, _) = parse_error(yaml);
    assert_eq!(path, "tenants[0].api_keys[0].sha512");
    assert!(message.starts_with("unknown field `sha512`"), "{message}");
}

#[test]
fn unknown_limits_field_is_rejected_with_full_message() {
    let yaml = doc_with_limits("{ cpu_mss: 5 }");
    let error = Config::from_yaml_str(&yaml, "isogate.yaml").expect_err("unknown field");
    let ConfigError::Parse {
        path,
        message,
        line,
        column,
        ..
    } = &error
    else {
        panic!("expected a parse error, got {error:?}");
    };
    assert_eq!(path, "tenants[0].limits.cpu_mss");
    assert_eq!(
        message,
        "unknown field `cpu_mss`, expected one of `cpu_ms`, `memory_mb`, `wall_ms`, \
         `subrequests`, `max_concurrency`, `max_concurrent_requests`, `max_cached_workers`, \
         `max_body_bytes`, `max_queue`, `queue_timeout_ms`"
    );
    assert_eq!((*line, *column), (Some(5), Some(15)));
    assert_eq!(
        error.to_string(),
        format!("isogate.yaml:5:15: tenants[0].limits.cpu_mss: {message}")
    );
}

#[test]
fn wrong_type_names_path_and_line() {
    let yaml = format!(
        "{}    limits:\n      wall_ms: 100\n      cpu_ms: \"fast\"\n",
        doc("")
    );
    let error = Config::from_yaml_str(&yaml, "isogate.yaml").expect_err("wrong type");
    let ConfigError::Parse {
        path,
        message,
        line,
        column,
        ..
    } = &error
    else {
        panic!("expected a parse error, got {error:?}");
    };
    assert_eq!(path, "tenants[0].limits.cpu_ms");
    assert_eq!(message, "invalid type: string \"fast\", expected u64");
    assert_eq!((*line, *column), (Some(7), Some(15)));
    let display = error.to_string();
    assert_eq!(
        display,
        "isogate.yaml:7:15: tenants[0].limits.cpu_ms: invalid type: string \"fast\", expected u64"
    );
}

#[test]
fn negative_and_overflowing_numbers_are_type_errors() {
    let (path, _, _, _) = parse_error(&doc_with_limits("{ subrequests: -1 }"));
    assert_eq!(path, "tenants[0].limits.subrequests");
    let (path, _, _, _) = parse_error(&doc_with_limits("{ max_queue: 4294967296 }"));
    assert_eq!(path, "tenants[0].limits.max_queue");
}

#[test]
fn bad_socket_address_is_a_parse_error() {
    let (path, message, line, _) = parse_error(&doc("listen: { ingress: \"localhost\" }\n"));
    assert_eq!(path, "listen.ingress");
    assert!(message.contains("socket address"), "{message}");
    assert_eq!(line, Some(5));
}

#[test]
fn missing_tenant_name_is_a_parse_error() {
    let (path, message, line, _) = parse_error("tenants:\n  - api_keys: []\n");
    assert_eq!(path, "tenants[0]");
    assert_eq!(message, "missing field `name`");
    assert_eq!(line, Some(2));
}

#[test]
fn malformed_yaml_reports_the_line() {
    // `api_keys` is indented one space less than `name`.
    let yaml = "tenants:\n  - name: demo\n   api_keys: []\n";
    let error = Config::from_yaml_str(yaml, "broken.yaml").expect_err("malformed");
    let ConfigError::Parse { message, line, .. } = &error else {
        panic!("expected a parse error, got {error:?}");
    };
    assert_eq!(*line, Some(3));
    assert!(!message.is_empty());
    let display = error.to_string();
    assert!(display.starts_with("broken.yaml:3:"), "{display}");
    assert!(display.contains("expected"), "{display}");
}

#[test]
fn tabs_and_unclosed_flow_mappings_are_reported() {
    let (_, _, line, _) = parse_error("tenants:\n\t- name: demo\n");
    assert_eq!(line, Some(2));
    let (_, _, line, _) = parse_error("pool: { threads: 2\ntenants: []\n");
    assert!(line.is_some());
}

#[test]
fn multiple_documents_are_rejected() {
    let yaml = format!("{}---\n{}", doc(""), doc(""));
    let error = Config::from_yaml_str(&yaml, "multi.yaml").expect_err("two documents");
    assert!(
        error.to_string().contains("more than one document"),
        "{error}"
    );
}

#[test]
fn empty_document_means_no_tenants() {
    for yaml in ["", "---\n", "# only a comment\n"] {
        assert_eq!(
            single_error_at(yaml, "tenants"),
            "at least one tenant is required"
        );
    }
}

// ------------------------------------------------------------- validation

#[test]
fn rule_at_least_one_tenant() {
    let message = single_error_at("tenants: []\n", "tenants");
    assert_eq!(message, "at least one tenant is required");
}

#[test]
fn rule_tenant_name_syntax() {
    let too_long = "a".repeat(64);
    for bad in ["Demo", "\"-demo\"", "\"\"", "de.mo", too_long.as_str()] {
        let yaml = format!(
            "tenants:\n  - name: {bad}\n    api_keys: [{{ sha256: \"{DEMO_KEY_SHA256}\" }}]\n"
        );
        let message = single_error_at(&yaml, "tenants[0].name");
        assert!(message.starts_with("invalid tenant name"), "{message}");
    }
    let longest = "a".repeat(63);
    load_ok(&format!(
        "tenants:\n  - name: {longest}\n    api_keys: [{{ sha256: \"{DEMO_KEY_SHA256}\" }}]\n"
    ));
}

#[test]
fn rule_tenant_names_unique() {
    let yaml = format!(
        "tenants:\n{}{}{}",
        tenant("a", "k1"),
        tenant("b", "k2"),
        tenant("a", "k3")
    );
    let message = single_error_at(&yaml, "tenants[2].name");
    assert_eq!(
        message,
        "duplicate tenant name \"a\" (already defined at tenants[0])"
    );
}

#[test]
fn rule_at_least_one_api_key() {
    let message = single_error_at("tenants:\n  - name: demo\n", "tenants[0].api_keys");
    assert_eq!(message, "at least one API key is required");
    single_error_at(
        "tenants:\n  - name: demo\n    api_keys: []\n",
        "tenants[0].api_keys",
    );
}

#[test]
fn rule_sha256_is_64_hex_characters() {
    let short = &DEMO_KEY_SHA256[..63];
    let yaml = format!(
        "tenants:\n  - name: demo\n    api_keys:\n      - sha256: \"{}\"\n      - sha256: \"{short}\"\n",
        key_hex("other")
    );
    let errors = validation_errors(&yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .to_string()
            .starts_with("tenants[0].api_keys[1].sha256: must be 64 hex characters"),
        "{}",
        errors[0]
    );

    let non_hex = format!("z{}", &DEMO_KEY_SHA256[1..]);
    let yaml = format!("tenants:\n  - name: demo\n    api_keys: [{{ sha256: \"{non_hex}\" }}]\n");
    let message = single_error_at(&yaml, "tenants[0].api_keys[0].sha256");
    assert!(
        message.starts_with("must be 64 hex characters"),
        "{message}"
    );

    // Uppercase hex is accepted.
    load_ok(&format!(
        "tenants:\n  - name: demo\n    api_keys: [{{ sha256: \"{}\" }}]\n",
        DEMO_KEY_SHA256.to_uppercase()
    ));
}

#[test]
fn rule_sha256_of_the_empty_key_is_rejected() {
    let yaml = format!(
        "tenants:\n  - name: demo\n    api_keys: [{{ sha256: \"{}\" }}]\n",
        key_hex("")
    );
    let message = single_error_at(&yaml, "tenants[0].api_keys[0].sha256");
    assert!(message.contains("empty string"), "{message}");
}

#[test]
fn rule_api_key_hashes_unique_within_a_tenant() {
    let yaml = format!(
        "tenants:\n  - name: demo\n    api_keys:\n      - sha256: \"{DEMO_KEY_SHA256}\"\n      - sha256: \"{}\"\n",
        DEMO_KEY_SHA256.to_uppercase()
    );
    let message = single_error_at(&yaml, "tenants[0].api_keys[1].sha256");
    assert_eq!(
        message,
        "duplicate API key hash (already used at tenants[0].api_keys[0].sha256)"
    );
}

#[test]
fn rule_api_key_hashes_unique_across_tenants() {
    let yaml = format!(
        "tenants:\n{}{}",
        tenant("a", "shared"),
        tenant("b", "shared")
    );
    let message = single_error_at(&yaml, "tenants[1].api_keys[0].sha256");
    assert!(
        message.contains("tenants[0].api_keys[0].sha256"),
        "{message}"
    );
}

#[test]
fn rule_every_limit_is_positive() {
    for field in [
        "cpu_ms",
        "memory_mb",
        "wall_ms",
        "max_concurrency",
        "max_cached_workers",
        "max_body_bytes",
        "queue_timeout_ms",
    ] {
        let errors = validation_errors(&doc_with_limits(&format!("{{ {field}: 0 }}")));
        let path = format!("tenants[0].limits.{field}");
        // Exactly this field is reported; wall_ms = 0 additionally trips
        // cpu_ms <= wall_ms.
        let positive: Vec<_> = errors
            .iter()
            .filter(|e| e.message == "must be greater than 0")
            .collect();
        assert_eq!(positive.len(), 1, "{field}: {errors:#?}");
        assert_eq!(positive[0].path, path);
    }
}

#[test]
fn zero_subrequests_and_zero_queue_are_allowed() {
    let config = load_ok(&doc_with_limits("{ subrequests: 0, max_queue: 0 }"));
    assert_eq!(config.tenants[0].limits.subrequests, 0);
    assert_eq!(config.tenants[0].limits.max_queue, 0);
}

#[test]
fn rule_memory_at_most_4096_mb() {
    load_ok(&doc_with_limits("{ memory_mb: 4096 }"));
    let message = single_error_at(
        &doc_with_limits("{ memory_mb: 4097 }"),
        "tenants[0].limits.memory_mb",
    );
    assert_eq!(message, "must be at most 4096, got 4097");
}

#[test]
fn rule_max_concurrent_requests_between_1_and_1024() {
    let config = load_ok(&doc_with_limits("{ max_concurrent_requests: 1 }"));
    assert_eq!(config.tenants[0].limits.max_concurrent_requests, 1);
    load_ok(&doc_with_limits("{ max_concurrent_requests: 1024 }"));
    for bad in [0, 1025] {
        let message = single_error_at(
            &doc_with_limits(&format!("{{ max_concurrent_requests: {bad} }}")),
            "tenants[0].limits.max_concurrent_requests",
        );
        assert_eq!(message, format!("must be between 1 and 1024, got {bad}"));
    }
}

#[test]
fn rule_cpu_at_most_wall() {
    load_ok(&doc_with_limits("{ cpu_ms: 100, wall_ms: 100 }"));
    let message = single_error_at(
        &doc_with_limits("{ cpu_ms: 101, wall_ms: 100 }"),
        "tenants[0].limits.cpu_ms",
    );
    assert_eq!(message, "must not exceed wall_ms (101 > 100)");
}

#[test]
fn tenant_cache_may_exceed_pool_cache() {
    load_ok(&format!(
        "{}    limits: {{ max_cached_workers: 5000 }}\npool: {{ max_cached_workers: 10 }}\n",
        doc("")
    ));
}

#[test]
fn rule_pool_threads_range() {
    load_ok(&doc("pool: { threads: 1 }\n"));
    let config = load_ok(&doc("pool: { threads: 256 }\n"));
    assert_eq!(config.pool_threads(), 256);
    for bad in [0, 257, 100_000] {
        let message = single_error_at(
            &doc(&format!("pool: {{ threads: {bad} }}\n")),
            "pool.threads",
        );
        assert_eq!(message, format!("must be between 1 and 256, got {bad}"));
    }
}

#[test]
fn rule_pool_values_positive() {
    for field in ["max_cached_workers", "idle_ttl_s", "queue_capacity"] {
        let message = single_error_at(
            &doc(&format!("pool: {{ {field}: 0 }}\n")),
            &format!("pool.{field}"),
        );
        assert_eq!(message, "must be greater than 0");
    }
    // warm_isolates: 0 simply disables pre-warming.
    load_ok(&doc("pool: { warm_isolates: 0 }\n"));
}

#[test]
fn rule_listeners_differ() {
    let message = single_error_at(
        &doc("listen: { ingress: \"127.0.0.1:8080\", admin: \"127.0.0.1:8080\" }\n"),
        "listen.admin",
    );
    assert!(message.contains("listen.ingress"), "{message}");
    single_error_at(
        &doc("listen: { ingress: \"0.0.0.0:9090\" }\n"),
        "listen.admin",
    );
    // Ephemeral ports never collide.
    load_ok(&doc(
        "listen: { ingress: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }\n",
    ));
}

#[test]
fn rule_state_dir_not_empty() {
    single_error_at(&doc("state_dir: \"\"\n"), "state_dir");
}

#[test]
fn all_errors_are_reported() {
    let yaml = format!(
        r#"listen: {{ ingress: "127.0.0.1:1", admin: "127.0.0.1:1" }}
pool: {{ threads: 0, idle_ttl_s: 0 }}
tenants:
  - name: Bad
    api_keys: [{{ sha256: "abc" }}]
    limits: {{ cpu_ms: 0, memory_mb: 9999 }}
  - name: ok
    api_keys: []
  - name: ok
    api_keys: [{{ sha256: "{DEMO_KEY_SHA256}" }}, {{ sha256: "{DEMO_KEY_SHA256}" }}]
    limits: {{ cpu_ms: 20, wall_ms: 10 }}
"#
    );
    let errors = validation_errors(&yaml);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listen.admin",
            "pool.threads",
            "pool.idle_ttl_s",
            "tenants[0].name",
            "tenants[0].api_keys[0].sha256",
            "tenants[0].limits.cpu_ms",
            "tenants[0].limits.memory_mb",
            "tenants[1].api_keys",
            "tenants[2].name",
            "tenants[2].api_keys[1].sha256",
            "tenants[2].limits.cpu_ms",
        ],
        "{errors:#?}"
    );

    let display = ConfigError::Invalid(errors).to_string();
    assert!(
        display.starts_with("invalid configuration (11 errors):\n"),
        "{display}"
    );
    assert!(
        display.contains("\n  tenants[0].api_keys[0].sha256: must be 64 hex characters"),
        "{display}"
    );
}

#[test]
fn validate_catches_programmatic_changes() {
    let mut config = load_ok(EXAMPLE);
    assert!(config.validate().is_ok());
    config.pool.queue_capacity = 0;
    config.tenants[0].limits.memory_mb = 0;
    let Err(ConfigError::Invalid(errors)) = config.validate() else {
        panic!("expected validation errors");
    };
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

// --------------------------------------------------------------- lowering

#[test]
fn policy_lowering() {
    let config = load_ok(EXAMPLE);
    let policy = config.policy();
    assert_eq!(policy.tenants().len(), 1);

    let demo = policy
        .authenticate("demo-key")
        .expect("demo-key authenticates");
    assert_eq!(demo.name.as_str(), "demo");
    assert_eq!(demo.api_keys, vec![ApiKeyHash::of_key("demo-key")]);
    assert_eq!(
        demo.limits,
        TenantLimits {
            cpu_ms: 50,
            memory_mb: 64,
            wall_ms: 10_000,
            subrequests: 20,
            max_concurrency: 16,
            max_concurrent_requests: 32,
            max_cached_workers: 100,
            max_body_bytes: 1_048_576,
            max_queue: 64,
            queue_timeout_ms: 5_000,
        }
    );
    assert!(policy.authenticate("dev-key").is_none());
    assert!(policy.tenant("demo").is_some());
}

#[test]
fn embedded_default_is_valid_and_authenticates_dev_key() {
    let config = Config::from_yaml_str(EMBEDDED_DEFAULT_YAML, "default.yaml")
        .unwrap_or_else(|error| panic!("embedded default must load: {error}"));
    assert!(config.validate().is_ok());
    assert_eq!(config, Config::embedded_default());

    assert_eq!(config.listen.ingress, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.listen.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.pool.warm_isolates, 4);
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.tenants[0].name, "dev");

    let policy = config.policy();
    // The demo API of Code Mode, allowed by the tenant's egress rules.
    let apis = &policy.tenant("dev").expect("dev").apis;
    assert_eq!(apis.len(), 1);
    assert_eq!(apis[0].name, "petstore");
    let dev = policy
        .authenticate("dev-key")
        .expect("dev-key authenticates");
    assert_eq!(dev.name.as_str(), "dev");
    assert!(policy.authenticate("demo-key").is_none());
    assert!(policy.authenticate("").is_none());
}

#[test]
fn embedded_default_comment_matches_its_key() {
    assert!(EMBEDDED_DEFAULT_YAML.contains(&format!(
        "\"{}\" # sha256 of \"dev-key\"",
        key_hex("dev-key")
    )));
}

// ------------------------------------------------------------------ files

#[test]
fn load_reads_files_and_names_them_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, EXAMPLE).expect("write");
    assert_eq!(Config::load(&good).expect("loads"), load_ok(EXAMPLE));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, doc_with_limits("{ cpu_ms: fast }")).expect("write");
    let error = Config::load(&bad).expect_err("bad type");
    let display = error.to_string();
    assert!(
        display.starts_with(&format!("{}:5:", bad.display())),
        "{display}"
    );
    assert!(display.contains("tenants[0].limits.cpu_ms"), "{display}");

    let missing = dir.path().join("missing.yaml");
    match Config::load(&missing) {
        Err(ConfigError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn json_schema_describes_the_document() {
    let schema = serde_json::to_value(Config::json_schema()).expect("schema serializes");
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    for property in ["listen", "state_dir", "pool", "tenants"] {
        assert!(
            schema["properties"].get(property).is_some(),
            "missing {property} in {schema:#}"
        );
    }
    let text = schema.to_string();
    assert!(text.contains("^[0-9a-fA-F]{64}$"), "{text}");
    assert!(text.contains("queue_timeout_ms"), "{text}");
}

// ----------------------------------------------------------------- egress

/// The full egress example shipped in `deploy/examples`.
const EGRESS_EXAMPLE: &str = include_str!("../../deploy/examples/egress.yaml");

/// A document whose single tenant has the `egress` section `egress` (flow
/// style), with `top` appended at top level.
fn egress_doc(egress: &str, top: &str) -> String {
    format!("{}    egress: {egress}\n{top}", doc(""))
}

/// A document whose single tenant allows the single rule `rule` (flow
/// style), with `top` appended at top level.
fn rule_doc(rule: &str, top: &str) -> String {
    egress_doc(&format!("{{ allow: [ {rule} ] }}"), top)
}

/// A document with the credentials (flow-style list items) and a vault
/// named `main`.
fn credentials_doc(credentials: &str) -> String {
    format!(
        "{}credentials: [ {credentials} ]\nvaults:\n  - {{ name: main, kind: hashicorp, \
         address: \"http://127.0.0.1:8200\", token: {{ env: VAULT_TOKEN }} }}\n",
        doc("")
    )
}

/// A document with the single vault `vault` (flow style).
fn vault_doc(vault: &str) -> String {
    format!("{}vaults: [ {vault} ]\n", doc(""))
}

fn rule_config(host: &str) -> EgressRuleConfig {
    EgressRuleConfig {
        host: host.to_owned(),
        name: None,
        ports: None,
        methods: None,
        paths: None,
        credential: None,
        rate_limit: None,
        allow_private: false,
    }
}

#[test]
fn egress_example_parses_with_the_right_values() {
    let config = load_ok(EGRESS_EXAMPLE);
    assert_eq!(config.tenants.len(), 1);
    let demo = &config.tenants[0];
    assert_eq!(demo.name, "demo");
    assert_eq!(
        demo.egress,
        EgressConfig {
            mode: EgressModeConfig::Enforce,
            rate_limit: Some(RateLimitConfig {
                per_second: 50,
                burst: 100
            }),
            allow: vec![
                EgressRuleConfig {
                    methods: Some(vec!["GET".into(), "POST".into()]),
                    paths: Some(vec!["/repos/**".into()]),
                    credential: Some("github".into()),
                    rate_limit: Some(RateLimitConfig {
                        per_second: 5,
                        burst: 10
                    }),
                    ..rule_config("api.github.com")
                },
                rule_config("*.example.com"),
                EgressRuleConfig {
                    name: Some("local".into()),
                    ports: Some(vec![18999]),
                    credential: Some("local-test".into()),
                    allow_private: true,
                    ..rule_config("127.0.0.1")
                },
            ],
        }
    );
    assert_eq!(
        config.credentials,
        vec![
            CredentialConfig {
                name: "github".into(),
                source: SecretSource::Vault {
                    vault: VaultRef {
                        backend: "main".into(),
                        path: "kv/data/agents/github".into(),
                        field: "token".into(),
                    }
                },
                inject: Injection::Header {
                    header: "Authorization".into(),
                    value: "Bearer ${secret}".into()
                },
            },
            CredentialConfig {
                name: "local-test".into(),
                source: SecretSource::Env {
                    env: "ISOGATE_TEST_TOKEN".into()
                },
                inject: Injection::Header {
                    header: "Authorization".into(),
                    value: "Bearer ${secret}".into()
                },
            },
            CredentialConfig {
                name: "q".into(),
                source: SecretSource::File {
                    file: PathBuf::from("/run/secrets/q")
                },
                inject: Injection::Query {
                    query: "api_key".into(),
                    value: "${secret}".into()
                },
            },
        ]
    );
    assert_eq!(
        config.vaults,
        vec![VaultConfig {
            name: "main".into(),
            kind: VaultKind::Hashicorp,
            address: "http://127.0.0.1:8200".into(),
            token: TokenSource::Env {
                env: "VAULT_TOKEN".into()
            },
            cache_ttl_s: 60,
            max_stale_s: 600,
        }]
    );
    assert_eq!(config.credential("q"), Some(&config.credentials[2]));
    assert_eq!(config.credential("nope"), None);
    assert_eq!(config.vault("main"), Some(&config.vaults[0]));
    assert_eq!(config.vault("nope"), None);
}

#[test]
fn egress_example_lowers_into_the_policy() {
    use isogate_policy::{
        parse_target, Decision, EgressMode, EgressPolicy, EgressRule, HostPattern, PathMatcher,
        RateLimit,
    };

    let policy = load_ok(EGRESS_EXAMPLE).policy();
    let demo = policy.tenant("demo").expect("demo tenant");
    assert_eq!(
        demo.egress,
        EgressPolicy {
            mode: EgressMode::Enforce,
            rate_limit: Some(RateLimit {
                per_second: 50,
                burst: 100
            }),
            rules: vec![
                EgressRule {
                    name: "api.github.com".into(),
                    host: HostPattern::Exact("api.github.com".into()),
                    ports: vec![80, 443],
                    methods: Some(vec!["GET".into(), "POST".into()]),
                    paths: Some(PathMatcher::new(["/repos/**"]).expect("valid glob")),
                    credential: Some("github".into()),
                    rate_limit: Some(RateLimit {
                        per_second: 5,
                        burst: 10
                    }),
                    allow_private: false,
                },
                EgressRule {
                    name: "*.example.com".into(),
                    host: HostPattern::Subdomains("example.com".into()),
                    ports: vec![80, 443],
                    methods: None,
                    paths: None,
                    credential: None,
                    rate_limit: None,
                    allow_private: false,
                },
                EgressRule {
                    name: "local".into(),
                    host: HostPattern::Ip("127.0.0.1".parse().unwrap()),
                    ports: vec![18999],
                    methods: None,
                    paths: None,
                    credential: Some("local-test".into()),
                    rate_limit: None,
                    allow_private: true,
                },
            ],
        }
    );

    let decide = |method, url| demo.egress.decide(method, &parse_target(url).expect(url));
    assert_eq!(
        decide("GET", "https://api.github.com/repos/a/b"),
        Decision::Allow { rule: 0 }
    );
    assert_eq!(
        decide("GET", "https://www.example.com/"),
        Decision::Allow { rule: 1 }
    );
    assert_eq!(
        decide("GET", "http://127.0.0.1:18999/"),
        Decision::Allow { rule: 2 }
    );
    assert!(!decide("GET", "https://example.com/").is_allowed());
    assert!(!decide("DELETE", "https://api.github.com/repos/a").is_allowed());
}

#[test]
fn egress_defaults() {
    let config = load_ok(&doc(""));
    assert_eq!(config.tenants[0].egress, EgressConfig::default());
    assert!(config.credentials.is_empty());
    assert!(config.vaults.is_empty());
    let policy = config.policy();
    let egress = &policy.tenants()[0].egress;
    assert_eq!(*egress, isogate_policy::EgressPolicy::default());
    assert_eq!(egress.mode, isogate_policy::EgressMode::Enforce);
    assert!(egress.rules.is_empty());

    // Report mode; rule defaults; methods are upper-cased; IPv6 hosts.
    let config = load_ok(&egress_doc(
        "{ mode: report, allow: [ { host: \"API.Example.COM.\", methods: [get, Patch] }, \
         { host: \"[::1]\", allow_private: true }, { host: \"::2\", ports: [8080, 65535] } ] }",
        "",
    ));
    let egress = &config.tenants[0].egress;
    assert_eq!(egress.mode, EgressModeConfig::Report);
    assert_eq!(egress.allow[0].effective_name(), "api.example.com");
    assert_eq!(egress.allow[1].effective_name(), "[::1]");
    let lowered = config.lower().expect("valid").policy.tenants()[0]
        .egress
        .clone();
    assert_eq!(lowered.mode, isogate_policy::EgressMode::Report);
    assert_eq!(lowered.rate_limit, None);
    assert_eq!(lowered.rules.len(), 3);
    assert_eq!(lowered.rules[0].name, "api.example.com");
    assert_eq!(lowered.rules[0].ports, [80, 443]);
    assert_eq!(
        lowered.rules[0].methods,
        Some(vec!["GET".to_owned(), "PATCH".to_owned()])
    );
    assert!(!lowered.rules[0].allow_private);
    assert_eq!(
        lowered.rules[1].host,
        isogate_policy::HostPattern::Ip("::1".parse().unwrap())
    );
    assert!(lowered.rules[1].allow_private);
    assert_eq!(lowered.rules[2].ports, [8080, 65535]);
    assert_eq!(lowered.rules[2].name, "[::2]");

    // Vault defaults.
    let config = load_ok(&vault_doc(
        "{ name: v, kind: hashicorp, address: \"https://vault.internal:8200\", token: { file: /run/vault-token } }",
    ));
    assert_eq!(config.vaults[0].cache_ttl_s, 60);
    assert_eq!(config.vaults[0].max_stale_s, 600);
    assert_eq!(
        config.vaults[0].token,
        TokenSource::File {
            file: PathBuf::from("/run/vault-token")
        }
    );
}

#[test]
fn lowering_is_all_or_nothing() {
    let mut config = load_ok(&doc(""));
    config.tenants[0].egress = EgressConfig {
        allow: vec![
            rule_config("*"),
            EgressRuleConfig {
                paths: Some(vec!["/a[".into()]),
                ..rule_config("x.com")
            },
            EgressRuleConfig {
                ports: Some(vec![0, 443, 70_000]),
                ..rule_config("y.com")
            },
        ],
        ..EgressConfig::default()
    };
    let errors = config.lower().expect_err("invalid rules");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tenants[0].egress.allow[0].host",
            "tenants[0].egress.allow[1].paths[0]",
            "tenants[0].egress.allow[2].ports[0]",
            "tenants[0].egress.allow[2].ports[2]",
        ],
        "{errors:#?}"
    );
    assert!(matches!(config.validate(), Err(ConfigError::Invalid(e)) if e == errors));
    // An invalid configuration never yields a partial policy.
    assert!(config.policy().tenants().is_empty());
    assert!(config.policy().authenticate("demo-key").is_none());
}

#[test]
fn lowering_yields_the_listeners() {
    let lowered = load_ok(EXAMPLE).lower().expect("valid");
    assert_eq!(
        lowered.listeners,
        [
            "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        ]
    );
}

/// A document setting `def.field` to `value`, and the YAML path of that value.
fn bound_doc(def: &str, field: &str, value: u64) -> (String, String) {
    match def {
        "PoolConfig" => (
            doc(&format!("pool: {{ {field}: {value} }}\n")),
            format!("pool.{field}"),
        ),
        "LimitsConfig" => {
            // Keep cpu_ms <= wall_ms out of the way.
            let extra = match field {
                "cpu_ms" => ", wall_ms: 18446744073709551615",
                "wall_ms" => ", cpu_ms: 1",
                _ => "",
            };
            (
                doc_with_limits(&format!("{{ {field}: {value}{extra} }}")),
                format!("tenants[0].limits.{field}"),
            )
        }
        "RateLimitConfig" => {
            let other = if field == "burst" {
                "per_second"
            } else {
                "burst"
            };
            (
                egress_doc(
                    &format!("{{ rate_limit: {{ {field}: {value}, {other}: 1 }} }}"),
                    "",
                ),
                format!("tenants[0].egress.rate_limit.{field}"),
            )
        }
        "EgressRuleConfig" => (
            rule_doc(&format!("{{ host: x.com, {field}: [{value}] }}"), ""),
            format!("tenants[0].egress.allow[0].{field}[0]"),
        ),
        "VaultConfig" => (
            vault_doc(&format!(
                "{{ name: v, kind: hashicorp, address: \"https://vault.internal:8200\", \
                 token: {{ env: T }}, {field}: {value}, max_stale_s: 18446744073709551615 }}"
            )),
            format!("vaults[0].{field}"),
        ),
        "ShutdownConfig" => (
            doc(&format!("shutdown: {{ {field}: {value} }}\n")),
            format!("shutdown.{field}"),
        ),
        "InflightConfig" => (
            doc(&format!("inflight: {{ {field}: {value} }}\n")),
            format!("inflight.{field}"),
        ),
        "QuarantineConfig" => (
            doc(&format!("pool: {{ quarantine: {{ {field}: {value} }} }}\n")),
            format!("pool.quarantine.{field}"),
        ),
        "RouteConfig" => (
            format!(
                "{}    limits: {{ max_body_bytes: 33554432 }}\n    routes: [{{ host: a.test, worker: w, {field}: {value} }}]\n",
                doc("")
            ),
            format!("tenants[0].routes[0].{field}"),
        ),
        "RedisConfig" => (
            doc(&format!(
                "shared: {{ redis: {{ url: \"redis://127.0.0.1:6379/0\", {field}: {value} }} }}\n"
            )),
            format!("shared.redis.{field}"),
        ),
        "TlsConfig" => (
            doc(&format!(
                "listen: {{ ingress_tls: \"127.0.0.1:8443\" }}\ntls: {{ {field}: {value}, certificates: [{{ cert_file: a.pem, key_file: a.key }}] }}\n"
            )),
            format!("tls.{field}"),
        ),
        "ApiConfig" => (
            format!(
                "{}    egress: {{ allow: [{{ host: mcp.example.com }}] }}\n    apis: [{{ name: x, mcp: {{ url: \"https://mcp.example.com/mcp\" }}, {field}: {value} }}]\n",
                doc("")
            ),
            format!("tenants[0].apis[0].{field}"),
        ),
        other => panic!("no test document for {other}"),
    }
}

/// Routes: hosts, prefixes, worker ids and names are checked with their YAML paths; a host
/// belongs to one tenant (both paths named); lowering yields the route table.
#[test]
fn routes_are_validated_and_lowered() {
    let two = |a: &str, b: &str| {
        format!(
            "tenants:\n{}    routes: [{a}]\n{}    routes: [{b}]\n",
            tenant("acme", "k1"),
            tenant("beta", "k2")
        )
    };
    let message = single_error_at(
        &two(
            "{ host: app.example.com, worker: w }",
            "{ host: APP.example.com., worker: w }",
        ),
        "tenants[1].routes[0].host",
    );
    assert!(
        message.contains("tenants[0].routes[0].host") && message.contains("app.example.com"),
        "{message}"
    );
    // Same host, two prefixes, one tenant: fine; the same prefix twice is not.
    load_ok(&two(
        "{ host: a.test, worker: w }, { host: a.test, path_prefix: /api, worker: v }",
        "{ host: b.test, worker: w }",
    ));
    let message = single_error_at(
        &two(
            "{ host: a.test, worker: w, name: one }, { host: a.test, worker: v, name: two }",
            "{ host: b.test, worker: w }",
        ),
        "tenants[0].routes[1].path_prefix",
    );
    assert!(message.contains("tenants[0].routes[0]"), "{message}");
    for (route, path) in [
        ("{ host: 10.0.0.1, worker: w }", "tenants[0].routes[0].host"),
        (
            "{ host: \"https://a.test\", worker: w }",
            "tenants[0].routes[0].host",
        ),
        (
            "{ host: a.test, path_prefix: api, worker: w }",
            "tenants[0].routes[0].path_prefix",
        ),
        (
            "{ host: a.test, worker: \"../x\" }",
            "tenants[0].routes[0].worker",
        ),
        (
            "{ host: a.test, worker: w, max_body_bytes: 2097152 }",
            "tenants[0].routes[0].max_body_bytes",
        ),
        (
            "{ host: a.test, worker: w, client_rate_limit: { per_second: 0, burst: 1 } }",
            "tenants[0].routes[0].client_rate_limit.per_second",
        ),
    ] {
        single_error_at(&two(route, "{ host: b.test, worker: w }"), path);
    }
    let (_, lowered) = Config::from_yaml_str_lowered(
        &format!(
            "{}listen: {{ api_hosts: [api.example.com], trusted_proxies: [10.0.0.0/8, \"::1\"] }}\n",
            two("{ host: \"*.apps.test\", worker: w, max_body_bytes: 1000 }", "{ host: b.test, path_prefix: /x, worker: v, name: bx }")
        ),
        "t",
    )
    .expect("valid");
    let routes = lowered.policy.routes();
    match routes.resolve(Some("u1.apps.test"), "/") {
        isogate_policy::RouteMatch::Route(r) => {
            assert_eq!(
                (r.tenant.as_str(), r.worker.as_str(), r.name.as_str()),
                ("acme", "w", "*.apps.test/")
            );
            assert_eq!(r.max_body_bytes, 1000);
            assert_eq!(
                (r.client_rate_limit.per_second, r.client_rate_limit.burst),
                (50, 100)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(routes.resolve(Some("b.test"), "/x/y"), isogate_policy::RouteMatch::Route(r) if r.name == "bx")
    );
    assert_eq!(
        routes.resolve(Some("api.example.com"), "/v1/load"),
        isogate_policy::RouteMatch::Api
    );
    assert_eq!(
        routes.resolve(Some("other.test"), "/"),
        isogate_policy::RouteMatch::NoRoute
    );
    assert!(lowered.policy.is_trusted_proxy("10.1.2.3".parse().unwrap()));
    assert!(lowered.policy.is_trusted_proxy("::1".parse().unwrap()));
    assert!(!lowered.policy.is_trusted_proxy("11.0.0.1".parse().unwrap()));
}

#[test]
fn shared_redis_is_validated() {
    load_ok(&doc("shared: { redis: { url: \"rediss://redis.internal:6380/2\", password: { env: REDIS_PASSWORD } } }\n"));
    for (redis, path) in [
        ("{ url: \"http://x:6379\" }", "shared.redis.url"),
        ("{ url: \"redis://:hunter2@x:6379\" }", "shared.redis.url"),
        ("{ url: \"redis://x:6379/abc\" }", "shared.redis.url"),
        ("{ url: \"not a url\" }", "shared.redis.url"),
        (
            "{ url: \"redis://x\", password: { env: \"1BAD\" } }",
            "shared.redis.password.env",
        ),
        (
            "{ url: \"redis://x\", key_prefix: \"a{b}\" }",
            "shared.redis.key_prefix",
        ),
    ] {
        let message = single_error_at(&doc(&format!("shared: {{ redis: {redis} }}\n")), path);
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn ingress_and_tls_settings_are_validated() {
    for (extra, path) in [
        ("listen: { api_hosts: [\"a..b\"] }\n", "listen.api_hosts[0]"),
        ("listen: { trusted_proxies: [\"10.0.0.0/33\"] }\n", "listen.trusted_proxies[0]"),
        ("listen: { ingress_tls: \"127.0.0.1:8443\" }\n", "tls.certificates"),
        ("tls: { certificates: [{ cert_file: a, key_file: b }] }\n", "listen.ingress_tls"),
        ("listen: { ingress_tls: \"127.0.0.1:8080\" }\ntls: { certificates: [{ cert_file: a, key_file: b }] }\n", "listen.ingress_tls"),
        ("listen: { ingress_tls: \"127.0.0.1:8443\" }\ntls: { certificates: [{ cert_file: \"\", key_file: b }] }\n", "tls.certificates[0].cert_file"),
    ] {
        single_error_at(&doc(extra), path);
    }
    let (yaml, _) = (
        format!(
            "{}    routes: [{{ host: a.test, worker: w, https_redirect: true }}]\n",
            doc("")
        ),
        (),
    );
    single_error_at(&yaml, "tenants[0].routes[0].https_redirect");
    let (_, lowered) = Config::from_yaml_str_lowered(
        &doc("listen: { ingress_tls: \"127.0.0.1:8443\" }\ntls: { certificates: [{ cert_file: a, key_file: b }] }\n"),
        "t",
    )
    .expect("valid");
    assert_eq!(lowered.listeners.len(), 3);
}

/// The validator and the JSON schema agree on every numeric bound, and every integer field of
/// the schema is bounded by the validator's table (so a new field cannot be forgotten).
#[test]
fn schema_bounds_match_the_validator() {
    let schema = serde_json::to_value(Config::json_schema()).expect("schema serializes");
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut integer_fields = Vec::new();
    for (def, body) in defs {
        let Some(properties) = body["properties"].as_object() else {
            continue;
        };
        for (field, property) in properties {
            let items = property.get("items").is_some();
            let leaf = if items { &property["items"] } else { property };
            let is_integer = match &leaf["type"] {
                serde_json::Value::String(t) => t == "integer",
                serde_json::Value::Array(ts) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if is_integer {
                integer_fields.push((def.clone(), field.clone(), leaf.clone()));
            }
        }
    }
    // Fields that are deliberately unbounded beyond their type.
    let unbounded = [
        ("PoolConfig", "warm_isolates"),
        ("VaultConfig", "max_stale_s"),
    ];
    for (def, field, leaf) in &integer_fields {
        if unbounded.contains(&(def.as_str(), field.as_str())) {
            continue;
        }
        let bound = validate::BOUNDS
            .iter()
            .find(|b| b.def == def && b.field == field)
            .unwrap_or_else(|| panic!("{def}.{field} has no entry in validate::BOUNDS"));
        assert_eq!(leaf["minimum"], bound.min, "{def}.{field}: {leaf}");
        match bound.max {
            Some(max) => assert_eq!(leaf["maximum"], max, "{def}.{field}: {leaf}"),
            None => assert!(leaf.get("maximum").is_none(), "{def}.{field}: {leaf}"),
        }
    }
    assert_eq!(
        integer_fields.len(),
        validate::BOUNDS.len() + unbounded.len(),
        "every bound names a schema field: {integer_fields:?}"
    );

    for bound in validate::BOUNDS {
        let (def, field) = (bound.def, bound.field);
        let (yaml, _) = bound_doc(def, field, bound.min);
        load_ok(&yaml);
        if bound.min > 0 {
            let (yaml, path) = bound_doc(def, field, bound.min - 1);
            let errors = validation_errors(&yaml);
            assert!(
                errors.iter().any(|e| e.path == path),
                "{def}.{field} = {}: {errors:#?}",
                bound.min - 1
            );
        }
        if let Some(max) = bound.max {
            load_ok(&bound_doc(def, field, max).0);
            let (yaml, path) = bound_doc(def, field, max + 1);
            let errors = validation_errors(&yaml);
            assert!(
                errors.iter().any(|e| e.path == path),
                "{def}.{field} = {}: {errors:#?}",
                max + 1
            );
        }
    }
}

#[test]
fn injection_render_replaces_every_placeholder() {
    let header = Injection::Header {
        header: "Authorization".into(),
        value: "Bearer ${secret}".into(),
    };
    assert_eq!(header.template(), "Bearer ${secret}");
    assert_eq!(header.render("t0k3n"), "Bearer t0k3n");
    let twice = Injection::Query {
        query: "k".into(),
        value: "${secret}:${secret}".into(),
    };
    assert_eq!(twice.render("s"), "s:s");
    // The secret itself is not re-expanded.
    assert_eq!(twice.render("${secret}"), "${secret}:${secret}");
}

#[test]
fn egress_rule_validation_names_the_path() {
    let host_at = "tenants[0].egress.allow[0].host";
    for host in [
        "\"*\"",
        "\"a.*.com\"",
        "\"*.\"",
        "\"**.x.com\"",
        "\"\"",
        "\"a b.com\"",
        "\"https://x.com\"",
        "\"x.com:443\"",
        "\"[::1]:443\"",
        "\"x..com\"",
    ] {
        let message = single_error_at(&rule_doc(&format!("{{ host: {host} }}"), ""), host_at);
        assert!(message.contains("host pattern"), "{host}: {message}");
    }

    let cases: &[(&str, &str, &str)] = &[
        (
            "{ host: x.com, credential: nope }",
            "tenants[0].egress.allow[0].credential",
            "unknown credential \"nope\"",
        ),
        (
            "{ host: x.com, ports: [] }",
            "tenants[0].egress.allow[0].ports",
            "must not be empty",
        ),
        (
            "{ host: x.com, ports: [443, 0] }",
            "tenants[0].egress.allow[0].ports[1]",
            "between 1 and 65535, got 0",
        ),
        (
            "{ host: x.com, ports: [70000] }",
            "tenants[0].egress.allow[0].ports[0]",
            "between 1 and 65535, got 70000",
        ),
        (
            "{ host: x.com, methods: [] }",
            "tenants[0].egress.allow[0].methods",
            "must not be empty",
        ),
        (
            "{ host: x.com, methods: [GET, \"GE T\"] }",
            "tenants[0].egress.allow[0].methods[1]",
            "invalid HTTP method \"GE T\"",
        ),
        (
            "{ host: x.com, methods: [\"\"] }",
            "tenants[0].egress.allow[0].methods[0]",
            "invalid HTTP method",
        ),
        (
            "{ host: x.com, paths: [] }",
            "tenants[0].egress.allow[0].paths",
            "must not be empty",
        ),
        (
            "{ host: x.com, paths: [\"/ok/**\", \"repos/**\"] }",
            "tenants[0].egress.allow[0].paths[1]",
            "must start with `/`",
        ),
        (
            "{ host: x.com, paths: [\"/a[\"] }",
            "tenants[0].egress.allow[0].paths[0]",
            "invalid path glob",
        ),
        (
            "{ host: x.com, rate_limit: { per_second: 1, burst: 0 } }",
            "tenants[0].egress.allow[0].rate_limit.burst",
            "greater than 0",
        ),
        (
            "{ host: x.com, rate_limit: { per_second: 0, burst: 1 } }",
            "tenants[0].egress.allow[0].rate_limit.per_second",
            "greater than 0",
        ),
        (
            "{ host: x.com, name: \"a b\" }",
            "tenants[0].egress.allow[0].name",
            "invalid rule name",
        ),
        (
            "{ host: x.com, name: \"\" }",
            "tenants[0].egress.allow[0].name",
            "invalid rule name",
        ),
    ];
    for (rule, path, expected) in cases {
        let message = single_error_at(&rule_doc(rule, ""), path);
        assert!(message.contains(expected), "{rule}: {message}");
    }

    let message = single_error_at(
        &egress_doc("{ rate_limit: { per_second: 0, burst: 5 } }", ""),
        "tenants[0].egress.rate_limit.per_second",
    );
    assert_eq!(message, "must be greater than 0");
}

#[test]
fn duplicate_rule_names_are_rejected() {
    // Explicit names.
    let message = single_error_at(
        &egress_doc(
            "{ allow: [ { host: a.com, name: r }, { host: b.com, name: r } ] }",
            "",
        ),
        "tenants[0].egress.allow[1].name",
    );
    assert!(
        message.contains("duplicate rule name \"r\" (already used by tenants[0].egress.allow[0])"),
        "{message}"
    );
    // Default names are the normalised host pattern.
    let message = single_error_at(
        &egress_doc(
            "{ allow: [ { host: api.x.com, methods: [GET] }, { host: API.X.COM., methods: [POST] } ] }",
            "",
        ),
        "tenants[0].egress.allow[1]",
    );
    assert!(
        message.contains("give this rule a unique `name`"),
        "{message}"
    );
    // An explicit name may not take a default name either.
    single_error_at(
        &egress_doc(
            "{ allow: [ { host: api.x.com }, { host: b.com, name: api.x.com } ] }",
            "",
        ),
        "tenants[0].egress.allow[1].name",
    );
    // Distinct names make the same host fine, and names are per tenant.
    load_ok(&egress_doc(
        "{ allow: [ { host: api.x.com, methods: [GET] }, { host: api.x.com, name: posts, methods: [POST] } ] }",
        "",
    ));
    load_ok(&format!(
        "tenants:\n{}    egress: {{ allow: [ {{ host: x.com }} ] }}\n{}    egress: {{ allow: [ {{ host: x.com }} ] }}\n",
        tenant("a", "a-key"),
        tenant("b", "b-key")
    ));
}

#[test]
fn credential_validation_names_the_path() {
    const INJECT: &str = "inject: { header: Authorization, value: \"Bearer ${secret}\" }";
    let cases: &[(String, &str, &str)] = &[
        (
            format!("{{ name: c, source: {{ vault: {{ backend: nope, path: kv/x, field: f }} }}, {INJECT} }}"),
            "credentials[0].source.vault.backend",
            "unknown vault \"nope\"",
        ),
        (
            format!("{{ name: c, source: {{ vault: {{ backend: main, path: \"\", field: f }} }}, {INJECT} }}"),
            "credentials[0].source.vault.path",
            "non-empty path",
        ),
        (
            format!("{{ name: c, source: {{ vault: {{ backend: main, path: kv/x, field: \"\" }} }}, {INJECT} }}"),
            "credentials[0].source.vault.field",
            "must not be empty",
        ),
        (
            format!("{{ name: c, source: {{ env: 1TOKEN }}, {INJECT} }}"),
            "credentials[0].source.env",
            "invalid environment variable name",
        ),
        (
            format!("{{ name: c, source: {{ file: \"\" }}, {INJECT} }}"),
            "credentials[0].source.file",
            "must not be empty",
        ),
        (
            format!("{{ name: GitHub, source: {{ env: T }}, {INJECT} }}"),
            "credentials[0].name",
            "invalid credential name \"GitHub\"",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: Authorization, value: \"Bearer token\" } }".to_owned(),
            "credentials[0].inject.value",
            "must contain the placeholder ${secret}",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: Authorization, value: \"Bearer ${secret}\\r\\nX: y\" } }".to_owned(),
            "credentials[0].inject.value",
            "control characters",
        ),
        (
            "{ name: c, source: { env: T }, inject: { query: api_key, value: \"secret\" } }".to_owned(),
            "credentials[0].inject.value",
            "${secret}",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: \"X Token\", value: \"${secret}\" } }".to_owned(),
            "credentials[0].inject.header",
            "invalid HTTP header name \"X Token\"",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: \"X-Token:\", value: \"${secret}\" } }".to_owned(),
            "credentials[0].inject.header",
            "invalid HTTP header name",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: \"\", value: \"${secret}\" } }".to_owned(),
            "credentials[0].inject.header",
            "invalid HTTP header name",
        ),
        (
            "{ name: c, source: { env: T }, inject: { header: Host, value: \"${secret}\" } }".to_owned(),
            "credentials[0].inject.header",
            "managed by the HTTP client",
        ),
        (
            "{ name: c, source: { env: T }, inject: { query: \"a=b\", value: \"${secret}\" } }".to_owned(),
            "credentials[0].inject.query",
            "invalid query parameter name",
        ),
    ];
    for (credential, path, expected) in cases {
        let message = single_error_at(&credentials_doc(credential), path);
        assert!(message.contains(expected), "{credential}: {message}");
    }

    let message = single_error_at(
        &credentials_doc(&format!(
            "{{ name: c, source: {{ env: A }}, {INJECT} }}, {{ name: c, source: {{ env: B }}, {INJECT} }}"
        )),
        "credentials[1].name",
    );
    assert!(
        message.contains("duplicate credential name \"c\" (already defined at credentials[0])"),
        "{message}"
    );

    // Valid variants.
    load_ok(&credentials_doc(
        "{ name: a, source: { env: _A1 }, inject: { header: X-Api-Key, value: \"${secret}\" } }, \
         { name: b, source: { file: /run/b }, inject: { query: key, value: \"pre-${secret}\" } }",
    ));
}

#[test]
fn vault_validation_names_the_path() {
    const TOKEN: &str = "token: { env: VAULT_TOKEN }";
    let cases: &[(String, &str, &str)] = &[
        (
            format!("{{ name: v, kind: hashicorp, address: \"ftp://vault:8200\", {TOKEN} }}"),
            "vaults[0].address",
            "must be an http or https URL: URL scheme `ftp` is not allowed",
        ),
        (
            format!("{{ name: v, kind: hashicorp, address: \"vault.internal:8200\", {TOKEN} }}"),
            "vaults[0].address",
            "must be an http or https URL",
        ),
        (
            format!("{{ name: v, kind: hashicorp, address: \"\", {TOKEN} }}"),
            "vaults[0].address",
            "must be an http or https URL: invalid URL",
        ),
        (
            format!("{{ name: v, kind: hashicorp, address: \"http://vault\", {TOKEN}, cache_ttl_s: 0, max_stale_s: 0 }}"),
            "vaults[0].cache_ttl_s",
            "must be greater than 0",
        ),
        (
            format!("{{ name: v, kind: hashicorp, address: \"http://vault\", {TOKEN}, cache_ttl_s: 900 }}"),
            "vaults[0].max_stale_s",
            "must be at least cache_ttl_s (600 < 900)",
        ),
        (
            "{ name: v, kind: hashicorp, address: \"http://vault\", token: { env: \"\" } }".to_owned(),
            "vaults[0].token.env",
            "invalid environment variable name",
        ),
        (
            "{ name: v, kind: hashicorp, address: \"http://vault\", token: { file: \"\" } }".to_owned(),
            "vaults[0].token.file",
            "must not be empty",
        ),
        (
            format!("{{ name: \"v v\", kind: hashicorp, address: \"http://vault\", {TOKEN} }}"),
            "vaults[0].name",
            "invalid vault name",
        ),
    ];
    for (vault, path, expected) in cases {
        let errors = validation_errors(&vault_doc(vault));
        assert_eq!(errors.len(), 1, "{vault}: {errors:#?}");
        assert_eq!(errors[0].path, *path, "{vault}: {errors:#?}");
        assert!(errors[0].message.contains(expected), "{vault}: {errors:#?}");
    }
    let message = single_error_at(
        &vault_doc(&format!(
            "{{ name: v, kind: hashicorp, address: \"http://a\", {TOKEN} }}, \
             {{ name: v, kind: hashicorp, address: \"http://b\", {TOKEN} }}"
        )),
        "vaults[1].name",
    );
    assert!(
        message.contains("already defined at vaults[0]"),
        "{message}"
    );
}

#[test]
fn egress_errors_are_all_reported_in_document_order() {
    let yaml = format!(
        "{}    egress:\n      rate_limit: {{ per_second: 0, burst: 0 }}\n      allow:\n        \
         - {{ host: \"*\", credential: ghost }}\n        \
         - {{ host: ok.com, ports: [0], methods: [\"G T\"], paths: [x] }}\n\
         credentials:\n  - {{ name: c, source: {{ vault: {{ backend: none, path: p, field: f }} }}, \
         inject: {{ header: \"A B\", value: nope }} }}\n\
         vaults:\n  - {{ name: v, kind: hashicorp, address: \"mailto:x\", token: {{ env: T }}, \
         cache_ttl_s: 10, max_stale_s: 5 }}\n",
        doc("")
    );
    let errors = validation_errors(&yaml);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tenants[0].egress.rate_limit.per_second",
            "tenants[0].egress.rate_limit.burst",
            "tenants[0].egress.allow[0].host",
            "tenants[0].egress.allow[0].credential",
            "tenants[0].egress.allow[1].ports[0]",
            "tenants[0].egress.allow[1].methods[0]",
            "tenants[0].egress.allow[1].paths[0]",
            "credentials[0].source.vault.backend",
            "credentials[0].inject.header",
            "credentials[0].inject.value",
            "vaults[0].address",
            "vaults[0].max_stale_s",
        ],
        "{errors:#?}"
    );
}

#[test]
fn egress_shape_errors_name_the_path() {
    let cases: &[(String, &str, &str)] = &[
        (
            rule_doc("{ hots: x.com }", ""),
            "tenants[0].egress.allow[0].hots",
            "unknown field `hots`",
        ),
        (
            egress_doc("{ allow: [], deny: [] }", ""),
            "tenants[0].egress.deny",
            "unknown field `deny`",
        ),
        (
            egress_doc("{ mode: block }", ""),
            "tenants[0].egress.mode",
            "unknown variant `block`",
        ),
        (
            rule_doc("{ host: x.com, rate_limit: { per_second: 1 } }", ""),
            "tenants[0].egress.allow[0].rate_limit",
            "missing field `burst`",
        ),
        (
            credentials_doc("{ name: c, source: { envv: T }, inject: { header: A, value: \"${secret}\" } }"),
            "credentials[0].source.envv",
            "unknown field `envv`, expected one of `env`, `file`, `vault`",
        ),
        (
            credentials_doc("{ name: c, source: { env: T, file: /x }, inject: { header: A, value: \"${secret}\" } }"),
            "credentials[0].source",
            "give exactly one of `env`, `file` or `vault`",
        ),
        (
            credentials_doc("{ name: c, source: {}, inject: { header: A, value: \"${secret}\" } }"),
            "credentials[0].source",
            "give exactly one of",
        ),
        (
            credentials_doc("{ name: c, source: { vault: { backend: main, path: p, field: f, version: 2 } }, inject: { header: A, value: \"${secret}\" } }"),
            "credentials[0].source.vault.version",
            "unknown field `version`",
        ),
        (
            credentials_doc("{ name: c, source: { env: T }, inject: { header: A, query: b, value: \"${secret}\" } }"),
            "credentials[0].inject",
            "give exactly one of `header` or `query`",
        ),
        (
            credentials_doc("{ name: c, source: { env: T }, inject: { header: A } }"),
            "credentials[0].inject",
            "missing field `value`",
        ),
        (
            credentials_doc("{ name: c, source: { env: T }, inject: { cookie: A, value: \"${secret}\" } }"),
            "credentials[0].inject.cookie",
            "unknown field `cookie`",
        ),
        (
            vault_doc("{ name: v, kind: aws, address: \"http://a\", token: { env: T } }"),
            "vaults[0].kind",
            "unknown variant `aws`",
        ),
        (
            vault_doc("{ name: v, kind: hashicorp, address: \"http://a\", token: { env: T, file: /t } }"),
            "vaults[0].token",
            "give exactly one of `env` or `file`",
        ),
        (
            vault_doc("{ name: v, kind: hashicorp, address: \"http://a\", token: { env: T }, namespace: x }"),
            "vaults[0].namespace",
            "unknown field `namespace`",
        ),
    ];
    for (yaml, path, expected) in cases {
        let (actual_path, message, line, _) = parse_error(yaml);
        assert_eq!(actual_path, *path, "{yaml}: {message}");
        assert!(message.contains(expected), "{yaml}: {message}");
        assert!(line.is_some(), "{yaml}");
    }
}

#[test]
fn egress_config_round_trips_through_yaml() {
    let config = load_ok(EGRESS_EXAMPLE);
    let yaml = serde_yaml_ng::to_string(&config).expect("serializes");
    assert_eq!(load_ok(&yaml), config, "{yaml}");
}

#[test]
fn json_schema_describes_egress() {
    let schema = serde_json::to_value(Config::json_schema()).expect("schema serializes");
    for property in ["credentials", "vaults"] {
        assert!(
            schema["properties"].get(property).is_some(),
            "missing {property} in {schema:#}"
        );
    }
    let text = schema.to_string();
    for needle in [
        "allow_private",
        "rate_limit",
        "per_second",
        "cache_ttl_s",
        "max_stale_s",
        "hashicorp",
        "enforce",
        "\"header\"",
        "\"query\"",
        "\"vault\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
}
