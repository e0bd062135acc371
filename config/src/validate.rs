//! Semantic validation of a parsed [`Config`].
//!
//! Parsing (serde) guarantees the *shape* of the document; the rules here
//! check the *values*. Every rule reports the YAML path of the offending value
//! and validation keeps going after a failure, so that all problems are
//! reported at once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;

use isogate_policy::ApiKeyHash;

use crate::{Config, Listen, PoolConfig, TenantConfig, ValidationError};

/// Upper bound of `pool.threads`.
pub(crate) const MAX_POOL_THREADS: usize = 256;
/// Upper bound of `tenants[].limits.memory_mb`.
pub(crate) const MAX_MEMORY_MB: u64 = 4096;
/// Maximum length of a tenant name.
pub(crate) const MAX_TENANT_NAME_LEN: usize = 63;

/// Returns every rule violation found in `config`, in document order.
pub(crate) fn collect_errors(config: &Config) -> Vec<ValidationError> {
    let mut errors = Errors::default();
    check_listen(&config.listen, &mut errors);
    if config.state_dir.as_os_str().is_empty() {
        errors.push("state_dir", "must not be empty");
    }
    check_pool(&config.pool, &mut errors);
    check_tenants(&config.tenants, &mut errors);
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

fn check_tenants(tenants: &[TenantConfig], errors: &mut Errors) {
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
