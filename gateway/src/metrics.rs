//! The metrics catalogue: every metric isogate exports is declared here, once, with prefix
//! `isogate_`, Prometheus base units and suffixes. Label values come only from configuration
//! (tenant, rule and credential names) or fixed enums — never from URLs, hosts outside the
//! config, or worker ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric name, in one place (used by tests and by dashboards' checks).
pub const CATALOGUE: &[&str] = &[
    "isogate_egress_requests_total",
    "isogate_egress_duration_seconds",
    "isogate_credentials_injected_total",
    "isogate_secret_fetch_errors_total",
    "isogate_secrets_redacted_total",
];

/// Label value for "no rule matched" (report-mode passes, refusals before a rule).
pub const NO_RULE: &str = "none";

/// Egress decisions, the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressDecision {
    /// Allowed by a rule.
    Allow,
    /// Denied (policy, URL, SSRF guard).
    Deny,
    /// Would have been denied; passed because the tenant is in report mode.
    ReportDeny,
    /// Refused by a rate limit with a synthetic 429.
    RateLimited,
}

impl EgressDecision {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressDecision::Allow => "allow",
            EgressDecision::Deny => "deny",
            EgressDecision::ReportDeny => "report_deny",
            EgressDecision::RateLimited => "rate_limited",
        }
    }
}

/// The registry and every metric.
pub struct Metrics {
    registry: Registry,
    /// `isogate_egress_requests_total{tenant,rule,decision}`.
    pub egress_requests: IntCounterVec,
    /// `isogate_egress_duration_seconds{tenant,rule}`.
    pub egress_duration: HistogramVec,
    /// `isogate_credentials_injected_total{credential}`.
    pub credentials_injected: IntCounterVec,
    /// `isogate_secret_fetch_errors_total{source}` (`env`, `file`, `vault`).
    pub secret_fetch_errors: IntCounterVec,
    /// `isogate_secrets_redacted_total{credential}`.
    pub secrets_redacted: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// Creates the registry with every metric of the catalogue.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let egress_requests = counter(
            &registry,
            "isogate_egress_requests_total",
            "Outbound requests from Workers by decision.",
            &["tenant", "rule", "decision"],
        );
        let egress_duration = histogram(
            &registry,
            "isogate_egress_duration_seconds",
            "Time from sending an allowed outbound request to having its full response.",
            &["tenant", "rule"],
            prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
        );
        let credentials_injected = counter(
            &registry,
            "isogate_credentials_injected_total",
            "Credentials attached to outbound requests.",
            &["credential"],
        );
        let secret_fetch_errors = counter(
            &registry,
            "isogate_secret_fetch_errors_total",
            "Failed reads of a secret source.",
            &["source"],
        );
        let secrets_redacted = counter(
            &registry,
            "isogate_secrets_redacted_total",
            "Responses in which an injected secret was replaced with [REDACTED].",
            &["credential"],
        );
        Metrics {
            registry,
            egress_requests,
            egress_duration,
            credentials_injected,
            secret_fetch_errors,
            secrets_redacted,
        }
    }

    /// Counts one egress decision.
    pub fn egress(&self, tenant: &str, rule: Option<&str>, decision: EgressDecision) {
        self.egress_requests
            .with_label_values(&[tenant, rule.unwrap_or(NO_RULE), decision.as_str()])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_exactly_the_registered_families() {
        let m = Metrics::new();
        m.egress("t", None, EgressDecision::Deny);
        m.egress_duration
            .with_label_values(&["t", "r"])
            .observe(0.1);
        m.credentials_injected.with_label_values(&["c"]).inc();
        m.secret_fetch_errors.with_label_values(&["vault"]).inc();
        m.secrets_redacted.with_label_values(&["c"]).inc();
        let mut names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.sort();
        let mut expected: Vec<String> = CATALOGUE.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected);
        for name in CATALOGUE {
            assert!(name.starts_with("isogate_"));
        }
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"isogate_egress_requests_total{decision="deny",rule="none",tenant="t"} 1"#
            ),
            "{text}"
        );
    }
}
