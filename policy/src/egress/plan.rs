//! [`EgressPolicy::plan`]: everything the policy decides about one outbound request, in one
//! value, so that the live path, redirects and `isogate explain` cannot disagree.

use std::fmt;

use super::scope::AddressScope;
use super::{Decision, DenyReason, EgressMode, EgressPolicy, EgressRule, SelfListeners, Target};

/// What happens to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanVerdict {
    /// A rule allows it.
    Allow,
    /// No rule allows it and the tenant enforces its allow-list: the `fetch()` fails.
    Deny(DenyReason),
    /// No rule allows it, but the tenant is in report mode: it is sent anyway (without
    /// credential, rule rate limit or `allow_private`), counted and logged as `report_deny`.
    ReportDeny(DenyReason),
}

impl PlanVerdict {
    /// Stable label, as used by the egress metrics and audit lines: `allow`, `deny`,
    /// `report_deny`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            PlanVerdict::Allow => "allow",
            PlanVerdict::Deny(_) => "deny",
            PlanVerdict::ReportDeny(_) => "report_deny",
        }
    }

    /// Why no rule allows the request (`None` when allowed).
    pub const fn reason(&self) -> Option<&DenyReason> {
        match self {
            PlanVerdict::Allow => None,
            PlanVerdict::Deny(reason) | PlanVerdict::ReportDeny(reason) => Some(reason),
        }
    }
}

impl fmt::Display for PlanVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate limiters a request takes a cell from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlannedLimiters {
    /// Index of the allowing rule, when that rule has a `rate_limit`.
    pub rule: Option<usize>,
    /// Whether the tenant-wide limit applies (the tenant has one and the request is sent).
    pub tenant: bool,
}

/// Everything the policy decides about one outbound request, from [`EgressPolicy::plan`].
///
/// Pure data: the runner resolves, connects and sends; `isogate explain` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// Allow, deny or report-mode would-deny, with the typed reason.
    pub verdict: PlanVerdict,
    /// Index of the rule the request fully matched (host, port, method, path); only with
    /// [`PlanVerdict::Allow`].
    pub rule: Option<usize>,
    /// Name of the credential to inject; only under an allowing rule.
    pub credential: Option<String>,
    /// The rate limiters that apply.
    pub limiters: PlannedLimiters,
    /// Whether the private-use address ranges are open to this request: only when the request
    /// matches a rule with `allow_private` (fully, or in report mode on host and port). A denied
    /// request never opens them, nor does a report-mode request whose port no such rule has.
    pub allow_private: bool,
}

impl EgressPlan {
    /// Whether the request is sent (allowed, or let through in report mode).
    pub const fn proceeds(&self) -> bool {
        !matches!(self.verdict, PlanVerdict::Deny(_))
    }

    /// The allowing rule, looked up in the policy the plan was made from.
    pub fn rule<'p>(&self, policy: &'p EgressPolicy) -> Option<&'p EgressRule> {
        self.rule.and_then(|i| policy.rules.get(i))
    }

    /// The address scope the request connects under: its `allow_private`, and the gateway's
    /// own listeners (never reachable).
    pub fn scope(&self, self_listeners: &SelfListeners) -> AddressScope {
        AddressScope::new(self.allow_private, self_listeners.clone())
    }
}

impl EgressPolicy {
    /// Plans one outbound request: the verdict, the rule it fully matched, the credential, the
    /// rate limiters and the `allow_private` scope. Pure; the same for the first hop, every
    /// redirect hop and `isogate explain`.
    ///
    /// * Allowed by rule `i` ([`EgressPolicy::decide`]): that rule's credential, its limiter
    ///   (if it has a `rate_limit`) and the tenant's, its `allow_private`.
    /// * Denied, enforce mode: nothing applies; a tenant without any rule gets
    ///   [`DenyReason::NoRules`].
    /// * Denied, report mode: sent without credential, only the tenant's limiter, and
    ///   `allow_private` only if a rule with it matched host **and** port (a rule that matched
    ///   only the host does not count).
    pub fn plan(&self, method: &str, target: &Target) -> EgressPlan {
        match self.decide(method, target) {
            Decision::Allow { rule: index } => {
                let rule = &self.rules[index];
                EgressPlan {
                    verdict: PlanVerdict::Allow,
                    rule: Some(index),
                    credential: rule.credential.clone(),
                    limiters: PlannedLimiters {
                        rule: rule.rate_limit.map(|_| index),
                        tenant: self.rate_limit.is_some(),
                    },
                    allow_private: rule.allow_private,
                }
            }
            Decision::Deny(reason) => {
                let (verdict, limiters) = match self.mode {
                    EgressMode::Enforce => {
                        let reason = if self.rules.is_empty() {
                            DenyReason::NoRules {
                                host: reason.host().clone(),
                            }
                        } else {
                            reason
                        };
                        (PlanVerdict::Deny(reason), PlannedLimiters::default())
                    }
                    EgressMode::Report => (
                        PlanVerdict::ReportDeny(reason),
                        PlannedLimiters {
                            rule: None,
                            tenant: self.rate_limit.is_some(),
                        },
                    ),
                };
                // A report-mode pass keeps `allow_private` only when a rule matched its host AND
                // port (it failed on method or path): the port is what opens a private service,
                // so a rule for `127.0.0.1:20402` never opens `:20403`.
                let allow_private = matches!(verdict, PlanVerdict::ReportDeny(_))
                    && verdict
                        .reason()
                        .and_then(DenyReason::host_port_rule)
                        .and_then(|i| self.rules.get(i))
                        .is_some_and(|r| r.allow_private);
                EgressPlan {
                    verdict,
                    rule: None,
                    credential: None,
                    limiters,
                    allow_private,
                }
            }
        }
    }
}
