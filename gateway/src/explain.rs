//! `isogate explain`: what the egress pipeline would do with one outbound `fetch()` of a tenant's
//! Worker, worked out from the configuration alone. Nothing is sent; the only I/O is the DNS
//! lookup of a domain host (the SSRF guard's input), and that is injectable for tests.
//!
//! explain = plan + resolve + render: the configuration is lowered exactly as `serve` lowers
//! it (`Config::lower`), the request is planned by the same pure `EgressPolicy::plan` the live
//! path uses (verdict, rule, credential, rate limiters, `allow_private` scope), and the host is
//! checked by the same `check_name` / `check_address` (under the plan's scope, with the
//! gateway's own listeners) that the guarded connector runs. No rule is restated here.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use isogate_config::{Config, Injection, ValidationError};
use isogate_policy::{
    check_address, check_name, classify_ip, parse_target, AddressRefusal, AddressScope,
    BlockedRange, DenyReason, PlanVerdict, RateLimit, SelfListeners, TargetError, TargetHost,
};
use serde::{Serialize, Serializer};

/// Why no explanation could be produced.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The configuration has no tenant of that name.
    #[error("unknown tenant `{name}`; the configuration defines: {}", known.join(", "))]
    UnknownTenant {
        /// The name asked for.
        name: String,
        /// The tenants the configuration defines, in document order.
        known: Vec<String>,
    },
    /// The method is not an HTTP token.
    #[error("invalid HTTP method `{0}`")]
    Method(String),
    /// The URL cannot be the target of a `fetch()`; the gateway would refuse it.
    #[error("{url}: {error}; the gateway would refuse this fetch")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        error: TargetError,
    },
    /// The configuration does not validate (the CLI loads a validated one, so only a
    /// programmatic caller can see this).
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
}

impl ExplainError {
    /// The CLI exit code: 2 for a URL the gateway would refuse (like any other refusal), 1 for
    /// bad input (unknown tenant, invalid method).
    pub fn exit_code(&self) -> u8 {
        match self {
            ExplainError::Url { .. } => 2,
            ExplainError::UnknownTenant { .. }
            | ExplainError::Method(_)
            | ExplainError::Invalid(_) => 1,
        }
    }
}

/// What the gateway would do with one outbound request. Serialises to the `--json` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The tenant whose policy was applied.
    pub tenant: String,
    /// The request method, as given.
    pub method: String,
    /// The normalised target.
    pub target: TargetReport,
    /// The policy decision.
    pub decision: DecisionReport,
    /// The credential that would be injected; `None` if none would be.
    pub credential: Option<CredentialReport>,
    /// The rate limiters the request would take a cell from.
    pub rate_limits: RateLimitsReport,
    /// The SSRF guard.
    pub ssrf: SsrfReport,
}

/// Where the request would go, after WHATWG URL parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    /// `http` or `https`.
    pub scheme: String,
    /// Normalised domain (lower-case, punycode) or IP address (`[..]` for IPv6).
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The path, percent-encoded, dot segments resolved.
    pub path: String,
    /// The query without `?`, if any.
    pub query: Option<String>,
}

/// The allow-list decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionReport {
    /// Whether a rule allows the request.
    pub allowed: bool,
    /// Name of the allowing rule (`None` when denied).
    pub rule: Option<String>,
    /// Why the request is denied (`None` when allowed).
    pub reason: Option<String>,
    /// The tenant's egress mode: `enforce` or `report`.
    pub mode: &'static str,
    /// What the gateway does: `allow`, `deny` (the fetch fails), or `report_deny` (report mode:
    /// let through, counted and logged as `report_deny`).
    pub outcome: Outcome,
    /// When denied by a rule that matches the host (port, method or path mismatch): that
    /// rule's name.
    pub host_rule: Option<String>,
}

/// What the gateway does after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed by a rule.
    Allow,
    /// Denied: the Worker's `fetch()` fails.
    Deny,
    /// Denied, but the tenant is in report mode: sent anyway (no credential, no rule rate
    /// limit) and counted as `report_deny`.
    ReportDeny,
}

/// A credential that would be injected: its name and where it goes, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialReport {
    /// The credential's name.
    pub name: String,
    /// Where the value goes; `None` if the credential is not defined (a validated configuration
    /// never has this).
    pub inject: Option<InjectReport>,
}

/// Where a credential value is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectReport {
    /// This request header.
    Header(String),
    /// This query parameter.
    Query(String),
}

/// The rate limits that apply: each is `None` when there is none or the request would not
/// reach that limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitsReport {
    /// The matching rule's limit.
    pub rule: Option<LimitReport>,
    /// The tenant-wide limit.
    pub tenant: Option<LimitReport>,
}

/// A token-bucket limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitReport {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

impl From<RateLimit> for LimitReport {
    fn from(l: RateLimit) -> Self {
        LimitReport {
            per_second: l.per_second,
            burst: l.burst,
        }
    }
}

/// The SSRF guard's view of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SsrfReport {
    /// The addresses that would be connected to (the IP literal, or what the name resolves to).
    pub addresses: Vec<AddressReport>,
    /// `pass`, `refused` (some address is blocked) or `unresolved` (the name does not resolve;
    /// the gateway fails closed).
    pub verdict: SsrfVerdict,
    /// Whether the plan opens the private-use ranges (only a request that fully matches a rule
    /// with `allow_private`).
    pub allow_private: bool,
    /// The resolver's error, when unresolved.
    pub error: Option<String>,
    /// Why the host name itself is refused (a metadata service name), before any lookup.
    pub name_refused: Option<String>,
}

/// One address and its classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressReport {
    /// The address.
    pub ip: IpAddr,
    /// The special-purpose range it belongs to (e.g. `loopback`, `cloud_metadata`); `None` for a
    /// public address.
    #[serde(serialize_with = "range_id")]
    pub range: Option<BlockedRange>,
    /// Whether the guard lets it through (public, or private-use with `allow_private`; never a
    /// metadata endpoint or one of the gateway's own listeners).
    pub allowed: bool,
    /// Why it is refused, as the stable label (`loopback`, `cloud_metadata`, `self_listener`,
    /// ...); `None` when allowed.
    #[serde(serialize_with = "refusal_id")]
    pub refusal: Option<AddressRefusal>,
}

fn refusal_id<S: Serializer>(refusal: &Option<AddressRefusal>, s: S) -> Result<S::Ok, S::Error> {
    match refusal {
        Some(r) => s.serialize_str(r.as_str()),
        None => s.serialize_none(),
    }
}

fn range_id<S: Serializer>(range: &Option<BlockedRange>, s: S) -> Result<S::Ok, S::Error> {
    match range {
        Some(r) => s.serialize_str(r.as_str()),
        None => s.serialize_none(),
    }
}

/// The SSRF guard's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SsrfVerdict {
    /// Every address may be connected to.
    Pass,
    /// At least one address is blocked: the gateway refuses the whole name.
    Refused,
    /// The name did not resolve (or to nothing): the gateway refuses it.
    Unresolved,
}

impl Explanation {
    /// Whether the gateway would send the request under an allowing rule: allowed and through
    /// the SSRF guard. (A report-mode denial is not: the allow-list does not cover it.)
    pub fn passes(&self) -> bool {
        self.decision.allowed && self.ssrf.verdict == SsrfVerdict::Pass
    }

    /// The CLI exit code: 0 if [`passes`](Self::passes), else 2.
    pub fn exit_code(&self) -> u8 {
        if self.passes() {
            0
        } else {
            2
        }
    }
}

/// Resolves a host name with the system resolver (`getaddrinfo`), as the gateway's guarded
/// resolver does.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
    Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Explains `method url` for `tenant` under `config`, resolving names with the system resolver
/// and refusing the gateway's own listeners as `serve` would (configured addresses, and for a
/// wildcard bind the host's interface addresses).
///
/// # Errors
///
/// See [`ExplainError`].
pub fn explain(
    config: &Config,
    tenant: &str,
    method: &str,
    url: &str,
) -> Result<Explanation, ExplainError> {
    let lowered = config.lower().map_err(ExplainError::Invalid)?;
    let listeners = crate::server::self_listeners(&lowered.listeners);
    explain_lowered(
        config,
        &lowered,
        tenant,
        method,
        url,
        &listeners,
        system_resolve,
    )
}

/// [`explain`] with a custom resolver (`host`, `port`) → addresses; the gateway's listeners are
/// the configured socket addresses only.
///
/// # Errors
///
/// See [`ExplainError`].
pub fn explain_with(
    config: &Config,
    tenant: &str,
    method: &str,
    url: &str,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<IpAddr>>,
) -> Result<Explanation, ExplainError> {
    let lowered = config.lower().map_err(ExplainError::Invalid)?;
    let listeners = SelfListeners::new(lowered.listeners.iter().copied(), []);
    explain_lowered(config, &lowered, tenant, method, url, &listeners, resolve)
}

fn explain_lowered(
    config: &Config,
    lowered: &isogate_config::Lowered,
    tenant: &str,
    method: &str,
    url: &str,
    listeners: &SelfListeners,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<IpAddr>>,
) -> Result<Explanation, ExplainError> {
    let Some(tenant_policy) = lowered.policy.tenant(tenant) else {
        return Err(ExplainError::UnknownTenant {
            name: tenant.to_owned(),
            known: config.tenants.iter().map(|t| t.name.clone()).collect(),
        });
    };
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(ExplainError::Method(method.to_owned()));
    }
    let target = parse_target(url).map_err(|error| ExplainError::Url {
        url: url.to_owned(),
        error,
    })?;
    let egress = &tenant_policy.egress;

    // Plan: the same pure function the live path runs.
    let plan = egress.plan(method, &target);
    let reason = plan.verdict.reason();
    let decision = DecisionReport {
        allowed: plan.verdict == PlanVerdict::Allow,
        rule: plan.rule(egress).map(|r| r.name.clone()),
        reason: reason.map(|r| match r {
            DenyReason::NoRules { .. } => {
                format!("{} ({r})", isogate_pool::NETWORK_DISABLED)
            }
            r => r.to_string(),
        }),
        mode: egress.mode.as_str(),
        outcome: match plan.verdict {
            PlanVerdict::Allow => Outcome::Allow,
            PlanVerdict::Deny(_) => Outcome::Deny,
            PlanVerdict::ReportDeny(_) => Outcome::ReportDeny,
        },
        host_rule: reason
            .and_then(DenyReason::host_rule)
            .and_then(|i| egress.rules.get(i))
            .map(|r| r.name.clone()),
    };
    let credential = plan.credential.as_deref().map(|name| CredentialReport {
        name: name.to_owned(),
        inject: config.credential(name).map(|c| match &c.inject {
            Injection::Header { header, .. } => InjectReport::Header(header.clone()),
            Injection::Query { query, .. } => InjectReport::Query(query.clone()),
        }),
    });
    let rate_limits = RateLimitsReport {
        rule: plan
            .limiters
            .rule
            .and_then(|i| egress.rules.get(i))
            .and_then(|r| r.rate_limit)
            .map(LimitReport::from),
        tenant: egress
            .rate_limit
            .filter(|_| plan.limiters.tenant)
            .map(LimitReport::from),
    };

    // Resolve + the one address rule, under the plan's scope.
    let ssrf = guard(&target.host, target.port, &plan.scope(listeners), resolve);

    Ok(Explanation {
        tenant: tenant.to_owned(),
        method: method.to_owned(),
        target: TargetReport {
            scheme: target.scheme.clone(),
            host: target.host.to_string(),
            port: target.port,
            path: target.path.clone(),
            query: target.query.clone(),
        },
        decision,
        credential,
        rate_limits,
        ssrf,
    })
}

/// The SSRF guard: the name rule, then the address rule on the IP literal or on every address
/// the name resolves to (each with the request's port).
fn guard(
    host: &TargetHost,
    port: u16,
    scope: &AddressScope,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<IpAddr>>,
) -> SsrfReport {
    let mut name_refused = None;
    let (ips, error) = match host {
        TargetHost::Ip(ip) => (vec![*ip], None),
        TargetHost::Domain(name) => match check_name(name) {
            Err(refusal) => {
                name_refused = Some(refusal.to_string());
                (Vec::new(), None)
            }
            Ok(()) => match resolve(name, port) {
                Ok(ips) if ips.is_empty() => (ips, Some(format!("{name} resolves to no address"))),
                Ok(ips) => (ips, None),
                Err(e) => (Vec::new(), Some(format!("{name} does not resolve: {e}"))),
            },
        },
    };
    let mut addresses: Vec<AddressReport> = Vec::with_capacity(ips.len());
    for ip in ips {
        if addresses.iter().any(|a| a.ip == ip) {
            continue;
        }
        let refusal = check_address(SocketAddr::new(ip, port), scope).err();
        addresses.push(AddressReport {
            ip,
            range: classify_ip(ip),
            allowed: refusal.is_none(),
            refusal,
        });
    }
    let verdict = if name_refused.is_some() {
        SsrfVerdict::Refused
    } else if error.is_some() {
        SsrfVerdict::Unresolved
    } else if addresses.iter().all(|a| a.allowed) {
        SsrfVerdict::Pass
    } else {
        SsrfVerdict::Refused
    };
    SsrfReport {
        addresses,
        verdict,
        allow_private: scope.allow_private,
        error,
        name_refused,
    }
}

fn limit_text(limit: Option<LimitReport>) -> String {
    match limit {
        Some(l) => format!("{}/s, burst {}", l.per_second, l.burst),
        None => "none".to_owned(),
    }
}

/// The human-readable report.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.target;
        let d = &self.decision;
        writeln!(f, "tenant:      {}", self.tenant)?;
        writeln!(
            f,
            "request:     {} {}://{}:{}{}",
            self.method, t.scheme, t.host, t.port, t.path
        )?;
        writeln!(f, "target:")?;
        writeln!(f, "  scheme:    {}", t.scheme)?;
        writeln!(f, "  host:      {}", t.host)?;
        writeln!(f, "  port:      {}", t.port)?;
        writeln!(f, "  path:      {}", t.path)?;
        writeln!(f, "  query:     {}", t.query.as_deref().unwrap_or("(none)"))?;

        match d.outcome {
            Outcome::Allow => writeln!(
                f,
                "decision:    allow, rule `{}` (mode {})",
                d.rule.as_deref().unwrap_or("?"),
                d.mode
            )?,
            Outcome::Deny | Outcome::ReportDeny => {
                writeln!(
                    f,
                    "decision:    deny: {} (mode {})",
                    d.reason.as_deref().unwrap_or("?"),
                    d.mode
                )?;
                if let Some(rule) = &d.host_rule {
                    writeln!(
                        f,
                        "             rule `{rule}` matches the host but not the request"
                    )?;
                }
                if d.outcome == Outcome::ReportDeny {
                    writeln!(
                        f,
                        "             report mode: it would be let through (without credential \
                         or rule rate limit) and counted as report_deny"
                    )?;
                } else {
                    writeln!(
                        f,
                        "             the Worker's fetch() would fail with a TypeError"
                    )?;
                }
            }
        }

        match &self.credential {
            None => writeln!(f, "credential:  none")?,
            Some(c) => {
                let place = match &c.inject {
                    Some(InjectReport::Header(h)) => format!("header `{h}`"),
                    Some(InjectReport::Query(q)) => format!("query parameter `{q}`"),
                    None => "(not defined in `credentials`)".to_owned(),
                };
                writeln!(f, "credential:  {} -> {place}", c.name)?;
            }
        }

        writeln!(f, "rate limits:")?;
        writeln!(f, "  rule:      {}", limit_text(self.rate_limits.rule))?;
        writeln!(f, "  tenant:    {}", limit_text(self.rate_limits.tenant))?;

        let s = &self.ssrf;
        write!(f, "ssrf guard:  allow_private: {}", s.allow_private)?;
        if d.outcome == Outcome::Deny {
            write!(f, " (not reached: the request is denied)")?;
        }
        writeln!(f)?;
        if let Some(why) = &s.name_refused {
            writeln!(f, "  {:<39} {why} (blocked, never reachable)", t.host)?;
        }
        for a in &s.addresses {
            let class = match (a.range, &a.refusal) {
                (None, None) => "public".to_owned(),
                (Some(r), None) => format!("{r} (allowed by allow_private)"),
                (_, Some(AddressRefusal::Range(r))) => format!("{r} (blocked)"),
                (_, Some(AddressRefusal::Metadata(endpoint))) => format!(
                    "{} ({}) (blocked, {})",
                    BlockedRange::CloudMetadata,
                    endpoint.service,
                    if s.allow_private {
                        "allow_private never opens it"
                    } else {
                        "never reachable"
                    }
                ),
                (_, Some(refusal)) => format!("{refusal} (blocked, never reachable)"),
            };
            writeln!(f, "  {:<39} {class}", a.ip)?;
        }
        match s.verdict {
            SsrfVerdict::Pass => writeln!(f, "  verdict:   pass")?,
            SsrfVerdict::Refused => writeln!(f, "  verdict:   refused")?,
            SsrfVerdict::Unresolved => writeln!(
                f,
                "  verdict:   unresolved: {}{}",
                s.error.as_deref().unwrap_or("no address"),
                if d.outcome == Outcome::Deny {
                    ""
                } else {
                    " (the gateway would refuse the fetch)"
                }
            )?,
        }

        let result = match (d.outcome, s.verdict) {
            (Outcome::Deny, _) => "denied",
            (_, SsrfVerdict::Refused) => "refused by the SSRF guard",
            (_, SsrfVerdict::Unresolved) => "refused: the host does not resolve",
            (Outcome::ReportDeny, SsrfVerdict::Pass) => {
                "sent anyway (report mode), counted as report_deny; not covered by the allow-list"
            }
            (Outcome::Allow, SsrfVerdict::Pass) => "would be sent",
        };
        writeln!(f, "result:      {result} (exit {})", self.exit_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const CONFIG: &str = r#"
tenants:
  - name: demo
    api_keys:
      - sha256: "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
    egress:
      rate_limit: { per_second: 50, burst: 100 }
      allow:
        - host: api.example.com
          methods: [GET]
          credential: tok
          rate_limit: { per_second: 5, burst: 10 }
        - host: internal.example.net
          allow_private: true
          credential: q
        - host: 169.254.169.254
          allow_private: true
        - host: 169.254.170.2
          allow_private: true
        - host: metadata.google.internal
          allow_private: true
        - host: 127.0.0.1
          ports: [9090, 20402]
          allow_private: true
  - name: rollout
    api_keys:
      - sha256: "d48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
    egress:
      mode: report
      rate_limit: { per_second: 7, burst: 8 }
      allow:
        - host: api.example.com
          methods: [GET]
          credential: tok
          rate_limit: { per_second: 5, burst: 10 }
          allow_private: true
  - name: offline
    api_keys:
      - sha256: "e48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
credentials:
  - name: tok
    source: { env: TOK }
    inject: { header: Authorization, value: "Bearer ${secret}" }
  - name: q
    source: { env: Q }
    inject: { query: api_key, value: "${secret}" }
"#;

    fn config() -> Config {
        Config::from_yaml_str(CONFIG, "test.yaml").unwrap()
    }

    fn public(_: &str, _: u16) -> io::Result<Vec<IpAddr>> {
        Ok(vec![IpAddr::V4(Ipv4Addr::new(140, 82, 112, 5))])
    }

    /// A resolver for targets that must be decided without a lookup (IP literals, metadata
    /// names): calling it fails the test.
    fn never_resolved(host: &str, _: u16) -> io::Result<Vec<IpAddr>> {
        panic!("{host} must not be resolved")
    }

    fn loopback(_: &str, _: u16) -> io::Result<Vec<IpAddr>> {
        Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1".parse().unwrap(),
        ])
    }

    fn failing(_: &str, _: u16) -> io::Result<Vec<IpAddr>> {
        Err(io::Error::other("no such host"))
    }

    #[test]
    fn allow_with_credential_and_rate_limits() {
        let e = explain_with(
            &config(),
            "demo",
            "get",
            "HTTPS://API.example.com/a/../b?x=1",
            public,
        )
        .unwrap();
        assert!(e.passes());
        assert_eq!(e.exit_code(), 0);
        assert_eq!(e.target.host, "api.example.com");
        assert_eq!(e.target.path, "/b");
        assert_eq!(e.target.query.as_deref(), Some("x=1"));
        assert_eq!(e.decision.rule.as_deref(), Some("api.example.com"));
        assert_eq!(
            e.credential.as_ref().unwrap().inject,
            Some(InjectReport::Header("Authorization".into()))
        );
        assert_eq!(e.rate_limits.rule.unwrap().per_second, 5);
        assert_eq!(e.rate_limits.tenant.unwrap().burst, 100);
        let text = e.to_string();
        assert!(text.contains("allow, rule `api.example.com`"), "{text}");
        assert!(text.contains("tok -> header `Authorization`"), "{text}");
        assert!(text.contains("140.82.112.5"), "{text}");
        assert!(!text.contains("Bearer"), "{text}");
    }

    #[test]
    fn json_shape() {
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "https://internal.example.net/x",
            loopback,
        )
        .unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["target"]["scheme"], "https");
        assert_eq!(v["target"]["host"], "internal.example.net");
        assert_eq!(v["target"]["port"], 443);
        assert_eq!(v["target"]["path"], "/x");
        assert_eq!(v["decision"]["allowed"], true);
        assert_eq!(v["decision"]["rule"], "internal.example.net");
        assert!(v["decision"]["reason"].is_null());
        assert_eq!(v["decision"]["mode"], "enforce");
        assert_eq!(v["credential"]["name"], "q");
        assert_eq!(v["credential"]["inject"]["query"], "api_key");
        assert!(v["rate_limits"]["rule"].is_null());
        assert_eq!(v["rate_limits"]["tenant"]["per_second"], 50);
        assert_eq!(v["rate_limits"]["tenant"]["burst"], 100);
        assert_eq!(v["ssrf"]["verdict"], "pass");
        assert_eq!(v["ssrf"]["allow_private"], true);
        assert_eq!(v["ssrf"]["addresses"][0]["ip"], "127.0.0.1");
        assert_eq!(v["ssrf"]["addresses"][0]["range"], "loopback");
        assert_eq!(v["ssrf"]["addresses"][1]["ip"], "::1");

        let e = explain_with(&config(), "demo", "GET", "https://nowhere.test/", public).unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["decision"]["allowed"], false);
        assert!(v["decision"]["rule"].is_null());
        assert!(v["credential"].is_null());
        assert_eq!(
            v["decision"]["reason"],
            "no egress rule allows host nowhere.test"
        );
        assert_eq!(v["ssrf"]["addresses"][0]["range"], serde_json::Value::Null);
    }

    #[test]
    fn report_mode_is_let_through_and_counted_as_report_deny() {
        let e = explain_with(
            &config(),
            "rollout",
            "DELETE",
            "https://api.example.com/x",
            public,
        )
        .unwrap();
        assert!(!e.decision.allowed);
        assert_eq!(e.decision.outcome, Outcome::ReportDeny);
        assert_eq!(e.decision.mode, "report");
        assert_eq!(e.decision.host_rule.as_deref(), Some("api.example.com"));
        // No credential and no rule limiter for a report-mode pass; the tenant limiter applies.
        assert_eq!(e.credential, None);
        assert_eq!(e.rate_limits.rule, None);
        assert_eq!(e.rate_limits.tenant.unwrap().per_second, 7);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Pass);
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("method DELETE is not allowed for host api.example.com (mode report)"),
            "{text}"
        );
        assert!(
            text.contains("it would be let through (without credential or rule rate limit) and counted as report_deny"),
            "{text}"
        );
        assert!(
            text.contains("result:      sent anyway (report mode)"),
            "{text}"
        );
        assert!(text.contains("credential:  none"), "{text}");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["decision"]["outcome"], "report_deny");
    }

    /// Defect 8: the host-matching rule's `allow_private` does not carry over to a report-mode
    /// request on another port; on the rule's host and port (another method) it does.
    #[test]
    fn report_mode_opens_private_addresses_only_on_the_rules_port() {
        let e = explain_with(
            &config(),
            "rollout",
            "DELETE",
            "https://api.example.com/x",
            loopback,
        )
        .unwrap();
        assert_eq!(e.decision.outcome, Outcome::ReportDeny);
        assert!(e.ssrf.allow_private);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Pass);
        let e = explain_with(
            &config(),
            "rollout",
            "GET",
            "https://api.example.com:8443/x",
            loopback,
        )
        .unwrap();
        assert_eq!(e.decision.outcome, Outcome::ReportDeny);
        assert!(!e.ssrf.allow_private);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        let text = e.to_string();
        assert!(text.contains("allow_private: false"), "{text}");
        assert!(text.contains("loopback address (blocked)"), "{text}");
        assert!(text.contains("refused by the SSRF guard"), "{text}");
        // The same rule does open loopback to a request it allows.
        let e = explain_with(
            &config(),
            "rollout",
            "GET",
            "https://api.example.com/x",
            loopback,
        )
        .unwrap();
        assert!(e.ssrf.allow_private);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Pass);
    }

    #[test]
    fn credential_endpoints_are_refused_under_allow_private() {
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "http://169.254.170.2/v2/credentials/x",
            never_resolved,
        )
        .unwrap();
        assert!(e.decision.allowed);
        assert!(e.ssrf.allow_private);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        assert_eq!(
            e.ssrf.addresses[0].refusal.map(|r| r.as_str()),
            Some("cloud_metadata")
        );
        let text = e.to_string();
        assert!(text.contains("AWS ECS task credentials"), "{text}");
        assert!(text.contains("allow_private never opens it"), "{text}");

        // By name, before any lookup.
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "http://metadata.google.internal/computeMetadata/v1/",
            never_resolved,
        )
        .unwrap();
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        assert!(e.ssrf.addresses.is_empty());
        let text = e.to_string();
        assert!(text.contains("GCP metadata server"), "{text}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn the_gateways_own_listeners_are_refused() {
        // The default admin listener is 127.0.0.1:9090; a rule allowing it changes nothing.
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "http://127.0.0.1:9090/metrics",
            public,
        )
        .unwrap();
        assert!(e.decision.allowed);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        assert_eq!(
            e.ssrf.addresses[0].refusal.map(|r| r.as_str()),
            Some("self_listener")
        );
        assert!(e
            .to_string()
            .contains("the gateway's own listener 127.0.0.1:9090"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["ssrf"]["addresses"][0]["refusal"], "self_listener");
        // Another port under the same rule passes.
        let e = explain_with(&config(), "demo", "GET", "http://127.0.0.1:20402/", public).unwrap();
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Pass);
    }

    #[test]
    fn enforce_denial_takes_no_limiter() {
        let e = explain_with(
            &config(),
            "demo",
            "POST",
            "https://api.example.com/",
            public,
        )
        .unwrap();
        assert_eq!(e.decision.outcome, Outcome::Deny);
        assert_eq!(e.rate_limits.tenant, None);
        assert!(e.to_string().contains("fetch() would fail"));
    }

    #[test]
    fn cloud_metadata_is_refused_even_with_allow_private() {
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "http://169.254.169.254/latest/meta-data/",
            never_resolved,
        )
        .unwrap();
        assert!(e.decision.allowed);
        assert!(e.ssrf.allow_private);
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        assert_eq!(e.ssrf.addresses[0].range, Some(BlockedRange::CloudMetadata));
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cloud metadata address"));
    }

    #[test]
    fn private_addresses_are_refused_without_allow_private() {
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "https://api.example.com/",
            loopback,
        )
        .unwrap();
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Refused);
        assert!(e.to_string().contains("loopback address (blocked)"));
    }

    #[test]
    fn resolution_failure_is_unresolved() {
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "https://api.example.com/",
            failing,
        )
        .unwrap();
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Unresolved);
        assert!(e.ssrf.addresses.is_empty());
        assert!(e.ssrf.error.as_deref().unwrap().contains("no such host"));
        assert_eq!(e.exit_code(), 2);
        let e = explain_with(
            &config(),
            "demo",
            "GET",
            "https://api.example.com/",
            |_: &str, _: u16| Ok(Vec::new()),
        )
        .unwrap();
        assert_eq!(e.ssrf.verdict, SsrfVerdict::Unresolved);
    }

    #[test]
    fn tenant_without_rules_has_network_disabled() {
        let e = explain_with(
            &config(),
            "offline",
            "GET",
            "https://api.example.com/",
            public,
        )
        .unwrap();
        assert!(e
            .decision
            .reason
            .as_deref()
            .unwrap()
            .contains("no egress rules"));
    }

    #[test]
    fn errors() {
        match explain_with(&config(), "nobody", "GET", "https://a.test/", public) {
            Err(e @ ExplainError::UnknownTenant { .. }) => {
                assert_eq!(e.exit_code(), 1);
                assert!(e.to_string().contains("demo, rollout, offline"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let mut invalid = config();
        invalid.tenants[0].limits.cpu_ms = 0;
        match explain_with(&invalid, "demo", "GET", "https://a.test/", public) {
            Err(e @ ExplainError::Invalid(_)) => {
                assert_eq!(e.exit_code(), 1);
                assert!(e.to_string().contains("tenants[0].limits.cpu_ms"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let e = explain_with(&config(), "demo", "GET", "ftp://a.test/", public).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = explain_with(&config(), "demo", "G T", "https://a.test/", public).unwrap_err();
        assert_eq!(e.exit_code(), 1);
    }
}
