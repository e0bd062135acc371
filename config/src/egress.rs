//! The `egress` section of a tenant: which outbound `fetch()` requests its
//! Workers may make.

use isogate_policy::{EgressMode, HostPattern, RateLimit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant's egress policy. Without it (or with an empty `allow` list),
/// every outbound request of the tenant's Workers is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// `enforce` (default): denied requests fail; `report`: denied requests
    /// are reported and sent anyway.
    pub mode: EgressModeConfig,
    /// Rate limit of all outbound requests of the tenant.
    pub rate_limit: Option<RateLimitConfig>,
    /// The allow-list; the first matching rule wins.
    pub allow: Vec<EgressRuleConfig>,
}

/// What happens to outbound requests no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressModeConfig {
    /// Denied requests fail.
    #[default]
    Enforce,
    /// Denied requests are reported (logged, counted) and sent anyway.
    Report,
}

impl From<EgressModeConfig> for EgressMode {
    fn from(mode: EgressModeConfig) -> Self {
        match mode {
            EgressModeConfig::Enforce => EgressMode::Enforce,
            EgressModeConfig::Report => EgressMode::Report,
        }
    }
}

/// A token-bucket rate limit. Both values must be greater than 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests that may be made at once after an idle period.
    pub burst: u32,
}

impl From<RateLimitConfig> for RateLimit {
    fn from(limit: RateLimitConfig) -> Self {
        RateLimit {
            per_second: limit.per_second,
            burst: limit.burst,
        }
    }
}

/// One rule of an egress allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRuleConfig {
    /// The host: a domain (`api.github.com`, IDNA allowed), `*.` + a domain
    /// for its strict subdomains at any depth (`*.example.com` matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`), an IPv4
    /// address or an IPv6 address (`"::1"` or `"[::1]"`). No scheme, port or
    /// path.
    pub host: String,
    /// Rule name for metrics and audit logs, unique within the tenant.
    /// Default: the normalised host pattern (e.g. `*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allowed ports (1..=65535). Default `[80, 443]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub ports: Option<Vec<u32>>,
    /// Allowed HTTP methods (case-insensitive). Default: all methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub methods: Option<Vec<String>>,
    /// Allowed paths as globs starting with `/`: `*` matches within one path
    /// segment, `**` across segments (`/repos/**`). Default: all paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub paths: Option<Vec<String>>,
    /// Name of a credential (top-level `credentials`) to inject into
    /// matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Rate limit of the requests matching this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Lets requests that fully match this rule (host, port, method, path)
    /// reach private-use addresses (loopback, RFC 1918, link-local, CGNAT,
    /// IPv6 unique local); a report-mode pass never does. Cloud metadata and
    /// credential endpoints, the gateway's own listeners and other special
    /// addresses stay blocked. Default `false`.
    #[serde(default)]
    pub allow_private: bool,
}

impl EgressRuleConfig {
    /// The rule's effective name: [`name`](Self::name) if set, otherwise the
    /// normalised host pattern, or the host text as written if it does not
    /// parse.
    pub fn effective_name(&self) -> String {
        match (&self.name, HostPattern::parse(&self.host)) {
            (Some(name), _) => name.clone(),
            (None, Ok(pattern)) => pattern.to_string(),
            (None, Err(_)) => self.host.clone(),
        }
    }
}
