//! `isogate explain`: what the egress pipeline would do with one outbound `fetch()` of a tenant's
//! Worker, worked out from the configuration alone. Nothing is sent; the only I/O is the DNS
//! lookup of a domain host (the SSRF guard's input), and that is injectable for tests.
//!
//! The steps mirror `egress::Inner::decide` and `send`: URL parsing, the tenant's allow-list
//! (`EgressPolicy::decide`), report mode, the credential and rate limiters of the matching rule,
//! and the SSRF guard (public addresses pass; `allow_private` opens only the private-use ranges,
//! never cloud metadata; a name is refused if any of its addresses is).

use std::fmt;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};

use isogate_config::{Config, Injection};
use isogate_policy::{
    classify_ip, parse_target, BlockedRange, Decision, EgressMode, RateLimit, TargetError,
    TargetHost,
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
}

impl ExplainError {
    /// The CLI exit code: 2 for a URL the gateway would refuse (like any other refusal), 1 for
    /// bad input (unknown tenant, invalid method).
    pub fn exit_code(&self) -> u8 {
        match self {
            ExplainError::Url { .. } => 2,
            ExplainError::UnknownTenant { .. } | ExplainError::Method(_) => 1,
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
    /// Whether the relevant rule opens the private-use ranges.
    pub allow_private: bool,
    /// The resolver's error, when unresolved.
    pub error: Option<String>,
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
    /// Whether the guard lets it through (public, or private-use with `allow_private`).
    pub allowed: bool,
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

/// Whether the guard lets `ip` through: public addresses always; private-use ranges only with
/// `allow_private`; cloud metadata and the other special ranges never.
fn address_allowed(range: Option<BlockedRange>, allow_private: bool) -> bool {
    match range {
        None => true,
        Some(BlockedRange::CloudMetadata) => false,
        Some(r) => allow_private && r.is_private_use(),
    }
}

/// Resolves a host name with the system resolver (`getaddrinfo`), as the gateway's guarded
/// resolver does.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
    Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Explains `method url` for `tenant` under `config`, resolving names with the system resolver.
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
    explain_with(config, tenant, method, url, system_resolve)
}

/// [`explain`] with a custom resolver (`host`, `port`) → addresses.
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
    let policy = config.policy();
    let Some(tenant_policy) = policy.tenant(tenant) else {
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
    let mode = egress.mode;

    // The rule whose flags apply: the allowing rule, or (when denied) the first rule that
    // matched the host, which still decides `allow_private` in report mode.
    let (decision, rule) = match egress.decide(method, &target) {
        Decision::Allow { rule } => {
            let r = egress.rules.get(rule);
            (
                DecisionReport {
                    allowed: true,
                    rule: r.map(|r| r.name.clone()),
                    reason: None,
                    mode: mode.as_str(),
                    outcome: Outcome::Allow,
                    host_rule: None,
                },
                r,
            )
        }
        Decision::Deny(reason) => {
            let host_rule = reason.rule().and_then(|i| egress.rules.get(i));
            let text = if egress.rules.is_empty() && mode == EgressMode::Enforce {
                format!(
                    "{} (the tenant has no egress rules)",
                    isogate_pool::NETWORK_DISABLED
                )
            } else {
                reason.to_string()
            };
            (
                DecisionReport {
                    allowed: false,
                    rule: None,
                    reason: Some(text),
                    mode: mode.as_str(),
                    outcome: match mode {
                        EgressMode::Enforce => Outcome::Deny,
                        EgressMode::Report => Outcome::ReportDeny,
                    },
                    host_rule: host_rule.map(|r| r.name.clone()),
                },
                host_rule,
            )
        }
    };

    // Credential and rule rate limit only under an allowing rule; the tenant limiter for
    // everything that is sent (report mode included).
    let allowing_rule = rule.filter(|_| decision.allowed);
    let credential = allowing_rule
        .and_then(|r| r.credential.as_deref())
        .map(|name| CredentialReport {
            name: name.to_owned(),
            inject: config.credential(name).map(|c| match &c.inject {
                Injection::Header { header, .. } => InjectReport::Header(header.clone()),
                Injection::Query { query, .. } => InjectReport::Query(query.clone()),
            }),
        });
    let sent = decision.outcome != Outcome::Deny;
    let rate_limits = RateLimitsReport {
        rule: allowing_rule
            .and_then(|r| r.rate_limit)
            .map(LimitReport::from),
        tenant: egress.rate_limit.filter(|_| sent).map(LimitReport::from),
    };

    let allow_private = rule.is_some_and(|r| r.allow_private);
    let ssrf = guard(&target.host, target.port, allow_private, resolve);

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

/// The SSRF guard: classify the IP literal, or every address the name resolves to.
fn guard(
    host: &TargetHost,
    port: u16,
    allow_private: bool,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<IpAddr>>,
) -> SsrfReport {
    let (ips, error) = match host {
        TargetHost::Ip(ip) => (vec![*ip], None),
        TargetHost::Domain(name) => match resolve(name, port) {
            Ok(ips) if ips.is_empty() => (ips, Some(format!("{name} resolves to no address"))),
            Ok(ips) => (ips, None),
            Err(e) => (Vec::new(), Some(format!("{name} does not resolve: {e}"))),
        },
    };
    let mut addresses: Vec<AddressReport> = Vec::with_capacity(ips.len());
    for ip in ips {
        if addresses.iter().any(|a| a.ip == ip) {
            continue;
        }
        let range = classify_ip(ip);
        addresses.push(AddressReport {
            ip,
            range,
            allowed: address_allowed(range, allow_private),
        });
    }
    let verdict = if error.is_some() {
        SsrfVerdict::Unresolved
    } else if addresses.iter().all(|a| a.allowed) {
        SsrfVerdict::Pass
    } else {
        SsrfVerdict::Refused
    };
    SsrfReport {
        addresses,
        verdict,
        allow_private,
        error,
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
        for a in &s.addresses {
            let class = match a.range {
                None => "public".to_owned(),
                Some(r) if a.allowed => format!("{r} (allowed by allow_private)"),
                Some(BlockedRange::CloudMetadata) if s.allow_private => {
                    format!(
                        "{} (blocked, allow_private never opens it)",
                        BlockedRange::CloudMetadata
                    )
                }
                Some(r) => format!("{r} (blocked)"),
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
            loopback,
        )
        .unwrap();
        assert!(!e.decision.allowed);
        assert_eq!(e.decision.outcome, Outcome::ReportDeny);
        assert_eq!(e.decision.mode, "report");
        assert_eq!(e.decision.host_rule.as_deref(), Some("api.example.com"));
        // No credential and no rule limiter for a report-mode pass; the tenant limiter applies;
        // the host-matching rule still decides allow_private.
        assert_eq!(e.credential, None);
        assert_eq!(e.rate_limits.rule, None);
        assert_eq!(e.rate_limits.tenant.unwrap().per_second, 7);
        assert!(e.ssrf.allow_private);
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
            |_: &str, _: u16| -> io::Result<Vec<IpAddr>> {
                panic!("an IP literal is not resolved")
            },
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
        let e = explain_with(&config(), "demo", "GET", "ftp://a.test/", public).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = explain_with(&config(), "demo", "G T", "https://a.test/", public).unwrap_err();
        assert_eq!(e.exit_code(), 1);
    }
}
