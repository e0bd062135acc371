//! Semantic validation of a parsed [`Config`].
//!
//! Parsing (serde) guarantees the *shape* of the document; the rules here
//! check the *values*. Every rule reports the YAML path of the offending value
//! and validation keeps going after a failure, so that all problems are
//! reported at once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use isogate_policy::{parse_target, ApiKeyHash, HostPattern, PathMatcher};

use crate::{
    Config, CredentialConfig, EgressConfig, Injection, Listen, PoolConfig, RateLimitConfig,
    SecretSource, TenantConfig, TokenSource, ValidationError, VaultConfig, SECRET_PLACEHOLDER,
};

/// Upper bound of `pool.threads`.
pub(crate) const MAX_POOL_THREADS: usize = 256;
/// Upper bound of `tenants[].limits.memory_mb`.
pub(crate) const MAX_MEMORY_MB: u64 = 4096;
/// Maximum length of a tenant name (also of credential and vault names).
pub(crate) const MAX_TENANT_NAME_LEN: usize = 63;
/// Maximum length of an egress rule name.
pub(crate) const MAX_RULE_NAME_LEN: usize = 128;
/// Headers the HTTP client manages itself (framing, connection handling);
/// a credential must not be injected into them.
const CLIENT_MANAGED_HEADERS: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Returns every rule violation found in `config`, in document order.
pub(crate) fn collect_errors(config: &Config) -> Vec<ValidationError> {
    let mut errors = Errors::default();
    check_listen(&config.listen, &mut errors);
    if config.state_dir.as_os_str().is_empty() {
        errors.push("state_dir", "must not be empty");
    }
    check_pool(&config.pool, &mut errors);
    let credentials: HashSet<&str> = config
        .credentials
        .iter()
        .map(|credential| credential.name.as_str())
        .collect();
    check_tenants(&config.tenants, &credentials, &mut errors);
    let vaults: HashSet<&str> = config
        .vaults
        .iter()
        .map(|vault| vault.name.as_str())
        .collect();
    check_credentials(&config.credentials, &vaults, &mut errors);
    check_vaults(&config.vaults, &mut errors);
    if config.shutdown.grace_period_s > 3600 {
        errors.push("shutdown.grace_period_s", "must be at most 3600");
    }
    if config.shutdown.drain_timeout_s > 3600 {
        errors.push("shutdown.drain_timeout_s", "must be at most 3600");
    }
    if !(1..=65536).contains(&config.inflight.budget_mb) {
        errors.push("inflight.budget_mb", "must be between 1 and 65536");
    }
    if !(1..=100).contains(&config.inflight.tenant_share_percent) {
        errors.push("inflight.tenant_share_percent", "must be between 1 and 100");
    }
    if config.inflight.wait_ms > 60000 {
        errors.push("inflight.wait_ms", "must be at most 60000");
    }
    errors.0
}

#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError::new(path, message));
    }
}

fn check_listen(listen: &Listen, errors: &mut Errors) {
    if listeners_conflict(listen.ingress, listen.admin) {
        errors.push(
            "listen.admin",
            format!(
                "must not use the same address as listen.ingress ({})",
                listen.ingress
            ),
        );
    }
}

/// Whether two listeners would try to bind the same socket.
///
/// Port 0 asks the OS for a fresh ephemeral port, so it never conflicts. A
/// wildcard address (`0.0.0.0`, `[::]`) conflicts with any address on the
/// same port.
fn listeners_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_pool(pool: &PoolConfig, errors: &mut Errors) {
    if let Some(threads) = pool.threads {
        if !(1..=MAX_POOL_THREADS).contains(&threads) {
            errors.push(
                "pool.threads",
                format!("must be between 1 and {MAX_POOL_THREADS}, got {threads}"),
            );
        }
    }
    if pool.max_cached_workers == 0 {
        errors.push("pool.max_cached_workers", "must be greater than 0");
    }
    if pool.idle_ttl_s == 0 {
        errors.push("pool.idle_ttl_s", "must be greater than 0");
    }
    if pool.queue_capacity == 0 {
        errors.push("pool.queue_capacity", "must be greater than 0");
    }
}

fn check_tenants(tenants: &[TenantConfig], credentials: &HashSet<&str>, errors: &mut Errors) {
    if tenants.is_empty() {
        errors.push("tenants", "at least one tenant is required");
        return;
    }

    // First occurrence of each name / key digest, for duplicate detection.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], String> = HashMap::new();
    let empty_key = ApiKeyHash::of_key("");

    for (t, tenant) in tenants.iter().enumerate() {
        let at = format!("tenants[{t}]");

        if !is_valid_tenant_name(&tenant.name) {
            errors.push(
                format!("{at}.name"),
                format!(
                    "invalid tenant name {:?}: must be 1 to {MAX_TENANT_NAME_LEN} characters \
                     of a-z, 0-9, '_' and '-', starting with a letter or digit",
                    tenant.name
                ),
            );
        }
        match names.entry(&tenant.name) {
            Entry::Vacant(entry) => {
                entry.insert(t);
            }
            Entry::Occupied(entry) => errors.push(
                format!("{at}.name"),
                format!(
                    "duplicate tenant name {:?} (already defined at tenants[{}])",
                    tenant.name,
                    entry.get()
                ),
            ),
        }

        if tenant.api_keys.is_empty() {
            errors.push(format!("{at}.api_keys"), "at least one API key is required");
        }
        for (k, key) in tenant.api_keys.iter().enumerate() {
            let key_path = format!("{at}.api_keys[{k}].sha256");
            match ApiKeyHash::from_hex(&key.sha256) {
                Err(message) => errors.push(key_path, message),
                Ok(hash) if hash == empty_key => errors.push(
                    key_path,
                    "is the SHA-256 of the empty string; empty API keys are never accepted",
                ),
                Ok(hash) => {
                    if let Some(first) = keys.get(hash.as_bytes()) {
                        errors.push(
                            key_path,
                            format!("duplicate API key hash (already used at {first})"),
                        );
                    } else {
                        keys.insert(*hash.as_bytes(), key_path);
                    }
                }
            }
        }

        check_limits(&at, tenant, errors);
        check_egress(&format!("{at}.egress"), &tenant.egress, credentials, errors);
    }
}

fn check_limits(at: &str, tenant: &TenantConfig, errors: &mut Errors) {
    let l = &tenant.limits;
    // `subrequests: 0` (no outbound requests) and `max_queue: 0` (refuse instead of waiting)
    // are meaningful; every other limit must be positive.
    let numeric: [(&str, u64); 7] = [
        ("cpu_ms", l.cpu_ms),
        ("memory_mb", l.memory_mb),
        ("wall_ms", l.wall_ms),
        ("max_concurrency", u64::from(l.max_concurrency)),
        ("max_cached_workers", u64::from(l.max_cached_workers)),
        ("max_body_bytes", l.max_body_bytes),
        ("queue_timeout_ms", l.queue_timeout_ms),
    ];
    for (field, value) in numeric {
        if value == 0 {
            errors.push(format!("{at}.limits.{field}"), "must be greater than 0");
        }
    }
    if l.memory_mb > MAX_MEMORY_MB {
        errors.push(
            format!("{at}.limits.memory_mb"),
            format!("must be at most {MAX_MEMORY_MB}, got {}", l.memory_mb),
        );
    }
    if l.cpu_ms > l.wall_ms {
        errors.push(
            format!("{at}.limits.cpu_ms"),
            format!("must not exceed wall_ms ({} > {})", l.cpu_ms, l.wall_ms),
        );
    }
}

fn check_rate_limit(at: &str, limit: &RateLimitConfig, errors: &mut Errors) {
    if limit.per_second == 0 {
        errors.push(format!("{at}.per_second"), "must be greater than 0");
    }
    if limit.burst == 0 {
        errors.push(format!("{at}.burst"), "must be greater than 0");
    }
}

/// Checks a tenant's `egress` section; `at` is its path.
fn check_egress(at: &str, egress: &EgressConfig, credentials: &HashSet<&str>, errors: &mut Errors) {
    if let Some(limit) = &egress.rate_limit {
        check_rate_limit(&format!("{at}.rate_limit"), limit, errors);
    }

    // Effective rule name -> path of the rule that first used it.
    let mut names: HashMap<String, String> = HashMap::new();
    for (r, rule) in egress.allow.iter().enumerate() {
        let at = format!("{at}.allow[{r}]");

        let host = HostPattern::parse(&rule.host);
        if let Err(message) = &host {
            errors.push(format!("{at}.host"), message.as_str());
        }

        if let Some(name) = &rule.name {
            if !is_valid_rule_name(name) {
                errors.push(
                    format!("{at}.name"),
                    format!(
                        "invalid rule name {name:?}: must be 1 to {MAX_RULE_NAME_LEN} \
                         characters without whitespace or control characters"
                    ),
                );
            }
        }
        let effective = match (&rule.name, &host) {
            (Some(name), _) => Some(name.clone()),
            (None, Ok(pattern)) => Some(pattern.to_string()),
            (None, Err(_)) => None,
        };
        if let Some(name) = effective {
            match names.entry(name) {
                Entry::Vacant(entry) => {
                    entry.insert(at.clone());
                }
                Entry::Occupied(entry) if rule.name.is_some() => errors.push(
                    format!("{at}.name"),
                    format!(
                        "duplicate rule name {:?} (already used by {})",
                        entry.key(),
                        entry.get()
                    ),
                ),
                Entry::Occupied(entry) => errors.push(
                    at.as_str(),
                    format!(
                        "duplicate rule name {:?} (already used by {}): rules without a \
                         `name` are named after their host, so give this rule a unique `name`",
                        entry.key(),
                        entry.get()
                    ),
                ),
            }
        }

        if let Some(ports) = &rule.ports {
            if ports.is_empty() {
                errors.push(
                    format!("{at}.ports"),
                    "must not be empty; omit `ports` to allow ports 80 and 443",
                );
            }
            for (p, &port) in ports.iter().enumerate() {
                if !(1..=65535).contains(&port) {
                    errors.push(
                        format!("{at}.ports[{p}]"),
                        format!("must be between 1 and 65535, got {port}"),
                    );
                }
            }
        }

        if let Some(methods) = &rule.methods {
            if methods.is_empty() {
                errors.push(
                    format!("{at}.methods"),
                    "must not be empty; omit `methods` to allow every method",
                );
            }
            for (m, method) in methods.iter().enumerate() {
                if !is_http_token(method) {
                    errors.push(
                        format!("{at}.methods[{m}]"),
                        format!("invalid HTTP method {method:?}: {TOKEN_RULE}"),
                    );
                }
            }
        }

        if let Some(paths) = &rule.paths {
            if paths.is_empty() {
                errors.push(
                    format!("{at}.paths"),
                    "must not be empty; omit `paths` to allow every path",
                );
            }
            for (g, glob) in paths.iter().enumerate() {
                if let Err(message) = PathMatcher::check_pattern(glob) {
                    errors.push(format!("{at}.paths[{g}]"), message);
                }
            }
        }

        if let Some(credential) = &rule.credential {
            if !credentials.contains(credential.as_str()) {
                errors.push(
                    format!("{at}.credential"),
                    format!("unknown credential {credential:?} (not defined in `credentials`)"),
                );
            }
        }

        if let Some(limit) = &rule.rate_limit {
            check_rate_limit(&format!("{at}.rate_limit"), limit, errors);
        }
    }
}

fn check_credentials(
    credentials: &[CredentialConfig],
    vaults: &HashSet<&str>,
    errors: &mut Errors,
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (c, credential) in credentials.iter().enumerate() {
        let at = format!("credentials[{c}]");
        check_name("credential", &at, &credential.name, &mut names, c, errors);

        let source = format!("{at}.source");
        match &credential.source {
            SecretSource::Env { env } => check_env_name(&format!("{source}.env"), env, errors),
            SecretSource::File { file } => {
                if file.as_os_str().is_empty() {
                    errors.push(format!("{source}.file"), "must not be empty");
                }
            }
            SecretSource::Vault { vault } => {
                if !vaults.contains(vault.backend.as_str()) {
                    errors.push(
                        format!("{source}.vault.backend"),
                        format!(
                            "unknown vault {:?} (not defined in `vaults`)",
                            vault.backend
                        ),
                    );
                }
                if vault.path.trim().is_empty() || vault.path.chars().any(char::is_whitespace) {
                    errors.push(
                        format!("{source}.vault.path"),
                        "must be a non-empty path without whitespace",
                    );
                }
                if vault.field.is_empty() {
                    errors.push(format!("{source}.vault.field"), "must not be empty");
                }
            }
        }

        check_injection(&format!("{at}.inject"), &credential.inject, errors);
    }
}

fn check_injection(at: &str, injection: &Injection, errors: &mut Errors) {
    match injection {
        Injection::Header { header, .. } => {
            if !is_http_token(header) {
                errors.push(
                    format!("{at}.header"),
                    format!("invalid HTTP header name {header:?}: {TOKEN_RULE}"),
                );
            } else if CLIENT_MANAGED_HEADERS
                .iter()
                .any(|managed| managed.eq_ignore_ascii_case(header))
            {
                errors.push(
                    format!("{at}.header"),
                    format!(
                        "header {header:?} is managed by the HTTP client and cannot be injected"
                    ),
                );
            }
        }
        Injection::Query { query, .. } => {
            if query.is_empty()
                || query
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '&' | '=' | '#'))
            {
                errors.push(
                    format!("{at}.query"),
                    format!(
                        "invalid query parameter name {query:?}: must be non-empty, without \
                         whitespace, control characters, '&', '=' or '#'"
                    ),
                );
            }
        }
    }
    let template = injection.template();
    if !template.contains(SECRET_PLACEHOLDER) {
        errors.push(
            format!("{at}.value"),
            format!("must contain the placeholder {SECRET_PLACEHOLDER}"),
        );
    }
    if template.chars().any(|c| c.is_control() && c != '\t') {
        errors.push(
            format!("{at}.value"),
            "must not contain control characters (such as line breaks)",
        );
    }
}

fn check_vaults(vaults: &[VaultConfig], errors: &mut Errors) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (v, vault) in vaults.iter().enumerate() {
        let at = format!("vaults[{v}]");
        check_name("vault", &at, &vault.name, &mut names, v, errors);

        if let Err(error) = parse_target(&vault.address) {
            errors.push(
                format!("{at}.address"),
                format!("must be an http or https URL: {error}"),
            );
        }
        match &vault.token {
            TokenSource::Env { env } => check_env_name(&format!("{at}.token.env"), env, errors),
            TokenSource::File { file } => {
                if file.as_os_str().is_empty() {
                    errors.push(format!("{at}.token.file"), "must not be empty");
                }
            }
        }
        if vault.cache_ttl_s == 0 {
            errors.push(format!("{at}.cache_ttl_s"), "must be greater than 0");
        }
        if vault.max_stale_s < vault.cache_ttl_s {
            errors.push(
                format!("{at}.max_stale_s"),
                format!(
                    "must be at least cache_ttl_s ({} < {})",
                    vault.max_stale_s, vault.cache_ttl_s
                ),
            );
        }
    }
}

/// Checks the name of the `index`-th credential or vault (`what`) at `at`
/// for syntax and uniqueness; `names` maps names to their first index.
fn check_name<'a>(
    what: &str,
    at: &str,
    name: &'a str,
    names: &mut HashMap<&'a str, usize>,
    index: usize,
    errors: &mut Errors,
) {
    if !is_valid_tenant_name(name) {
        errors.push(
            format!("{at}.name"),
            format!(
                "invalid {what} name {name:?}: must be 1 to {MAX_TENANT_NAME_LEN} characters \
                 of a-z, 0-9, '_' and '-', starting with a letter or digit"
            ),
        );
    }
    match names.entry(name) {
        Entry::Vacant(entry) => {
            entry.insert(index);
        }
        Entry::Occupied(entry) => errors.push(
            format!("{at}.name"),
            format!(
                "duplicate {what} name {name:?} (already defined at {}s[{}])",
                what,
                entry.get()
            ),
        ),
    }
}

fn check_env_name(at: &str, name: &str, errors: &mut Errors) {
    if !is_valid_env_name(name) {
        errors.push(
            at,
            format!(
                "invalid environment variable name {name:?}: must be letters, digits and '_', \
                 not starting with a digit"
            ),
        );
    }
}

/// Describes [`is_http_token`] in error messages.
const TOKEN_RULE: &str = "must be a non-empty token of letters, digits and !#$%&'*+-.^_`|~";

/// Whether `s` is an HTTP token (RFC 9110 section 5.6.2), as required of
/// method and header names.
pub(crate) fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Hand-written equivalent of `^[A-Za-z_][A-Za-z0-9_]*$`.
pub(crate) fn is_valid_env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    (first.is_ascii_alphabetic() || *first == b'_')
        && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// 1 to [`MAX_RULE_NAME_LEN`] characters, none of them whitespace or
/// control characters.
pub(crate) fn is_valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_RULE_NAME_LEN
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Hand-written equivalent of `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub(crate) fn is_valid_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_TENANT_NAME_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_name_rule() {
        let max = "a".repeat(MAX_TENANT_NAME_LEN);
        for ok in [
            "a",
            "0",
            "demo",
            "a-b_c",
            "9lives",
            "a-",
            "a_",
            max.as_str(),
        ] {
            assert!(is_valid_tenant_name(ok), "{ok:?} should be valid");
        }
        let too_long = "a".repeat(MAX_TENANT_NAME_LEN + 1);
        for bad in [
            "",
            "-a",
            "_a",
            "Demo",
            "de mo",
            "de.mo",
            "démo",
            "demo\n",
            too_long.as_str(),
        ] {
            assert!(!is_valid_tenant_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn http_token_rule() {
        for ok in [
            "GET",
            "get",
            "M-SEARCH",
            "Authorization",
            "X-Api-Key",
            "a!#$%&'*+-.^_`|~9",
        ] {
            assert!(is_http_token(ok), "{ok:?} should be a token");
        }
        for bad in ["", "GE T", "X:Y", "a\"b", "(x)", "a/b", "é", "a\tb", "a\n"] {
            assert!(!is_http_token(bad), "{bad:?} should not be a token");
        }
    }

    #[test]
    fn env_name_rule() {
        for ok in ["A", "_", "VAULT_TOKEN", "a1", "_9"] {
            assert!(is_valid_env_name(ok), "{ok:?} should be valid");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "É"] {
            assert!(!is_valid_env_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn rule_name_rule() {
        let max = "r".repeat(MAX_RULE_NAME_LEN);
        for ok in [
            "local",
            "*.example.com",
            "[::1]",
            "api.github.com#2",
            max.as_str(),
        ] {
            assert!(is_valid_rule_name(ok), "{ok:?} should be valid");
        }
        let too_long = "r".repeat(MAX_RULE_NAME_LEN + 1);
        for bad in ["", "a b", "a\u{7f}", "tab\t", too_long.as_str()] {
            assert!(!is_valid_rule_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn listener_conflicts() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test address");
        assert!(listeners_conflict(
            addr("127.0.0.1:80"),
            addr("127.0.0.1:80")
        ));
        assert!(listeners_conflict(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(listeners_conflict(addr("127.0.0.1:80"), addr("[::]:80")));
        assert!(!listeners_conflict(
            addr("127.0.0.1:80"),
            addr("127.0.0.1:81")
        ));
        assert!(!listeners_conflict(
            addr("127.0.0.1:80"),
            addr("127.0.0.2:80")
        ));
        assert!(!listeners_conflict(
            addr("127.0.0.1:0"),
            addr("127.0.0.1:0")
        ));
    }
}
