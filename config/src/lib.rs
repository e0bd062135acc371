//! YAML configuration for isogate.
//!
//! This crate parses the gateway's YAML configuration, validates it strictly
//! and lowers it into the decision types of [`isogate_policy`].
//!
//! * **Strict parsing.** Every struct rejects unknown fields, and parse errors
//!   name the origin, the YAML path and the line/column of the problem, e.g.
//!   `isogate.yaml:12:17: tenants[0].limits.cpu_mss: unknown field ...`.
//! * **Complete validation.** [`Config::validate`] checks every rule and
//!   reports *all* violations at once, each with its YAML path.
//! * **Defaults.** Everything except `tenants` is optional; see the `Default`
//!   implementations of [`Listen`], [`PoolConfig`] and [`LimitsConfig`].
//! * **Egress.** Each tenant's `egress` section ([`EgressConfig`]) lowers
//!   into an [`isogate_policy::EgressPolicy`]; the top-level `credentials`
//!   ([`CredentialConfig`]) and `vaults` ([`VaultConfig`]) sections say
//!   where the secrets injected into outbound requests come from. Only
//!   references to secrets live in the configuration, never their values.
//! * **Schema.** All configuration types implement
//!   [`JsonSchema`]; see [`Config::json_schema`].
//!
//! ```
//! let config = isogate_config::Config::from_yaml_str(
//!     r#"
//! tenants:
//!   - name: demo
//!     api_keys:
//!       - sha256: "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
//! "#,
//!     "inline.yaml",
//! )?;
//! let policy = config.lower().expect("validated").policy;
//! assert_eq!(policy.authenticate("demo-key").map(|t| t.name.as_str()), Some("demo"));
//! # Ok::<(), isogate_config::ConfigError>(())
//! ```

mod egress;
mod error;
mod secrets;
mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use isogate_policy::{HostPattern, Policy, TenantLimits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use egress::{EgressConfig, EgressModeConfig, EgressRuleConfig, RateLimitConfig};
pub use error::{ConfigError, ValidationError};

pub use secrets::{
    CredentialConfig, Injection, SecretSource, TokenSource, VaultConfig, VaultKind, VaultRef,
    SECRET_PLACEHOLDER,
};

/// The built-in development configuration (see [`Config::embedded_default`]).
pub const EMBEDDED_DEFAULT_YAML: &str = include_str!("default.yaml");

/// Origin reported in errors about [`EMBEDDED_DEFAULT_YAML`].
const EMBEDDED_DEFAULT_ORIGIN: &str = "<embedded default.yaml>";

/// The root of the configuration document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening sockets.
    #[serde(default)]
    pub listen: Listen,
    /// Directory for persistent gateway state (deployed workers, metadata).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Isolate pool settings.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Tenants allowed to deploy and invoke workers. At least one is required.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Credentials that egress rules inject into outbound requests.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Secret stores that credentials read from.
    #[serde(default)]
    pub vaults: Vec<VaultConfig>,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The gateway-wide budget for body bytes held in flight.
    #[serde(default)]
    pub inflight: InflightConfig,
    /// TLS on the ingress (`listen.ingress_tls`): certificates chosen by SNI.
    #[serde(default)]
    pub tls: TlsConfig,
    /// State shared by replicas (`shared.redis`); without it, each replica keeps its own
    /// (stored Workers in SQLite under `state_dir`).
    #[serde(default)]
    pub shared: SharedConfig,
}

/// State shared by every replica of one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// A Redis (or Valkey) server that holds the stored Workers of every replica. Not
    /// reloadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

/// Where the shared Redis is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or, with TLS, `rediss://host:port/db`. A password does not go
    /// in the URL: use `password`.
    pub url: String,
    /// The password (`AUTH`), from an environment variable or a file of the gateway process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<TokenSource>,
    /// Prefix of every key and channel isogate uses (several gateways may share one Redis).
    /// Default `isogate:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// How long a connection attempt may take, in milliseconds. Default 1000.
    #[serde(default = "default_redis_connect_ms")]
    pub connect_timeout_ms: u64,
    /// How long one command may take, in milliseconds; past it the command fails (a PUT gets
    /// 503). Default 500.
    #[serde(default = "default_redis_command_ms")]
    pub command_timeout_ms: u64,
}

fn default_key_prefix() -> String {
    "isogate:".into()
}

fn default_redis_connect_ms() -> u64 {
    1000
}

fn default_redis_command_ms() -> u64 {
    500
}

/// TLS termination on `listen.ingress_tls`. Certificates are read at start, on SIGHUP and when
/// their files change; a set that fails to load keeps the last good one serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates (PEM chain and private key). For each handshake the one whose subject
    /// alternative names match the SNI name is chosen (exact names before wildcards); the first
    /// one serves clients that send no SNI or an unknown name.
    pub certificates: Vec<CertificateConfig>,
    /// The port clients reach the TLS listener on (behind a load balancer it may differ from
    /// `listen.ingress_tls`), for redirects from plain HTTP (1..=65535). Default 443.
    pub https_port: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificates: Vec::new(),
            https_port: 443,
        }
    }
}

/// One certificate: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate chain (leaf first), PEM.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_file: PathBuf,
}

/// The gateway-wide budget for body bytes held in flight (Worker request and response bodies,
/// outbound request bodies, upstream response bodies raw and decoded). A request that would
/// exceed it waits up to `wait_ms` for room, then fails with a clear error. Not reloadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InflightConfig {
    /// The budget in MiB (1..=65536). Default 256: well within the shipped Deployment's 1536 Mi.
    pub budget_mb: u64,
    /// The share of the budget one tenant may hold, in percent (1..=100). Default 50.
    pub tenant_share_percent: u8,
    /// Milliseconds a request waits for room before it fails (0..=60000). Default 1000.
    pub wait_ms: u64,
}

impl Default for InflightConfig {
    fn default() -> Self {
        InflightConfig {
            budget_mb: 256,
            tenant_share_percent: 50,
            wait_ms: 1000,
        }
    }
}

impl InflightConfig {
    /// The budget in bytes.
    pub fn budget_bytes(&self) -> usize {
        usize::try_from(self.budget_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// [`wait_ms`](Self::wait_ms) as a [`Duration`].
    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms)
    }
}

/// Graceful shutdown on SIGTERM: `/readyz` turns 503 at once and the gateway keeps serving for
/// `grace_period_s` (so load balancers stop routing to it), then refuses new requests and waits
/// up to `drain_timeout_s` for requests in flight to finish, then exits 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds of not-ready-but-serving before draining. Default 5.
    pub grace_period_s: u64,
    /// Seconds to wait for in-flight requests. Default 30.
    pub drain_timeout_s: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period_s: 5,
            drain_timeout_s: 30,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./isogate-state")
}

/// Listening sockets. Both default to loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Address of the public (tenant traffic) listener. Default `127.0.0.1:8080`.
    pub ingress: SocketAddr,
    /// Address of the admin listener (deployments, metrics). Default
    /// `127.0.0.1:9090`. Must differ from `ingress`.
    pub admin: SocketAddr,
    /// Address of the TLS ingress listener (same routes as `ingress`); needs
    /// `tls.certificates`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_tls: Option<SocketAddr>,
    /// Hosts that serve the tenant API (`/v1/…`, `/w/…`): domains, `*.` wildcards or IP
    /// addresses (for clients that call the gateway by address). Default
    /// (empty): any host that no route claims. When set, a host that is neither an API host nor
    /// claimed by a route gets 404. Reloadable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_hosts: Vec<String>,
    /// Proxies (IP addresses or CIDR ranges) in front of the gateway whose `X-Forwarded-For`,
    /// `-Proto` and `-Host` headers are kept and believed; from any other peer they are
    /// replaced. Default: none. Reloadable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            ingress: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            ingress_tls: None,
            api_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Listen {
    /// The settings that take effect only at start (sockets), without the reloadable ones.
    pub fn sockets(&self) -> (SocketAddr, SocketAddr, Option<SocketAddr>) {
        (self.ingress, self.admin, self.ingress_tls)
    }
}

/// Isolate pool settings, shared by all tenants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Number of isolate threads (1..=256). Defaults to the number of CPU
    /// cores; use [`Config::pool_threads`] to get the resolved value.
    pub threads: Option<usize>,
    /// Pre-initialised isolates kept ready for new workers. Default 8.
    pub warm_isolates: usize,
    /// Compiled workers kept in the cache across all tenants. Default 1000.
    pub max_cached_workers: usize,
    /// Seconds after which an unused cached worker is evicted. Default 300.
    pub idle_ttl_s: u64,
    /// Capacity of the bounded request queue of each isolate thread.
    /// Default 1024.
    pub queue_capacity: usize,
    /// Where isolates run: `process` (default; confined worker processes, the second wall) or
    /// `thread` (in the gateway process; weaker, for environments without seccomp).
    pub isolation: Isolation,
    /// Worker processes tenants are spread over (1..=64; `isolation: process`). Defaults to 2
    /// or the number of CPU cores, whichever is larger; use [`Config::pool_processes`]. Each
    /// runs `threads` isolate threads (a tenant runs in one of them); warm isolates and cached
    /// Workers are divided among them.
    pub processes: Option<usize>,
    /// How long past its `cpu_ms` or `wall_ms` an invocation may keep running (inside a native
    /// call QuickJS cannot interrupt) before its worker process is killed. Default 100.
    pub grace_ms: u64,
    /// Data-segment limit (RLIMIT_DATA) of each worker process, MiB (64..). Default 2048.
    pub process_memory_mb: u64,
    /// When a tenant is moved to the quarantine worker process.
    pub quarantine: QuarantineConfig,
}

/// Where isolates run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Confined worker processes (seccomp, Landlock, rlimits), supervised by the gateway.
    #[default]
    Process,
    /// Isolate threads inside the gateway process (no second wall).
    Thread,
}

/// Cordoning: a tenant whose invocations cost `after_kills` worker processes within
/// `window_s` runs in a dedicated quarantine worker until `hold_s` pass without another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Worker losses that quarantine a tenant. Default 3.
    pub after_kills: u64,
    /// The window the losses are counted in, seconds. Default 60.
    pub window_s: u64,
    /// Seconds without a loss before a quarantined tenant returns. Default 300.
    pub hold_s: u64,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            after_kills: 3,
            window_s: 60,
            hold_s: 300,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            threads: None,
            warm_isolates: 8,
            max_cached_workers: 1000,
            idle_ttl_s: 300,
            queue_capacity: 1024,
            isolation: Isolation::Process,
            processes: None,
            grace_ms: 100,
            process_memory_mb: 2048,
            quarantine: QuarantineConfig::default(),
        }
    }
}

impl PoolConfig {
    /// [`idle_ttl_s`](Self::idle_ttl_s) as a [`Duration`].
    pub fn idle_ttl(&self) -> Duration {
        Duration::from_secs(self.idle_ttl_s)
    }
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique tenant name: 1 to 63 characters of `a-z`, `0-9`, `_` and `-`,
    /// starting with a letter or digit.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// API keys that authenticate as this tenant. At least one is required.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Resource limits; every field is optional.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Which outbound requests the tenant's Workers may make. Without it,
    /// every outbound request is denied.
    #[serde(default)]
    pub egress: EgressConfig,
    /// Public routes: requests to these hosts (and path prefixes) go to the tenant's stored
    /// Workers without an API key, unchanged (all headers, `Authorization` and cookies
    /// included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Upstream APIs (MCP servers, OpenAPI documents) the tenant's code calls as
    /// `env.<name>.<tool>(args)`. Their hosts must be allowed by `egress`, whose credentials are
    /// attached to the calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<ApiConfig>,
}

/// One upstream API of a tenant: exactly one of `mcp` and `openapi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Its name in `env`: a JS identifier, unique within the tenant.
    pub name: String,
    /// An MCP server (Streamable HTTP transport).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpApiConfig>,
    /// An OpenAPI 3.x document; each operation is a tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiConfig>,
    /// Seconds between two fetches of the tool list (or spec). Default 300.
    #[serde(default = "default_api_refresh_s")]
    pub refresh_s: u64,
    /// Milliseconds allowed for one upstream exchange. Default 10000.
    #[serde(default = "default_api_timeout_ms")]
    pub timeout_ms: u64,
}

/// An MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpApiConfig {
    /// The server's endpoint, `http(s)://…`.
    pub url: String,
}

/// An OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiConfig {
    /// The document (JSON or YAML): a file path, or an `http(s)` URL fetched through the
    /// tenant's egress.
    pub spec: String,
    /// The URL the operations' paths are appended to, `http(s)://…`.
    pub base_url: String,
}

fn default_api_refresh_s() -> u64 {
    300
}

fn default_api_timeout_ms() -> u64 {
    10_000
}

/// One public route of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The host: a domain (`app.example.com`) or `*.` + a domain for its subdomains at any
    /// depth. A host belongs to one tenant. No scheme, port or path.
    pub host: String,
    /// Path prefix (segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`); the
    /// longest matching prefix of a host wins. Default `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// The id of the tenant's stored Worker that answers.
    pub worker: String,
    /// Name for metrics and logs, unique within the tenant. Default: host + path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Rate limit per client IP address (IPv6: per /64), GCRA. Default 50/s, burst 100.
    #[serde(default = "default_client_rate_limit")]
    pub client_rate_limit: RateLimitConfig,
    /// Largest request head (request line and headers), in bytes; more is answered 431.
    /// Default 32768.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u64,
    /// Largest request body, in bytes; at most the tenant's `limits.max_body_bytes`, which is
    /// the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// On the plain-HTTP listener, answer `308` to the same URL on HTTPS (`tls.https_port`)
    /// instead of running the Worker. Needs `listen.ingress_tls`. Default `false`.
    #[serde(default)]
    pub https_redirect: bool,
}

impl RouteConfig {
    /// The route's effective name: [`name`](Self::name), else host + path prefix.
    pub fn effective_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => {
                let host = HostPattern::parse(&self.host)
                    .map_or_else(|_| self.host.clone(), |p| p.to_string());
                format!("{host}{}", self.path_prefix)
            }
        }
    }
}

fn default_path_prefix() -> String {
    "/".into()
}

fn default_client_rate_limit() -> RateLimitConfig {
    RateLimitConfig {
        per_second: 50,
        burst: 100,
    }
}

fn default_max_header_bytes() -> u64 {
    32 << 10
}

/// One API key, configured by its digest only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// SHA-256 of the key as 64 hex characters, e.g. the output of
    /// `printf %s "$KEY" | sha256sum`.
    #[schemars(pattern(r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
}

/// Per-tenant resource limits. Every value must be greater than 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// CPU time per invocation, in milliseconds; at most `wall_ms`. Default 50.
    pub cpu_ms: u64,
    /// Isolate heap size, in MiB (at most 4096). Default 64.
    pub memory_mb: u64,
    /// Wall-clock time per invocation, in milliseconds. Default 30000.
    pub wall_ms: u64,
    /// Outbound `fetch` sub-requests per invocation. Default 50.
    pub subrequests: u32,
    /// Invocations that may run concurrently. Default 16.
    pub max_concurrency: u32,
    /// Requests one cached Worker (`get()`) serves at the same time in its isolate,
    /// interleaved at their await points like workerd; further requests to it wait for a
    /// turn. A limit breach by one discards the isolate and fails the others with
    /// `isolate_discarded`. 1 serves a Worker's requests one at a time. Default 32.
    pub max_concurrent_requests: u32,
    /// Compiled workers of this tenant kept in the cache. Default 100.
    pub max_cached_workers: u32,
    /// Maximum request body size, in bytes. Default 1048576 (1 MiB).
    pub max_body_bytes: u64,
    /// Requests that may wait for a concurrency slot. Default 64.
    pub max_queue: u32,
    /// How long a request may wait for a concurrency slot, in milliseconds.
    /// Default 5000.
    pub queue_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            cpu_ms: 50,
            memory_mb: 64,
            wall_ms: 30_000,
            subrequests: 50,
            max_concurrency: 16,
            max_concurrent_requests: 32,
            max_cached_workers: 100,
            max_body_bytes: 1_048_576,
            max_queue: 64,
            queue_timeout_ms: 5_000,
        }
    }
}

impl From<LimitsConfig> for TenantLimits {
    fn from(l: LimitsConfig) -> Self {
        TenantLimits {
            cpu_ms: l.cpu_ms,
            memory_mb: l.memory_mb,
            wall_ms: l.wall_ms,
            subrequests: l.subrequests,
            max_concurrency: l.max_concurrency,
            max_concurrent_requests: l.max_concurrent_requests,
            max_cached_workers: l.max_cached_workers,
            max_body_bytes: l.max_body_bytes,
            max_queue: l.max_queue,
            queue_timeout_ms: l.queue_timeout_ms,
        }
    }
}

/// A configuration lowered into what the gateway runs on, by [`Config::lower`].
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The tenants: keys, limits, egress policies.
    pub policy: Policy,
    /// The gateway's own listening sockets (`listen.ingress`, `listen.admin`,
    /// `listen.ingress_tls`), which no Worker may ever reach (see
    /// [`isogate_policy::SelfListeners`]).
    pub listeners: Vec<SocketAddr>,
}

impl Config {
    /// Parses and validates a YAML document.
    ///
    /// `origin` names the document in error messages (usually the file
    /// name). Structural problems (malformed YAML, unknown fields, wrong
    /// types) yield [`ConfigError::Parse`] with the YAML path and position;
    /// rule violations yield [`ConfigError::Invalid`] listing all of them.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`], as described above.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_lowered(text, origin).map(|(config, _)| config)
    }

    /// [`Config::from_yaml_str`], also returning the lowered form (validation and lowering are
    /// one pass, [`Config::lower`]).
    ///
    /// # Errors
    ///
    /// As [`Config::from_yaml_str`].
    pub fn from_yaml_str_lowered(
        text: &str,
        origin: &str,
    ) -> Result<(Config, Lowered), ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer)
            .map_err(|error| parse_error(origin, error))?;
        let lowered = config.lower().map_err(ConfigError::Invalid)?;
        Ok((config, lowered))
    }

    /// Reads, parses and validates a YAML configuration file. Errors name the
    /// file by its path as given.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Io`] if the file cannot be read, otherwise as
    /// [`Config::from_yaml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_lowered(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the lowered form: what `serve`, reload, `check` and
    /// `explain` use.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_lowered(path: &Path) -> Result<(Config, Lowered), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str_lowered(&text, &path.display().to_string())
    }

    /// The built-in development configuration ([`EMBEDDED_DEFAULT_YAML`]):
    /// loopback listeners on ports 8080 (ingress) and 9090 (admin), 4 warm
    /// isolates and a single tenant `dev` whose API key is `dev-key`.
    ///
    /// Not suitable for production, since the key is public.
    ///
    /// # Panics
    ///
    /// Never in practice: the embedded document is a compile-time constant
    /// whose validity is covered by a unit test.
    pub fn embedded_default() -> Config {
        match Self::from_yaml_str(EMBEDDED_DEFAULT_YAML, EMBEDDED_DEFAULT_ORIGIN) {
            Ok(config) => config,
            // Unreachable: the embedded document is a compile-time constant
            // covered by a unit test.
            Err(error) => panic!("embedded default configuration is invalid: {error}"),
        }
    }

    /// Checks every validation rule, returning [`ConfigError::Invalid`] with
    /// *all* violations if any rule fails.
    ///
    /// [`Config::from_yaml_str`] and [`Config::load`] already call this; call
    /// it again after modifying a configuration programmatically.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every violated rule, in document order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.lower().map(drop).map_err(ConfigError::Invalid)
    }

    /// Validates and lowers the configuration in one pass: the one fallible lowering used by
    /// `serve`, reload, `check` and `explain` (the JSON schema takes its numeric bounds from the
    /// same table, see [`Config::json_schema`]).
    ///
    /// # Errors
    ///
    /// Every violated rule, in document order, each naming its YAML path.
    pub fn lower(&self) -> Result<Lowered, Vec<ValidationError>> {
        validate::lower(self)
    }

    /// The number of isolate threads: `pool.threads` if set, otherwise the
    /// available parallelism of the machine (at least 1).
    pub fn pool_threads(&self) -> usize {
        self.pool.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The number of worker processes: `pool.processes` if set, otherwise 2 or the available
    /// parallelism, whichever is larger.
    pub fn pool_processes(&self) -> usize {
        self.pool.processes.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, std::num::NonZeroUsize::get)
                .max(2)
        })
    }

    /// The [`isogate_policy::Policy`] of [`Config::lower`].
    ///
    /// Meant for validated configurations (as returned by
    /// [`Config::from_yaml_str`] / [`Config::load`]); an invalid one lowers to
    /// the empty policy, in which no key authenticates (fail closed). Use
    /// [`Config::lower`] to see the errors.
    pub fn policy(&self) -> Policy {
        self.lower()
            .map(|lowered| lowered.policy)
            .unwrap_or_else(|_| Policy::new(Vec::new()))
    }

    /// Looks up a credential by name.
    pub fn credential(&self, name: &str) -> Option<&CredentialConfig> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// Looks up a vault by name.
    pub fn vault(&self, name: &str) -> Option<&VaultConfig> {
        self.vaults.iter().find(|v| v.name == name)
    }

    /// The JSON Schema of the configuration document. Numeric `minimum`/`maximum` come from
    /// the validator's bounds table, so the schema and [`Config::lower`] agree.
    pub fn json_schema() -> schemars::Schema {
        let mut schema = schemars::schema_for!(Config);
        for bound in validate::BOUNDS {
            let mut pointer = format!("/$defs/{}/properties/{}", bound.def, bound.field);
            if bound.items {
                pointer.push_str("/items");
            }
            if let Some(serde_json::Value::Object(property)) = schema.pointer_mut(&pointer) {
                property.insert("minimum".into(), bound.min.into());
                match bound.max {
                    Some(max) => property.insert("maximum".into(), max.into()),
                    None => property.remove("maximum"),
                };
            }
        }
        schema
    }
}

/// Converts a path-tracking deserialization error into [`ConfigError::Parse`].
fn parse_error(
    origin: &str,
    error: serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> ConfigError {
    let path = match error.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let inner = error.into_inner();
    let location = inner.location();
    let mut message = inner.to_string();

    // serde_yaml_ng renders errors as "[<its own path>: ]<message>[ at line L
    // column C]". Path and position are reported separately, so strip them.
    if let Some(location) = &location {
        let position = format!(" at line {} column {}", location.line(), location.column());
        if let Some(start) = message.find(&position) {
            message.replace_range(start..start + position.len(), "");
        }
    }
    // serde_yaml_ng's path is that of the node being deserialized, which for
    // e.g. unknown fields is the parent of our (more precise) path.
    if let Some((prefix, _)) = message.split_once(": ") {
        if is_path_prefix(prefix, &path) {
            let prefix_len = prefix.len() + ": ".len();
            message.replace_range(..prefix_len, "");
        }
    }

    ConfigError::Parse {
        origin: origin.to_owned(),
        path,
        message,
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
    }
}

/// Whether `prefix` is `path` itself or one of its ancestors
/// (`tenants[0]` is a path prefix of `tenants[0].name`, `tenant` is not).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    !prefix.is_empty()
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

#[cfg(test)]
mod tests;
