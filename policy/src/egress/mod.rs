//! Egress policy: which outbound `fetch()` requests a tenant's Workers may make.
//!
//! Every outbound request of a Worker is checked in three pure steps, all in
//! this module:
//!
//! 1. [`parse_target`] parses the URL the Worker passed to `fetch()` the way a
//!    browser would (WHATWG URL parsing: IDNA, lowercasing, decimal/hex/octal
//!    IPv4 forms, dot segments) into a [`Target`], refusing schemes other than
//!    `http`/`https` and URLs with credentials.
//! 2. [`EgressPolicy::decide`] matches the request method and the [`Target`]
//!    against the tenant's allow-list of [`EgressRule`]s. The first rule that
//!    matches host, port, method and path wins; without one the request is
//!    denied with a [`DenyReason`] that names the host.
//! 3. [`EgressPolicy::plan`] wraps step 2 into one [`EgressPlan`]: verdict
//!    (allow, deny, report-mode would-deny), the fully matched rule, the
//!    credential name, the rate limiters and the `allow_private` scope.
//! 4. Before connecting, the caller checks the host name with [`check_name`]
//!    and every socket address it is about to connect to (after DNS
//!    resolution, and for IP-literal hosts) with [`check_address`] under the
//!    plan's [`AddressScope`]: cloud metadata / credential endpoints
//!    ([`METADATA_ENDPOINTS`], [`METADATA_NAMES`]) and the gateway's own
//!    listeners ([`SelfListeners`]) are never reachable; loopback, private,
//!    link-local and unique-local addresses only under `allow_private`; other
//!    special-purpose addresses never. This step is what stops SSRF through
//!    DNS names that resolve to internal addresses.
//!
//! Rate limits ([`RateLimit`]) and the [`EgressMode`] are carried here as
//! data; enforcing them (token buckets, logging in report mode) is up to the
//! gateway. Credentials are referenced by name only: this crate never sees a
//! secret.

mod address;
mod host;
mod metadata;
mod path;
mod plan;
mod scope;
mod target;

use std::fmt;

pub use address::{classify_ip, metadata_endpoint, BlockedRange};
pub use host::{HostPattern, TargetHost};
pub use metadata::{MetadataEndpoint, NameMatch, METADATA_ENDPOINTS, METADATA_NAMES};
pub use path::PathMatcher;
pub use plan::{EgressPlan, PlanVerdict, PlannedLimiters};
pub use scope::{
    check_address, check_name, AddressRefusal, AddressScope, Destination, SelfListeners,
};
pub use target::{parse_target, Target, TargetError};

/// Ports a rule allows when it does not list any: plain HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// What happens to a request that no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EgressMode {
    /// Denied requests fail (the default).
    #[default]
    Enforce,
    /// Denied requests are only reported (logged, counted) and then sent
    /// anyway. Meant for rolling out a new allow-list.
    Report,
}

impl EgressMode {
    /// The mode as written in the configuration: `"enforce"` or `"report"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EgressMode::Enforce => "enforce",
            EgressMode::Report => "report",
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token-bucket rate limit: `per_second` tokens are added every second, up
/// to `burst` tokens; each request takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Bucket size: requests that may be made at once after an idle period.
    pub burst: u32,
}

/// One entry of a tenant's egress allow-list.
///
/// A request matches the rule when its host matches [`host`](Self::host),
/// its port is one of [`ports`](Self::ports), and its method and path are
/// allowed by [`methods`](Self::methods) and [`paths`](Self::paths) (`None`
/// allows all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// The rule's name, used in metrics and audit logs. The configuration
    /// layer defaults it to the normalised host pattern text.
    pub name: String,
    /// Which hosts the rule applies to.
    pub host: HostPattern,
    /// Allowed ports. The configuration layer defaults this to
    /// [`DEFAULT_PORTS`]; an empty list matches no request.
    pub ports: Vec<u16>,
    /// Allowed request methods, upper-case (`None`: all methods). See
    /// [`EgressPolicy::decide`] for how request methods are compared.
    pub methods: Option<Vec<String>>,
    /// Allowed request paths (`None`: all paths).
    pub paths: Option<PathMatcher>,
    /// Name of the credential the gateway injects into requests matching
    /// this rule, if any.
    pub credential: Option<String>,
    /// Rate limit of the requests matching this rule, on top of the
    /// tenant-wide [`EgressPolicy::rate_limit`].
    pub rate_limit: Option<RateLimit>,
    /// Whether requests fully matching this rule may connect to private-use
    /// addresses (see [`check_address`] and [`EgressPlan::allow_private`]).
    pub allow_private: bool,
}

impl EgressRule {
    /// Why a request to a host this rule matches is not allowed by it, or
    /// `None` if the rule allows the request. `method` must be normalised.
    fn mismatch(&self, method: &str, target: &Target) -> Option<Mismatch> {
        if !self.ports.contains(&target.port) {
            return Some(Mismatch::Port);
        }
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == method) {
                return Some(Mismatch::Method);
            }
        }
        if let Some(paths) = &self.paths {
            if !paths.is_match(&target.path) {
                return Some(Mismatch::Path);
            }
        }
        None
    }
}

/// Which check of a host-matching rule failed.
#[derive(Debug, Clone, Copy)]
enum Mismatch {
    Port,
    Method,
    Path,
}

/// The egress policy of one tenant: an allow-list of rules.
///
/// The default policy is in [`EgressMode::Enforce`] mode without rules, i.e.
/// it denies every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// What happens to denied requests.
    pub mode: EgressMode,
    /// Rate limit of all outbound requests of the tenant, if any.
    pub rate_limit: Option<RateLimit>,
    /// The allow-list, in priority order.
    pub rules: Vec<EgressRule>,
}

impl EgressPolicy {
    /// Decides whether a request with `method` to `target` is allowed.
    ///
    /// The first rule (in order) whose host, port, method and path all match
    /// wins: [`Decision::Allow`] carries its index into
    /// [`rules`](Self::rules). Otherwise the request is denied:
    ///
    /// * if no rule matches the host, with [`DenyReason::NoRule`];
    /// * else with the reason of the *first* rule that matches the host,
    ///   checking the port first, then the method, then the path
    ///   ([`DenyReason::Port`], [`DenyReason::Method`], [`DenyReason::Path`]).
    ///
    /// The decision ignores [`mode`](Self::mode): in
    /// [`EgressMode::Report`] the caller reports a denial and proceeds.
    ///
    /// `method` is normalised like the Fetch standard does: `DELETE`, `GET`,
    /// `HEAD`, `OPTIONS`, `POST` and `PUT` are matched case-insensitively;
    /// any other method must match the (upper-case) rule method exactly,
    /// because that is what will be sent.
    pub fn decide(&self, method: &str, target: &Target) -> Decision {
        let method = normalize_method(method);
        let mut first_mismatch = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.host.matches(&target.host) {
                continue;
            }
            match rule.mismatch(method, target) {
                None => return Decision::Allow { rule: index },
                Some(mismatch) => {
                    first_mismatch.get_or_insert((index, mismatch));
                }
            }
        }
        let host = target.host.clone();
        Decision::Deny(match first_mismatch {
            None => DenyReason::NoRule { host },
            Some((rule, Mismatch::Port)) => DenyReason::Port {
                host,
                port: target.port,
                rule,
            },
            Some((rule, Mismatch::Method)) => DenyReason::Method {
                host,
                method: method.to_owned(),
                rule,
            },
            Some((rule, Mismatch::Path)) => DenyReason::Path {
                host,
                path: target.path.clone(),
                rule,
            },
        })
    }
}

/// Normalises a request method as the Fetch standard does: the six standard
/// methods are upper-cased, any other method is kept as is.
fn normalize_method(method: &str) -> &str {
    const NORMALIZED: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];
    NORMALIZED
        .into_iter()
        .find(|standard| standard.eq_ignore_ascii_case(method))
        .unwrap_or(method)
}

/// The outcome of [`EgressPolicy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request is allowed by the rule at this index of
    /// [`EgressPolicy::rules`].
    Allow {
        /// Index of the matching rule.
        rule: usize,
    },
    /// No rule allows the request.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the request is allowed.
    pub const fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why a request was denied.
///
/// Every variant carries the target host, so the [`Display`](fmt::Display)
/// text is a complete message that can be shown to the Worker, e.g.
/// `no egress rule allows host example.com` or
/// `method DELETE is not allowed for host api.github.com`. The variants other
/// than [`NoRule`](Self::NoRule) also carry the index of the rule whose
/// check failed: the first rule whose host pattern matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The tenant has no egress rules at all and enforces its (empty)
    /// allow-list: its Workers have no network access. Only
    /// [`EgressPolicy::plan`] gives this reason.
    NoRules {
        /// The request's host.
        host: TargetHost,
    },
    /// No rule matches the host.
    NoRule {
        /// The request's host.
        host: TargetHost,
    },
    /// A rule matches the host, but not the port.
    Port {
        /// The request's host.
        host: TargetHost,
        /// The request's port.
        port: u16,
        /// Index of the rule.
        rule: usize,
    },
    /// A rule matches host and port, but not the method.
    Method {
        /// The request's host.
        host: TargetHost,
        /// The request's (normalised) method.
        method: String,
        /// Index of the rule.
        rule: usize,
    },
    /// A rule matches host, port and method, but not the path.
    Path {
        /// The request's host.
        host: TargetHost,
        /// The request's path.
        path: String,
        /// Index of the rule.
        rule: usize,
    },
}

impl DenyReason {
    /// A short, stable identifier of the reason, suitable as a metrics label:
    /// `no_rules`, `no_rule`, `port`, `method` or `path`.
    pub const fn kind(&self) -> &'static str {
        match self {
            DenyReason::NoRules { .. } => "no_rules",
            DenyReason::NoRule { .. } => "no_rule",
            DenyReason::Port { .. } => "port",
            DenyReason::Method { .. } => "method",
            DenyReason::Path { .. } => "path",
        }
    }

    /// The host of the denied request.
    pub const fn host(&self) -> &TargetHost {
        match self {
            DenyReason::NoRules { host }
            | DenyReason::NoRule { host }
            | DenyReason::Port { host, .. }
            | DenyReason::Method { host, .. }
            | DenyReason::Path { host, .. } => host,
        }
    }

    /// Index of the first rule that matched the host but not the port,
    /// method or path (for diagnostics only); `None` for
    /// [`DenyReason::NoRule`] and [`DenyReason::NoRules`].
    pub const fn host_rule(&self) -> Option<usize> {
        match self {
            DenyReason::NoRules { .. } | DenyReason::NoRule { .. } => None,
            DenyReason::Port { rule, .. }
            | DenyReason::Method { rule, .. }
            | DenyReason::Path { rule, .. } => Some(*rule),
        }
    }
}

impl DenyReason {
    /// What the operator would have to allow for the request to pass (shown to the code that
    /// was refused, so an agent can say what to ask for). `rule_name` names rule indexes.
    pub fn hint(&self, rule_name: impl Fn(usize) -> String) -> String {
        match self {
            DenyReason::NoRules { host } | DenyReason::NoRule { host } => {
                format!("an operator must add an egress rule for host {host} to the tenant's egress.rules")
            }
            DenyReason::Port { port, rule, .. } => format!(
                "an operator must add port {port} to the ports of egress rule {:?}",
                rule_name(*rule)
            ),
            DenyReason::Method { method, rule, .. } => format!(
                "an operator must add method {method} to the methods of egress rule {:?}",
                rule_name(*rule)
            ),
            DenyReason::Path { path, rule, .. } => format!(
                "an operator must allow path {path} in egress rule {:?}",
                rule_name(*rule)
            ),
        }
    }

    /// Index of the rule that matched host **and** port but not the method or path; the only
    /// rule whose `allow_private` a report-mode pass may use ([`EgressPolicy::plan`]).
    pub const fn host_port_rule(&self) -> Option<usize> {
        match self {
            DenyReason::Method { rule, .. } | DenyReason::Path { rule, .. } => Some(*rule),
            _ => None,
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRules { .. } => f.write_str("the tenant has no egress rules"),
            DenyReason::NoRule { host } => write!(f, "no egress rule allows host {host}"),
            DenyReason::Port { host, port, .. } => {
                write!(f, "port {port} is not allowed for host {host}")
            }
            DenyReason::Method { host, method, .. } => {
                write!(f, "method {method} is not allowed for host {host}")
            }
            DenyReason::Path { host, path, .. } => {
                write!(f, "path {path} is not allowed for host {host}")
            }
        }
    }
}

impl std::error::Error for DenyReason {}

#[cfg(test)]
mod tests;
