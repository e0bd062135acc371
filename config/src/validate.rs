//! Validation and lowering of a parsed [`Config`], in one pass.
//!
//! Parsing (serde) guarantees the *shape* of the document; [`lower`] checks
//! the *values* and builds the [`Policy`] from the very values it checked
//! (each host pattern, path glob, port and key digest is parsed once), so a
//! configuration that validates is exactly the one that runs. Every rule
//! reports the YAML path of the offending value and validation keeps going
//! after a failure, so that all problems are reported at once. Numeric bounds
//! live in [`BOUNDS`], which [`Config::json_schema`] also writes into the
//! schema, so validator and schema cannot disagree.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use isogate_policy::egress::DEFAULT_PORTS;
use isogate_policy::routes::check_path_prefix;
use isogate_policy::{
    check_worker_id, parse_target, ApiKeyHash, EgressPolicy, EgressRule, HostPattern, PathMatcher,
    Policy, PublicRoute, TenantName, TenantPolicy,
};

use crate::{
    Config, CredentialConfig, EgressConfig, Injection, Listen, Lowered, PoolConfig,
    RateLimitConfig, SecretSource, TenantConfig, TokenSource, ValidationError, VaultConfig,
    SECRET_PLACEHOLDER,
};

/// Inclusive bounds of one numeric field: checked by the validator, written into the JSON
/// schema by [`Config::json_schema`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// The schema definition (the Rust type name), e.g. `LimitsConfig`.
    pub def: &'static str,
    /// The field; for a list, the bound applies to its items.
    pub field: &'static str,
    /// Whether the field is a list whose items are bounded.
    pub items: bool,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value, if any.
    pub max: Option<u64>,
    /// Word a violation as `must be between MIN and MAX, got V` (else `must be greater than
    /// 0` / `must be at least MIN, got V` / `must be at most MAX, got V`).
    pub between: bool,
}

const fn bound(def: &'static str, field: &'static str, min: u64, max: Option<u64>) -> Bound {
    Bound {
        def,
        field,
        items: false,
        min,
        max,
        between: false,
    }
}

/// Every numeric bound of the document. `subrequests: 0` (no outbound requests), `max_queue:
/// 0` (refuse instead of waiting) and `warm_isolates: 0` (no pre-warming) are meaningful.
pub(crate) const BOUNDS: &[Bound] = &[
    Bound {
        between: true,
        ..bound("PoolConfig", "threads", 1, Some(256))
    },
    bound("PoolConfig", "max_cached_workers", 1, None),
    bound("PoolConfig", "idle_ttl_s", 1, None),
    bound("PoolConfig", "queue_capacity", 1, None),
    Bound {
        between: true,
        ..bound("PoolConfig", "processes", 1, Some(64))
    },
    bound("PoolConfig", "grace_ms", 1, None),
    bound("PoolConfig", "process_memory_mb", 64, None),
    bound("QuarantineConfig", "after_kills", 1, None),
    bound("QuarantineConfig", "window_s", 1, None),
    bound("QuarantineConfig", "hold_s", 1, None),
    bound("LimitsConfig", "cpu_ms", 1, None),
    bound("LimitsConfig", "memory_mb", 1, Some(4096)),
    bound("LimitsConfig", "wall_ms", 1, None),
    bound("LimitsConfig", "subrequests", 0, None),
    bound("LimitsConfig", "max_concurrency", 1, None),
    Bound {
        between: true,
        ..bound("LimitsConfig", "max_concurrent_requests", 1, Some(1024))
    },
    bound("LimitsConfig", "max_cached_workers", 1, None),
    // A body crosses the worker channel whole (isogate_pool::wire::MAX_BODY_BYTES).
    bound("LimitsConfig", "max_body_bytes", 1, Some(32 << 20)),
    bound("LimitsConfig", "max_queue", 0, None),
    bound("LimitsConfig", "queue_timeout_ms", 1, None),
    bound("RateLimitConfig", "per_second", 1, None),
    bound("RateLimitConfig", "burst", 1, None),
    Bound {
        items: true,
        between: true,
        ..bound("EgressRuleConfig", "ports", 1, Some(65535))
    },
    bound("VaultConfig", "cache_ttl_s", 1, None),
    bound("ShutdownConfig", "grace_period_s", 0, Some(3600)),
    bound("ShutdownConfig", "drain_timeout_s", 0, Some(3600)),
    Bound {
        between: true,
        ..bound("InflightConfig", "budget_mb", 1, Some(65536))
    },
    Bound {
        between: true,
        ..bound("InflightConfig", "tenant_share_percent", 1, Some(100))
    },
    bound("InflightConfig", "wait_ms", 0, Some(60000)),
    Bound {
        between: true,
        ..bound("RouteConfig", "max_header_bytes", 1024, Some(1 << 20))
    },
    bound("RouteConfig", "max_body_bytes", 1, Some(32 << 20)),
    Bound {
        between: true,
        ..bound("TlsConfig", "https_port", 1, Some(65535))
    },
    Bound {
        between: true,
        ..bound("RedisConfig", "connect_timeout_ms", 1, Some(60_000))
    },
    Bound {
        between: true,
        ..bound("ApiConfig", "refresh_s", 10, Some(86_400))
    },
    Bound {
        between: true,
        ..bound("ApiConfig", "timeout_ms", 100, Some(300_000))
    },
    Bound {
        between: true,
        ..bound("RedisConfig", "command_timeout_ms", 1, Some(60_000))
    },
];

/// The bound of `def.field`.
fn bound_of(def: &str, field: &str) -> Bound {
    match BOUNDS.iter().find(|b| b.def == def && b.field == field) {
        Some(b) => *b,
        // Unreachable: every caller names an entry of BOUNDS (a unit test checks them all).
        None => bound("", "", 0, None),
    }
}

impl Errors {
    /// Checks `value` against the bound of `def.field`, reporting at `path`.
    fn bounded(&mut self, path: impl Into<String>, def: &str, field: &str, value: u64) {
        let b = bound_of(def, field);
        let message = match b.max {
            Some(max) if b.between && (value < b.min || value > max) => {
                format!("must be between {} and {max}, got {value}", b.min)
            }
            _ if value < b.min && b.min == 1 => "must be greater than 0".to_owned(),
            _ if value < b.min => format!("must be at least {}, got {value}", b.min),
            Some(max) if value > max => format!("must be at most {max}, got {value}"),
            _ => return,
        };
        self.push(path, message);
    }
}

/// `usize` as `u64` (saturating; never truncates on supported targets).
fn wide(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
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

/// Validates `config` and lowers it; on failure, every rule violation in document order.
pub(crate) fn lower(config: &Config) -> Result<Lowered, Vec<ValidationError>> {
    let mut errors = Errors::default();
    check_listen(&config.listen, &mut errors);
    let (api_hosts, trusted_proxies) = check_ingress(config, &mut errors);
    if config.state_dir.as_os_str().is_empty() {
        errors.push("state_dir", "must not be empty");
    }
    check_pool(&config.pool, &mut errors);
    let credentials: HashSet<&str> = config
        .credentials
        .iter()
        .map(|credential| credential.name.as_str())
        .collect();
    let tls = config
        .listen
        .ingress_tls
        .is_some()
        .then_some(config.tls.https_port);
    let tenants = check_tenants(&config.tenants, &credentials, tls, &mut errors);
    let vaults: HashSet<&str> = config
        .vaults
        .iter()
        .map(|vault| vault.name.as_str())
        .collect();
    check_credentials(&config.credentials, &vaults, &mut errors);
    check_vaults(&config.vaults, &mut errors);
    if let Some(redis) = &config.shared.redis {
        check_redis(redis, &mut errors);
    }
    let shutdown = &config.shutdown;
    errors.bounded(
        "shutdown.grace_period_s",
        "ShutdownConfig",
        "grace_period_s",
        shutdown.grace_period_s,
    );
    errors.bounded(
        "shutdown.drain_timeout_s",
        "ShutdownConfig",
        "drain_timeout_s",
        shutdown.drain_timeout_s,
    );
    let inflight = &config.inflight;
    errors.bounded(
        "inflight.budget_mb",
        "InflightConfig",
        "budget_mb",
        inflight.budget_mb,
    );
    errors.bounded(
        "inflight.tenant_share_percent",
        "InflightConfig",
        "tenant_share_percent",
        u64::from(inflight.tenant_share_percent),
    );
    errors.bounded(
        "inflight.wait_ms",
        "InflightConfig",
        "wait_ms",
        inflight.wait_ms,
    );
    if errors.0.is_empty() {
        let mut listeners = vec![config.listen.ingress, config.listen.admin];
        listeners.extend(config.listen.ingress_tls);
        Ok(Lowered {
            policy: Policy::new(tenants).with_ingress(api_hosts, trusted_proxies),
            listeners,
        })
    } else {
        Err(errors.0)
    }
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
    if let Some(tls) = listen.ingress_tls {
        for (field, other) in [("ingress", listen.ingress), ("admin", listen.admin)] {
            if listeners_conflict(tls, other) {
                errors.push(
                    "listen.ingress_tls",
                    format!("must not use the same address as listen.{field} ({other})"),
                );
            }
        }
    }
}

/// Checks `listen.api_hosts`, `listen.trusted_proxies` and `tls`, and lowers the first two.
fn check_ingress(config: &Config, errors: &mut Errors) -> (Vec<HostPattern>, Vec<ipnet::IpNet>) {
    let listen = &config.listen;
    let mut api_hosts = Vec::new();
    for (i, host) in listen.api_hosts.iter().enumerate() {
        match HostPattern::parse(host) {
            Ok(p) => api_hosts.push(p),
            Err(message) => errors.push(format!("listen.api_hosts[{i}]"), message),
        }
    }
    let mut proxies = Vec::new();
    for (i, text) in listen.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => proxies.push(net.trunc()),
            Err(_) => errors.push(
                format!("listen.trusted_proxies[{i}]"),
                format!("{text:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    let tls = &config.tls;
    errors.bounded(
        "tls.https_port",
        "TlsConfig",
        "https_port",
        u64::from(tls.https_port),
    );
    match (listen.ingress_tls.is_some(), tls.certificates.is_empty()) {
        (true, true) => errors.push(
            "tls.certificates",
            "listen.ingress_tls is set: at least one certificate is required",
        ),
        (false, false) => errors.push(
            "listen.ingress_tls",
            "tls.certificates are given but no TLS listener is set",
        ),
        _ => {}
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        for (field, path) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
            if path.as_os_str().is_empty() {
                errors.push(
                    format!("tls.certificates[{i}].{field}"),
                    "must not be empty",
                );
            }
        }
    }
    (api_hosts, proxies)
}

/// Checks `shared.redis`.
fn check_redis(redis: &crate::RedisConfig, errors: &mut Errors) {
    let at = "shared.redis";
    match url::Url::parse(&redis.url) {
        Err(e) => errors.push(
            format!("{at}.url"),
            format!("{:?} is not a URL: {e}", redis.url),
        ),
        Ok(u) if !matches!(u.scheme(), "redis" | "rediss") => errors.push(
            format!("{at}.url"),
            format!("scheme {:?}: use redis:// or rediss:// (TLS)", u.scheme()),
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            errors.push(format!("{at}.url"), "names no host")
        }
        Ok(u) if u.password().is_some() => errors.push(
            format!("{at}.url"),
            "holds a password: put it in shared.redis.password ({ env: NAME } or { file: PATH }) \
             so that it never appears in the configuration",
        ),
        Ok(u)
            if !u.path().trim_start_matches('/').is_empty()
                && u.path().trim_start_matches('/').parse::<u16>().is_err() =>
        {
            errors.push(
                format!("{at}.url"),
                "the path must be a database number, e.g. /0",
            )
        }
        Ok(_) => {}
    }
    match &redis.password {
        Some(TokenSource::Env { env }) => {
            check_env_name(&format!("{at}.password.env"), env, errors)
        }
        Some(TokenSource::File { file }) if file.as_os_str().is_empty() => {
            errors.push(format!("{at}.password.file"), "must not be empty")
        }
        _ => {}
    }
    let prefix = &redis.key_prefix;
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        errors.push(
            format!("{at}.key_prefix"),
            "must be 1 to 64 visible ASCII characters without `{` and `}`",
        );
    }
    for (field, value) in [
        ("connect_timeout_ms", redis.connect_timeout_ms),
        ("command_timeout_ms", redis.command_timeout_ms),
    ] {
        errors.bounded(format!("{at}.{field}"), "RedisConfig", field, value);
    }
}

/// A route or API host: a domain or `*.` wildcard, never an IP address.
fn route_host(host: &str) -> Result<HostPattern, String> {
    match HostPattern::parse(host)? {
        HostPattern::Ip(_) => Err(format!(
            "{host:?} is an IP address; routes and API hosts name domains (or `*.` + a domain)"
        )),
        p => Ok(p),
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
        errors.bounded("pool.threads", "PoolConfig", "threads", wide(threads));
    }
    if let Some(processes) = pool.processes {
        errors.bounded("pool.processes", "PoolConfig", "processes", wide(processes));
    }
    for (field, value) in [
        ("max_cached_workers", wide(pool.max_cached_workers)),
        ("idle_ttl_s", pool.idle_ttl_s),
        ("queue_capacity", wide(pool.queue_capacity)),
        ("grace_ms", pool.grace_ms),
        ("process_memory_mb", pool.process_memory_mb),
    ] {
        errors.bounded(format!("pool.{field}"), "PoolConfig", field, value);
    }
    let q = &pool.quarantine;
    for (field, value) in [
        ("after_kills", q.after_kills),
        ("window_s", q.window_s),
        ("hold_s", q.hold_s),
    ] {
        errors.bounded(
            format!("pool.quarantine.{field}"),
            "QuarantineConfig",
            field,
            value,
        );
    }
}

/// Checks and lowers the tenants (the result is only used when there are no errors).
fn check_tenants(
    tenants: &[TenantConfig],
    credentials: &HashSet<&str>,
    tls: Option<u32>,
    errors: &mut Errors,
) -> Vec<TenantPolicy> {
    let mut lowered = Vec::with_capacity(tenants.len());
    if tenants.is_empty() {
        errors.push("tenants", "at least one tenant is required");
        return lowered;
    }

    // First occurrence of each name / key digest, for duplicate detection.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], String> = HashMap::new();
    let empty_key = ApiKeyHash::of_key("");
    // Host pattern -> YAML path of its first claim, for uniqueness across tenants.
    let mut hosts: HashMap<String, String> = HashMap::new();

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
        let mut api_keys = Vec::with_capacity(tenant.api_keys.len());
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
                    api_keys.push(hash);
                }
            }
        }

        check_limits(&at, tenant, errors);
        let egress = check_egress(&format!("{at}.egress"), &tenant.egress, credentials, errors);
        let routes = check_routes(&at, tenant, tls, &mut hosts, errors);
        let apis = check_apis(&at, tenant, &egress, errors);
        lowered.push(TenantPolicy {
            name: TenantName::new(tenant.name.as_str()),
            api_keys,
            limits: tenant.limits.into(),
            egress,
            routes,
            apis,
        });
    }
    lowered
}

/// Checks and lowers a tenant's `apis`: names, exactly one source, URLs the tenant's egress
/// rules allow (the same plan the live path makes).
fn check_apis(
    tenant_at: &str,
    tenant: &TenantConfig,
    egress: &isogate_policy::EgressPolicy,
    errors: &mut Errors,
) -> Vec<isogate_policy::TenantApi> {
    use isogate_policy::{ApiSource, SpecSource, TenantApi};
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut lowered = Vec::new();
    for (a, api) in tenant.apis.iter().enumerate() {
        let at = format!("{tenant_at}.apis[{a}]");
        if let Err(message) = isogate_policy::apis::check_api_name(&api.name) {
            errors.push(format!("{at}.name"), message);
        }
        if let Some(first) = names.insert(&api.name, at.clone()) {
            errors.push(
                format!("{at}.name"),
                format!(
                    "duplicate API name {:?} (already used at {first})",
                    api.name
                ),
            );
        }
        errors.bounded(
            format!("{at}.refresh_s"),
            "ApiConfig",
            "refresh_s",
            api.refresh_s,
        );
        errors.bounded(
            format!("{at}.timeout_ms"),
            "ApiConfig",
            "timeout_ms",
            api.timeout_ms,
        );
        let mut allowed =
            |path: String, url: &str, method: &str| match isogate_policy::parse_target(url) {
                Err(e) => errors.push(path, format!("invalid URL {url:?}: {e}")),
                Ok(target) => {
                    if let isogate_policy::PlanVerdict::Deny(reason) =
                        egress.plan(method, &target).verdict
                    {
                        errors.push(
                            path,
                            format!(
                                "{method} {url} is not allowed by the tenant's egress rules \
                                 ({reason}): add a rule for host {:?}",
                                target.host.to_string()
                            ),
                        );
                    }
                }
            };
        let source = match (&api.mcp, &api.openapi) {
            (Some(mcp), None) => {
                allowed(format!("{at}.mcp.url"), &mcp.url, "POST");
                Some(ApiSource::Mcp {
                    url: mcp.url.clone(),
                })
            }
            (None, Some(openapi)) => {
                allowed(format!("{at}.openapi.base_url"), &openapi.base_url, "GET");
                let spec = if openapi.spec.starts_with("http://")
                    || openapi.spec.starts_with("https://")
                {
                    allowed(format!("{at}.openapi.spec"), &openapi.spec, "GET");
                    SpecSource::Url(openapi.spec.clone())
                } else if openapi.spec.is_empty() {
                    errors.push(format!("{at}.openapi.spec"), "must name a file or a URL");
                    SpecSource::File(String::new())
                } else {
                    SpecSource::File(openapi.spec.clone())
                };
                Some(ApiSource::OpenApi {
                    spec,
                    base_url: openapi.base_url.clone(),
                })
            }
            _ => {
                errors.push(at.clone(), "needs exactly one of `mcp` and `openapi`");
                None
            }
        };
        if let Some(source) = source {
            lowered.push(TenantApi {
                name: api.name.clone(),
                source,
                refresh: std::time::Duration::from_secs(api.refresh_s),
                timeout: std::time::Duration::from_millis(api.timeout_ms),
            });
        }
    }
    lowered
}

/// Checks and lowers a tenant's `routes`; `hosts` holds the hosts claimed so far (by any
/// tenant), so that a host claimed by two tenants is reported with both paths.
fn check_routes(
    tenant_at: &str,
    tenant: &TenantConfig,
    tls: Option<u32>,
    hosts: &mut HashMap<String, String>,
    errors: &mut Errors,
) -> Vec<PublicRoute> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut claimed: HashMap<(String, String), String> = HashMap::new();
    let mut lowered = Vec::new();
    for (r, route) in tenant.routes.iter().enumerate() {
        let at = format!("{tenant_at}.routes[{r}]");
        let host = match route_host(&route.host) {
            Ok(p) => Some(p),
            Err(message) => {
                errors.push(format!("{at}.host"), message);
                None
            }
        };
        if let Err(message) = check_path_prefix(&route.path_prefix) {
            errors.push(format!("{at}.path_prefix"), message);
        }
        if let Err(message) = check_worker_id(&route.worker) {
            errors.push(format!("{at}.worker"), message);
        }
        let name = route.effective_name();
        if route.name.is_some() && !is_valid_rule_name(&name) {
            errors.push(
                format!("{at}.name"),
                format!(
                    "invalid route name {name:?}: must be 1 to {MAX_RULE_NAME_LEN} visible \
                     ASCII characters"
                ),
            );
        }
        if let Some(first) = names.insert(name.clone(), at.clone()) {
            errors.push(
                format!("{at}.name"),
                format!("duplicate route name {name:?} (already used at {first}); name the routes"),
            );
        }
        check_rate_limit(
            &format!("{at}.client_rate_limit"),
            &route.client_rate_limit,
            errors,
        );
        errors.bounded(
            format!("{at}.max_header_bytes"),
            "RouteConfig",
            "max_header_bytes",
            route.max_header_bytes,
        );
        let max_body_bytes = match route.max_body_bytes {
            None => tenant.limits.max_body_bytes,
            Some(bytes) => {
                errors.bounded(
                    format!("{at}.max_body_bytes"),
                    "RouteConfig",
                    "max_body_bytes",
                    bytes,
                );
                let in_bounds = bound_of("RouteConfig", "max_body_bytes")
                    .max
                    .is_none_or(|max| bytes <= max);
                if in_bounds && bytes > tenant.limits.max_body_bytes {
                    errors.push(
                        format!("{at}.max_body_bytes"),
                        format!(
                            "must not exceed the tenant's limits.max_body_bytes ({bytes} > {})",
                            tenant.limits.max_body_bytes
                        ),
                    );
                }
                bytes
            }
        };
        let https_port = tls.unwrap_or(443);
        if route.https_redirect && tls.is_none() {
            errors.push(
                format!("{at}.https_redirect"),
                "needs a TLS listener (listen.ingress_tls)",
            );
        }
        let Some(host) = host else { continue };
        let key = host.to_string();
        if let Some(first) = claimed.insert((key.clone(), route.path_prefix.clone()), at.clone()) {
            errors.push(
                format!("{at}.path_prefix"),
                format!(
                    "host {key:?} with path prefix {:?} is already routed at {first}",
                    route.path_prefix
                ),
            );
        }
        match hosts.get(&key) {
            Some(first) if !first.starts_with(&format!("{tenant_at}.")) => errors.push(
                format!("{at}.host"),
                format!(
                    "host {key:?} is already claimed by another tenant at {first}; a host \
                     belongs to one tenant"
                ),
            ),
            Some(_) => {}
            None => {
                hosts.insert(key, format!("{at}.host"));
            }
        }
        lowered.push(PublicRoute {
            name,
            tenant: TenantName::new(tenant.name.as_str()),
            host,
            path_prefix: route.path_prefix.clone(),
            worker: route.worker.clone(),
            client_rate_limit: route.client_rate_limit.into(),
            max_header_bytes: route.max_header_bytes,
            max_body_bytes,
            https_redirect: route.https_redirect.then_some(https_port),
        });
    }
    lowered
}

fn check_limits(at: &str, tenant: &TenantConfig, errors: &mut Errors) {
    let l = &tenant.limits;
    let numeric: [(&str, u64); 10] = [
        ("cpu_ms", l.cpu_ms),
        ("memory_mb", l.memory_mb),
        ("wall_ms", l.wall_ms),
        ("subrequests", u64::from(l.subrequests)),
        ("max_concurrency", u64::from(l.max_concurrency)),
        (
            "max_concurrent_requests",
            u64::from(l.max_concurrent_requests),
        ),
        ("max_cached_workers", u64::from(l.max_cached_workers)),
        ("max_body_bytes", l.max_body_bytes),
        ("max_queue", u64::from(l.max_queue)),
        ("queue_timeout_ms", l.queue_timeout_ms),
    ];
    for (field, value) in numeric {
        errors.bounded(format!("{at}.limits.{field}"), "LimitsConfig", field, value);
    }
    if l.cpu_ms > l.wall_ms {
        errors.push(
            format!("{at}.limits.cpu_ms"),
            format!("must not exceed wall_ms ({} > {})", l.cpu_ms, l.wall_ms),
        );
    }
}

fn check_rate_limit(at: &str, limit: &RateLimitConfig, errors: &mut Errors) {
    for (field, value) in [("per_second", limit.per_second), ("burst", limit.burst)] {
        errors.bounded(
            format!("{at}.{field}"),
            "RateLimitConfig",
            field,
            u64::from(value),
        );
    }
}

/// Checks and lowers a tenant's `egress` section; `at` is its path.
fn check_egress(
    at: &str,
    egress: &EgressConfig,
    credentials: &HashSet<&str>,
    errors: &mut Errors,
) -> EgressPolicy {
    if let Some(limit) = &egress.rate_limit {
        check_rate_limit(&format!("{at}.rate_limit"), limit, errors);
    }
    let mut rules = Vec::with_capacity(egress.allow.len());

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

        let ports = match &rule.ports {
            None => DEFAULT_PORTS.to_vec(),
            Some(ports) => {
                if ports.is_empty() {
                    errors.push(
                        format!("{at}.ports"),
                        "must not be empty; omit `ports` to allow ports 80 and 443",
                    );
                }
                let before = errors.0.len();
                for (p, &port) in ports.iter().enumerate() {
                    let path = format!("{at}.ports[{p}]");
                    errors.bounded(path, "EgressRuleConfig", "ports", u64::from(port));
                }
                if errors.0.len() == before {
                    ports
                        .iter()
                        .filter_map(|&port| u16::try_from(port).ok())
                        .collect()
                } else {
                    Vec::new()
                }
            }
        };

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

        let paths = match &rule.paths {
            None => Ok(None),
            Some(paths) => {
                if paths.is_empty() {
                    errors.push(
                        format!("{at}.paths"),
                        "must not be empty; omit `paths` to allow every path",
                    );
                }
                let mut valid = true;
                for (g, glob) in paths.iter().enumerate() {
                    if let Err(message) = PathMatcher::check_pattern(glob) {
                        errors.push(format!("{at}.paths[{g}]"), message);
                        valid = false;
                    }
                }
                if valid {
                    PathMatcher::new(paths.iter().map(String::as_str))
                        .map(Some)
                        .map_err(|message| errors.push(format!("{at}.paths"), message))
                } else {
                    Err(())
                }
            }
        };

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

        if let (Ok(host), Ok(paths)) = (host, paths) {
            rules.push(EgressRule {
                name: rule.name.clone().unwrap_or_else(|| host.to_string()),
                host,
                ports,
                methods: rule
                    .methods
                    .as_ref()
                    .map(|methods| methods.iter().map(|m| m.to_ascii_uppercase()).collect()),
                paths,
                credential: rule.credential.clone(),
                rate_limit: rule.rate_limit.map(Into::into),
                allow_private: rule.allow_private,
            });
        }
    }
    EgressPolicy {
        mode: egress.mode.into(),
        rate_limit: egress.rate_limit.map(Into::into),
        rules,
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
        errors.bounded(
            format!("{at}.cache_ttl_s"),
            "VaultConfig",
            "cache_ttl_s",
            vault.cache_ttl_s,
        );
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
