//! The `egress` section of a tenant: which outbound `fetch()` requests its
//! Workers may make.

use isogate_policy::egress::DEFAULT_PORTS;
use isogate_policy::{EgressMode, EgressPolicy, EgressRule, HostPattern, PathMatcher, RateLimit};
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
    #[schemars(range(min = 1))]
    pub per_second: u32,
    /// Requests that may be made at once after an idle period.
    #[schemars(range(min = 1))]
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
    /// Lets this rule reach private-use addresses (loopback, RFC 1918,
    /// link-local, CGNAT, IPv6 unique local). Cloud metadata and other
    /// special addresses stay blocked. Default `false`.
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

    /// Lowers this rule into its policy form; `None` if the host pattern or
    /// a path glob is invalid (never the case in a validated
    /// configuration). Invalid ports are dropped and methods upper-cased.
    pub fn to_policy(&self) -> Option<EgressRule> {
        let host = HostPattern::parse(&self.host).ok()?;
        let paths = match &self.paths {
            None => None,
            Some(globs) => Some(PathMatcher::new(globs.iter().map(String::as_str)).ok()?),
        };
        let ports = match &self.ports {
            None => DEFAULT_PORTS.to_vec(),
            Some(ports) => ports
                .iter()
                .filter_map(|&port| u16::try_from(port).ok().filter(|&p| p != 0))
                .collect(),
        };
        Some(EgressRule {
            name: self.name.clone().unwrap_or_else(|| host.to_string()),
            host,
            ports,
            methods: self
                .methods
                .as_ref()
                .map(|methods| methods.iter().map(|m| m.to_ascii_uppercase()).collect()),
            paths,
            credential: self.credential.clone(),
            rate_limit: self.rate_limit.map(Into::into),
            allow_private: self.allow_private,
        })
    }
}

impl EgressConfig {
    /// Lowers this section into an [`EgressPolicy`].
    ///
    /// Meant for validated configurations; on an unvalidated one, rules that
    /// cannot be lowered (see [`EgressRuleConfig::to_policy`]) are skipped,
    /// which denies more, never less.
    pub fn to_policy(&self) -> EgressPolicy {
        EgressPolicy {
            mode: self.mode.into(),
            rate_limit: self.rate_limit.map(Into::into),
            rules: self
                .allow
                .iter()
                .filter_map(EgressRuleConfig::to_policy)
                .collect(),
        }
    }
}
