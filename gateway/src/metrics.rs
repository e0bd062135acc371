//! The metrics catalogue: every metric isogate exports is declared here, once, with prefix
//! `isogate_`, Prometheus base units and suffixes. Label values come only from configuration
//! (tenant, rule and credential names) or fixed enums — never from URLs, hosts outside the
//! config, or worker ids.

use isogate_pool::{CacheEvent, PoolObserver, StartKind};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// Every metric name, in one place (dashboards and alerts are checked against it by a test).
pub const CATALOGUE: &[&str] = &[
    "isogate_requests_total",
    "isogate_request_failures_total",
    "isogate_request_duration_seconds",
    "isogate_requests_in_flight",
    "isogate_isolate_starts_total",
    "isogate_isolate_start_duration_seconds",
    "isogate_pool_warm_isolates",
    "isogate_cached_workers",
    "isogate_worker_cache_events_total",
    "isogate_invocations_total",
    "isogate_invocation_cpu_seconds",
    "isogate_tenant_queue_depth",
    "isogate_tenant_rejections_total",
    "isogate_egress_requests_total",
    "isogate_egress_duration_seconds",
    "isogate_egress_failures_total",
    "isogate_inflight_bytes",
    "isogate_inflight_budget_bytes",
    "isogate_inflight_refusals_total",
    "isogate_credentials_injected_total",
    "isogate_secret_fetch_errors_total",
    "isogate_secrets_redacted_total",
    "isogate_vault_read_duration_seconds",
    "isogate_vault_up",
    "isogate_store_writes_total",
    "isogate_state_dir_bytes",
    "isogate_config_reloads_total",
    "isogate_config_last_reload_success_timestamp_seconds",
    "isogate_build_info",
    "isogate_worker_processes",
    "isogate_worker_restarts_total",
    "isogate_watchdog_kills_total",
    "isogate_cordoned_tenants",
    "isogate_worker_round_trip_seconds",
    "isogate_worker_invocations_in_flight",
    "isogate_route_requests_total",
    "isogate_route_rate_limited_total",
    "isogate_tls_certificate_expiry_timestamp_seconds",
    "isogate_tls_reloads_total",
    "isogate_shared_store_up",
    "isogate_egress_rate_limit_fallback",
    "isogate_replicas_seen",
    "isogate_api_calls_total",
    "isogate_api_call_duration_seconds",
    "isogate_client_tool_calls_total",
];

/// Removes the series of `families` whose first two labels are not one of `wanted`.
fn forget_pairs_but<T: prometheus::core::MetricVecBuilder>(
    families: &[&prometheus::core::MetricVec<T>],
    wanted: &[(String, String)],
) {
    let wanted: std::collections::HashSet<(&str, &str)> = wanted
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    for family in families {
        let stale: Vec<Vec<String>> = prometheus::core::Collector::collect(*family)
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| l.value().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|labels: &Vec<String>| {
                labels.len() >= 2 && !wanted.contains(&(labels[0].as_str(), labels[1].as_str()))
            })
            .collect();
        for labels in stale {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = family.remove_label_values(&refs);
        }
    }
}

/// The `status_class` label of a status.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Label value for "no rule matched" (report-mode passes, refusals before a rule).
pub const NO_RULE: &str = "none";
/// Tenant label of requests that did not authenticate.
pub const NO_TENANT: &str = "unauthenticated";

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
    /// `isogate_requests_total{tenant,route,status_class}`.
    pub requests: IntCounterVec,
    /// `isogate_request_failures_total{kind,fault}`: error answers, by whose failure they are.
    pub request_failures: IntCounterVec,
    /// `isogate_request_duration_seconds{tenant,route}`.
    pub request_duration: HistogramVec,
    /// `isogate_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `isogate_isolate_starts_total{kind}` (`load`, `get_miss`, `warm_refill`).
    pub isolate_starts: IntCounterVec,
    /// `isogate_isolate_start_duration_seconds`.
    pub isolate_start_duration: Histogram,
    /// `isogate_pool_warm_isolates`.
    pub warm_isolates: IntGauge,
    /// `isogate_cached_workers{tenant}`.
    pub cached_workers: IntGaugeVec,
    /// `isogate_worker_cache_events_total{tenant,event}`.
    pub cache_events: IntCounterVec,
    /// `isogate_invocations_total{tenant,outcome}`.
    pub invocations: IntCounterVec,
    /// `isogate_store_writes_total{op,result}`: writes to the stored-Worker database.
    pub store_writes: IntCounterVec,
    /// `isogate_state_dir_bytes`: what the stored-Worker database takes in `state_dir`.
    pub state_dir_bytes: IntGauge,
    /// `isogate_invocation_cpu_seconds{tenant}`.
    pub invocation_cpu: HistogramVec,
    /// `isogate_tenant_queue_depth{tenant}`.
    pub queue_depth: IntGaugeVec,
    /// `isogate_tenant_rejections_total{tenant,reason}` (`concurrency`, `overloaded`).
    pub rejections: IntCounterVec,
    /// `isogate_egress_requests_total{tenant,rule,decision}`.
    pub egress_requests: IntCounterVec,
    /// `isogate_egress_duration_seconds{tenant,rule}`.
    pub egress_duration: HistogramVec,
    /// `isogate_egress_failures_total{tenant,rule,reason}`: outbound requests that ended without
    /// a response, by the egress `Failure` reason.
    pub egress_failures: IntCounterVec,
    /// `isogate_inflight_bytes`: body bytes held by requests in flight (the in-flight budget in
    /// use).
    pub inflight_bytes: IntGauge,
    /// `isogate_inflight_budget_bytes`: the configured in-flight budget.
    pub inflight_budget_bytes: IntGauge,
    /// `isogate_inflight_refusals_total{tenant}`: requests failed because the in-flight budget
    /// had no room.
    pub inflight_refusals: IntCounterVec,
    /// `isogate_credentials_injected_total{credential}`.
    pub credentials_injected: IntCounterVec,
    /// `isogate_secret_fetch_errors_total{source}` (`env`, `file`, `vault`).
    pub secret_fetch_errors: IntCounterVec,
    /// `isogate_secrets_redacted_total{credential}`.
    pub secrets_redacted: IntCounterVec,
    /// `isogate_vault_read_duration_seconds{vault,outcome}` (`ok` or a `VaultError` label).
    pub vault_read_duration: HistogramVec,
    /// `isogate_vault_up{vault}`: 1 while every cached path's last read succeeded, else 0.
    pub vault_up: IntGaugeVec,
    /// `isogate_config_reloads_total{result}` (`ok`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// `isogate_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: Gauge,
    /// `isogate_build_info{version,engine}`, always 1.
    pub build_info: IntGaugeVec,
    /// `isogate_worker_processes`: worker processes alive now (`pool.isolation: process`).
    pub worker_processes: IntGauge,
    /// `isogate_worker_restarts_total{cause}`: worker processes that ended and were replaced,
    /// by cause (`watchdog_cpu`, `watchdog_wall`, `heartbeat`, `malformed`, `seccomp`, `abort`,
    /// `crash`, `signal`, `exit`).
    pub worker_restarts: IntCounterVec,
    /// `isogate_watchdog_kills_total{limit}` (`cpu`, `wall`, `heartbeat`, `malformed`).
    pub watchdog_kills: IntCounterVec,
    /// `isogate_cordoned_tenants`: tenants running in the quarantine worker now.
    pub cordoned_tenants: IntGauge,
    /// `isogate_worker_round_trip_seconds`: dispatch to answer of an invocation in a worker
    /// process (the wire plus the invocation).
    pub worker_round_trip: Histogram,
    /// `isogate_worker_invocations_in_flight`: invocations dispatched to worker processes and
    /// not yet ended (the channels' queue depth).
    pub worker_in_flight: IntGauge,
    /// `isogate_route_requests_total{tenant, route, status_class}`.
    pub route_requests: IntCounterVec,
    /// `isogate_route_rate_limited_total{tenant, route}`.
    pub route_rate_limited: IntCounterVec,
    /// `isogate_api_calls_total{tenant, api, outcome}`: tenant API calls by outcome (`ok` or
    /// the error code, lower-case).
    pub api_calls: IntCounterVec,
    /// `isogate_api_call_duration_seconds{tenant, api}`.
    pub api_call_duration: HistogramVec,
    /// `isogate_client_tool_calls_total{tenant, outcome}`: client-side tool calls of streamed
    /// executes by outcome (`ok` or the error code, lower-case).
    pub client_tool_calls: IntCounterVec,
    /// `isogate_tls_certificate_expiry_timestamp_seconds{certificate}`.
    pub tls_certificate_expiry: prometheus::GaugeVec,
    /// `isogate_tls_reloads_total{result}`.
    pub tls_reloads: IntCounterVec,
    /// `isogate_shared_store_up`.
    pub shared_store_up: IntGauge,
    /// `isogate_egress_rate_limit_fallback`.
    pub egress_rate_limit_fallback: IntGauge,
    /// `isogate_replicas_seen`.
    pub replicas_seen: IntGauge,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("each catalogue metric is registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

/// 50 µs … ~1.6 s: isolate starts.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00005, 2.0, 16).unwrap_or_default()
}

/// 100 µs … ~105 s: requests, invocations, egress and the worker round trip, which run up to
/// `wall_ms` (and a response's timeout) and beyond — a histogram must see its slowest cases.
fn duration_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 21).unwrap_or_default()
}

/// 1 ms … ~8 s (a vault read times out at 5 s).
fn vault_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

impl Metrics {
    /// `n` cache events at once (a worker process sums them between frames).
    pub fn cache_events_by(&self, tenant: &str, event: CacheEvent, n: u64) {
        self.cache_events
            .with_label_values(&[tenant, event.as_str()])
            .inc_by(n);
    }

    /// Creates the registry with every metric of the catalogue.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            requests: counter(
                &r,
                "isogate_requests_total",
                "Ingress requests by tenant, route and status class.",
                &["tenant", "route", "status_class"],
            ),
            request_failures: counter(
                &r,
                "isogate_request_failures_total",
                "Error answers by kind and by whose failure they are (client, tenant, platform).",
                &["kind", "fault"],
            ),
            request_duration: histogram(
                &r,
                "isogate_request_duration_seconds",
                "Ingress request latency.",
                &["tenant", "route"],
                duration_buckets(),
            ),
            in_flight: register(
                &r,
                IntGauge::new(
                    "isogate_requests_in_flight",
                    "Ingress requests being handled now.",
                )
                .expect("valid metric"),
            ),
            isolate_starts: counter(
                &r,
                "isogate_isolate_starts_total",
                "Isolates started or taken from the warm pool, by why: load and get_miss count every isolate put into service for a load()/execute or a get() that had to create its Worker; warm_refill counts isolates started ahead.",
                &["kind"],
            ),
            isolate_start_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "isogate_isolate_start_duration_seconds",
                        "Time to start an isolate with the Web APIs installed.",
                    )
                    .buckets(latency_buckets()),
                )
                .expect("valid metric"),
            ),
            warm_isolates: register(
                &r,
                IntGauge::new(
                    "isogate_pool_warm_isolates",
                    "Code-free isolates ready for load().",
                )
                .expect("valid metric"),
            ),
            cached_workers: gauge_vec(
                &r,
                "isogate_cached_workers",
                "Cached (warm) Workers per tenant.",
                &["tenant"],
            ),
            cache_events: counter(
                &r,
                "isogate_worker_cache_events_total",
                "Worker cache hits, misses and evictions.",
                &["tenant", "event"],
            ),
            invocations: counter(
                &r,
                "isogate_invocations_total",
                "Worker invocations by outcome.",
                &["tenant", "outcome"],
            ),
            store_writes: counter(
                &r,
                "isogate_store_writes_total",
                "Writes to the stored-Worker database (PUT, DELETE) by result.",
                &["op", "result"],
            ),
            state_dir_bytes: register(
                &r,
                IntGauge::new(
                    "isogate_state_dir_bytes",
                    "Bytes the stored-Worker database (with its write-ahead log) takes in state_dir.",
                )
                .expect("valid metric"),
            ),
            invocation_cpu: histogram(
                &r,
                "isogate_invocation_cpu_seconds",
                "CPU time of an invocation.",
                &["tenant"],
                duration_buckets(),
            ),
            queue_depth: gauge_vec(
                &r,
                "isogate_tenant_queue_depth",
                "Requests waiting for a tenant concurrency slot.",
                &["tenant"],
            ),
            rejections: counter(
                &r,
                "isogate_tenant_rejections_total",
                "Requests refused before running (429/503).",
                &["tenant", "reason"],
            ),
            egress_requests: counter(
                &r,
                "isogate_egress_requests_total",
                "Outbound requests from Workers by decision.",
                &["tenant", "rule", "decision"],
            ),
            egress_duration: histogram(
                &r,
                "isogate_egress_duration_seconds",
                "Time from sending an allowed outbound request to having its full response.",
                &["tenant", "rule"],
                duration_buckets(),
            ),
            egress_failures: counter(
                &r,
                "isogate_egress_failures_total",
                "Outbound requests that ended without a response, by reason.",
                &["tenant", "rule", "reason"],
            ),
            inflight_bytes: register(
                &r,
                IntGauge::new(
                    "isogate_inflight_bytes",
                    "Body bytes held by requests in flight (ingress and egress).",
                )
                .expect("valid metric"),
            ),
            inflight_budget_bytes: register(
                &r,
                IntGauge::new(
                    "isogate_inflight_budget_bytes",
                    "The gateway-wide budget for body bytes in flight.",
                )
                .expect("valid metric"),
            ),
            inflight_refusals: counter(
                &r,
                "isogate_inflight_refusals_total",
                "Requests failed because the in-flight body budget had no room.",
                &["tenant"],
            ),
            credentials_injected: counter(
                &r,
                "isogate_credentials_injected_total",
                "Credentials attached to outbound requests.",
                &["credential"],
            ),
            secret_fetch_errors: counter(
                &r,
                "isogate_secret_fetch_errors_total",
                "Failed reads of a secret source.",
                &["source"],
            ),
            secrets_redacted: counter(
                &r,
                "isogate_secrets_redacted_total",
                "Responses in which an injected secret was replaced with [REDACTED].",
                &["credential"],
            ),
            vault_read_duration: histogram(
                &r,
                "isogate_vault_read_duration_seconds",
                "Time of one vault read (timed out reads end at the 5 s vault timeout).",
                &["vault", "outcome"],
                vault_buckets(),
            ),
            vault_up: gauge_vec(
                &r,
                "isogate_vault_up",
                "1 while the last read of every cached path of the vault succeeded, 0 while one is failing.",
                &["vault"],
            ),
            config_reloads: counter(
                &r,
                "isogate_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            config_last_success: register(
                &r,
                Gauge::new(
                    "isogate_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful configuration load.",
                )
                .expect("valid metric"),
            ),
            build_info: gauge_vec(
                &r,
                "isogate_build_info",
                "Build information; always 1.",
                &["version", "engine"],
            ),
            worker_processes: register(
                &r,
                IntGauge::new(
                    "isogate_worker_processes",
                    "Confined worker processes alive now.",
                )
                .expect("valid metric"),
            ),
            worker_restarts: counter(
                &r,
                "isogate_worker_restarts_total",
                "Worker processes that ended and were replaced, by cause.",
                &["cause"],
            ),
            watchdog_kills: counter(
                &r,
                "isogate_watchdog_kills_total",
                "Worker processes killed by the watchdog, by the limit overrun.",
                &["limit"],
            ),
            cordoned_tenants: register(
                &r,
                IntGauge::new(
                    "isogate_cordoned_tenants",
                    "Tenants moved to the quarantine worker process.",
                )
                .expect("valid metric"),
            ),
            worker_round_trip: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "isogate_worker_round_trip_seconds",
                        "Dispatch to answer of an invocation in a worker process.",
                    )
                    .buckets(duration_buckets()),
                )
                .expect("valid metric"),
            ),
            worker_in_flight: register(
                &r,
                IntGauge::new(
                    "isogate_worker_invocations_in_flight",
                    "Invocations dispatched to worker processes and not yet ended.",
                )
                .expect("valid metric"),
            ),
            route_requests: counter(
                &r,
                "isogate_route_requests_total",
                "Requests on public routes (tenants' hostnames, no API key) by tenant, route name and status class.",
                &["tenant", "route", "status_class"],
            ),
            route_rate_limited: counter(
                &r,
                "isogate_route_rate_limited_total",
                "Requests on public routes refused by the route's per-client rate limit.",
                &["tenant", "route"],
            ),
            client_tool_calls: counter(
                &r,
                "isogate_client_tool_calls_total",
                "Client-side tool calls of streamed executes by outcome: ok, or the error code the code saw.",
                &["tenant", "outcome"],
            ),
            api_calls: counter(
                &r,
                "isogate_api_calls_total",
                "Calls of tenant APIs (env.<api>.<tool>) by outcome: ok, or the error code the code saw.",
                &["tenant", "api", "outcome"],
            ),
            api_call_duration: histogram(
                &r,
                "isogate_api_call_duration_seconds",
                "Duration of tenant API calls as the gateway handled them (checks and upstream exchange).",
                &["tenant", "api"],
                duration_buckets(),
            ),
            tls_certificate_expiry: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "isogate_tls_certificate_expiry_timestamp_seconds",
                        "End of validity of each ingress TLS certificate serving now (label: its first DNS name).",
                    ),
                    &["certificate"],
                )
                .expect("valid metric"),
            ),
            tls_reloads: counter(
                &r,
                "isogate_tls_reloads_total",
                "Reloads of the ingress TLS certificates (file change, SIGHUP, configuration) by result.",
                &["result"],
            ),
            shared_store_up: register(
                &r,
                IntGauge::new(
                    "isogate_shared_store_up",
                    "1 while the shared store (shared.redis) answered the last exchange, 0 while it does not; absent without shared.redis.",
                )
                .expect("valid metric"),
            ),
            egress_rate_limit_fallback: register(
                &r,
                IntGauge::new(
                    "isogate_egress_rate_limit_fallback",
                    "1 while egress rate limits fall back to this replica's own because the shared store does not answer.",
                )
                .expect("valid metric"),
            ),
            replicas_seen: register(
                &r,
                IntGauge::new(
                    "isogate_replicas_seen",
                    "Replicas sharing this gateway's Redis that sent a heartbeat in the last 6 s (1 without shared.redis).",
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        for cause in crate::supervisor::RESTART_CAUSES {
            m.worker_restarts.with_label_values(&[cause]).inc_by(0);
        }
        for limit in ["cpu", "wall", "heartbeat", "malformed"] {
            m.watchdog_kills.with_label_values(&[limit]).inc_by(0);
        }
        // Counters whose labels are a fixed set start at 0, so that `increase()` sees the first
        // event (a rejected reload, a failed secret fetch) instead of a series appearing at 1.
        for result in ["ok", "rejected"] {
            m.config_reloads.with_label_values(&[result]).inc_by(0);
            m.tls_reloads.with_label_values(&[result]).inc_by(0);
        }
        for op in ["put", "delete"] {
            for result in ["ok", "error"] {
                m.store_writes.with_label_values(&[op, result]).inc_by(0);
            }
        }
        for (kind, fault) in crate::error::ERROR_KINDS {
            m.request_failures
                .with_label_values(&[kind, fault.as_str()])
                .inc_by(0);
        }
        for source in ["env", "file", "vault"] {
            m.secret_fetch_errors.with_label_values(&[source]).inc_by(0);
        }
        for kind in [StartKind::Load, StartKind::GetMiss, StartKind::WarmRefill] {
            m.isolate_starts
                .with_label_values(&[kind.as_str()])
                .inc_by(0);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), isogate_pool::ENGINE])
            .set(1);
        m.replicas_seen.set(1);
        m
    }

    /// Counts one egress decision.
    pub fn egress(&self, tenant: &str, rule: Option<&str>, decision: EgressDecision) {
        self.egress_requests
            .with_label_values(&[tenant, rule.unwrap_or(NO_RULE), decision.as_str()])
            .inc();
    }

    /// Counts one egress request that ended without a response.
    pub fn egress_failure(&self, tenant: &str, rule: Option<&str>, reason: &str) {
        self.egress_failures
            .with_label_values(&[tenant, rule.unwrap_or(NO_RULE), reason])
            .inc();
    }

    /// Counts a request refused by the in-flight budget.
    pub fn inflight_refused(&self, tenant: &str) {
        self.inflight_refusals.with_label_values(&[tenant]).inc();
    }

    /// Records one ingress request.
    pub fn request(&self, tenant: &str, route: &str, status: u16, took: Duration) {
        let class = status_class(status);
        self.requests
            .with_label_values(&[tenant, route, class])
            .inc();
        self.request_duration
            .with_label_values(&[tenant, route])
            .observe(took.as_secs_f64());
    }

    /// Records one request on a public route (named in the configuration).
    pub fn route_request(&self, tenant: &str, route: &str, status: u16) {
        self.route_requests
            .with_label_values(&[tenant, route, status_class(status)])
            .inc();
    }

    /// Creates the series of the configured public routes at 0 (at start and on reload), and
    /// forgets those of routes no longer configured.
    pub fn routes_configured(&self, routes: &[(String, String)]) {
        forget_pairs_but(&[&self.route_requests, &self.route_rate_limited], routes);
        for (tenant, route) in routes {
            for class in ["2xx", "4xx", "5xx"] {
                self.route_requests
                    .with_label_values(&[tenant, route, class])
                    .inc_by(0);
            }
            self.route_rate_limited
                .with_label_values(&[tenant, route])
                .inc_by(0);
        }
    }

    /// Creates the series of the configured tenant APIs (tenant, API name) at 0 (at start and
    /// on reload), and forgets those of APIs no longer configured.
    pub fn apis_configured(&self, apis: &[(String, String)]) {
        forget_pairs_but(&[&self.api_calls], apis);
        forget_pairs_but(&[&self.api_call_duration], apis);
        for (tenant, api) in apis {
            for outcome in ["ok", "subrequest_limit"]
                .into_iter()
                .chain(isogate_pool::ApiErrorCode::ALL.iter().map(|c| c.label()))
            {
                self.api_calls
                    .with_label_values(&[tenant, api, outcome])
                    .inc_by(0);
            }
        }
    }

    /// Creates the client-side tool call series of the configured tenants at 0 (at start and
    /// on reload), and forgets those of tenants no longer configured.
    pub fn tenants_configured(&self, tenants: &[String]) {
        let outcomes: Vec<&str> = ["ok"]
            .into_iter()
            .chain(isogate_pool::ApiErrorCode::ALL.iter().map(|c| c.label()))
            .collect();
        let pairs: Vec<(String, String)> = tenants
            .iter()
            .flat_map(|t| outcomes.iter().map(move |o| (t.clone(), o.to_string())))
            .collect();
        forget_pairs_but(&[&self.client_tool_calls], &pairs);
        for (tenant, outcome) in &pairs {
            self.client_tool_calls
                .with_label_values(&[tenant, outcome])
                .inc_by(0);
        }
    }

    /// Records one client-side tool call.
    pub fn client_tool_call(&self, tenant: &str, outcome: &str) {
        self.client_tool_calls
            .with_label_values(&[tenant, outcome])
            .inc();
    }

    /// Records one tenant API call.
    pub fn api_call(&self, tenant: &str, api: &str, outcome: &str, took: std::time::Duration) {
        self.api_calls
            .with_label_values(&[tenant, api, outcome])
            .inc();
        self.api_call_duration
            .with_label_values(&[tenant, api])
            .observe(took.as_secs_f64());
    }

    /// Counts an error answer.
    pub fn request_failure(&self, error: &crate::error::ApiError) {
        self.request_failures
            .with_label_values(&[error.kind(), error.fault().as_str()])
            .inc();
    }

    /// Counts a write to the worker store and records the store's size after it.
    pub fn store_write(&self, op: &str, ok: bool, disk_bytes: u64) {
        let result = if ok { "ok" } else { "error" };
        self.store_writes.with_label_values(&[op, result]).inc();
        self.state_dir_bytes
            .set(i64::try_from(disk_bytes).unwrap_or(i64::MAX));
    }

    /// Records a finished invocation.
    pub fn invocation(&self, tenant: &str, outcome: &str, cpu_seconds: f64) {
        self.invocations.with_label_values(&[tenant, outcome]).inc();
        self.invocation_cpu
            .with_label_values(&[tenant])
            .observe(cpu_seconds);
    }

    /// Forgets every series of a tenant that left the configuration.
    pub fn forget_tenant(&self, tenant: &str) {
        for vec in [&self.cached_workers, &self.queue_depth] {
            let _ = vec.remove_label_values(&[tenant]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Names of the registered metric families (for the catalogue test).
    pub fn registered_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl PoolObserver for Metrics {
    fn isolate_started(&self, kind: StartKind, took: Duration) {
        self.isolate_starts
            .with_label_values(&[kind.as_str()])
            .inc();
        self.isolate_start_duration.observe(took.as_secs_f64());
    }

    fn isolate_taken(&self, kind: StartKind) {
        // A warm isolate put into service: counted under the kind that needed it (its start was
        // timed when the warm pool was refilled).
        self.isolate_starts
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    fn warm_isolates(&self, count: usize) {
        self.warm_isolates.set(count as i64);
    }

    fn cache_event(&self, tenant: &str, event: CacheEvent) {
        self.cache_events
            .with_label_values(&[tenant, event.as_str()])
            .inc();
    }

    fn cached_workers(&self, tenant: &str, count: usize) {
        self.cached_workers
            .with_label_values(&[tenant])
            .set(count as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_fixed_labels_start_at_zero() {
        let text = {
            let m = Metrics::new();
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&m.registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        for sample in [
            r#"isogate_config_reloads_total{result="rejected"} 0"#,
            r#"isogate_config_reloads_total{result="ok"} 0"#,
            r#"isogate_secret_fetch_errors_total{source="vault"} 0"#,
            r#"isogate_secret_fetch_errors_total{source="file"} 0"#,
            r#"isogate_secret_fetch_errors_total{source="env"} 0"#,
            r#"isogate_isolate_starts_total{kind="load"} 0"#,
            r#"isogate_worker_restarts_total{cause="seccomp"} 0"#,
            r#"isogate_request_failures_total{fault="platform",kind="internal"} 0"#,
            r#"isogate_request_failures_total{fault="tenant",kind="exception"} 0"#,
            r#"isogate_store_writes_total{op="put",result="error"} 0"#,
        ] {
            assert!(text.contains(sample), "missing {sample}");
        }
    }

    /// The largest finite bucket of each duration histogram reaches a minute (wall limits of
    /// 30–60 s must not all land in +Inf); isolate starts and vault reads keep finer buckets.
    #[test]
    fn duration_histograms_cover_a_minute() {
        let m = Metrics::new();
        m.request("t", "execute", 200, Duration::from_secs(45));
        m.worker_round_trip.observe(45.0);
        m.invocation("t", "ok", 45.0);
        m.egress_duration
            .with_label_values(&["t", "r"])
            .observe(45.0);
        let mut checked = 0;
        for family in m.registry.gather() {
            let name = family.name();
            let Some(metric) = family.get_metric().first() else {
                continue;
            };
            if family.get_field_type() != prometheus::proto::MetricType::HISTOGRAM
                || name == "isogate_isolate_start_duration_seconds"
                || name == "isogate_vault_read_duration_seconds"
            {
                continue;
            }
            let top = metric
                .get_histogram()
                .get_bucket()
                .iter()
                .map(|b| b.upper_bound())
                .filter(|b| b.is_finite())
                .fold(0.0, f64::max);
            assert!(top >= 60.0, "{name}: largest bucket {top} s");
            checked += 1;
        }
        assert_eq!(
            checked, 4,
            "request, invocation CPU, egress, worker round trip"
        );
    }

    pub(super) fn touch_all(m: &Metrics) {
        m.request("t", "execute", 200, Duration::from_millis(1));
        m.in_flight.set(0);
        m.isolate_started(StartKind::Load, Duration::from_micros(400));
        m.warm_isolates(3);
        m.cache_event("t", CacheEvent::Hit);
        m.cached_workers("t", 1);
        m.invocation("t", "ok", 0.001);
        m.queue_depth.with_label_values(&["t"]).set(0);
        m.rejections.with_label_values(&["t", "concurrency"]).inc();
        m.egress("t", None, EgressDecision::Deny);
        m.egress_duration
            .with_label_values(&["t", "r"])
            .observe(0.1);
        m.egress_failure("t", None, "connect");
        m.inflight_bytes.set(0);
        m.inflight_budget_bytes.set(1);
        m.inflight_refused("t");
        m.credentials_injected.with_label_values(&["c"]).inc();
        m.secret_fetch_errors.with_label_values(&["vault"]).inc();
        m.secrets_redacted.with_label_values(&["c"]).inc();
        m.vault_read_duration
            .with_label_values(&["v", "ok"])
            .observe(0.01);
        m.vault_up.with_label_values(&["v"]).set(1);
        m.config_reloads.with_label_values(&["ok"]).inc();
        m.config_last_success.set(1.0);
        m.routes_configured(&[("t".into(), "r".into())]);
        m.route_request("t", "r", 200);
        m.apis_configured(&[("t".into(), "a".into())]);
        m.api_call("t", "a", "ok", Duration::from_millis(1));
        m.tenants_configured(&["t".into()]);
        m.client_tool_call("t", "ok");
        m.tls_certificate_expiry
            .with_label_values(&["a.test"])
            .set(1.0);
    }

    /// The families README's metric table documents, with the label names of each (its rows:
    /// `| families | labels | values and notes |`, labels as backticked names or `–`).
    fn readme_table() -> std::collections::BTreeMap<String, Vec<String>> {
        let readme = include_str!("../../README.md");
        let backticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let mut table = std::collections::BTreeMap::new();
        for row in readme.lines().filter(|l| l.starts_with("| `isogate_")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert!(
                cells.len() >= 3,
                "a metric row without a labels column: {row}"
            );
            let mut labels = backticked(cells[1]);
            assert!(
                !labels.is_empty() || cells[1].trim() == "–",
                "labels are backticked names or –: {row}"
            );
            labels.sort();
            for family in backticked(cells[0]) {
                assert!(
                    table.insert(family.clone(), labels.clone()).is_none(),
                    "{family} is in two rows"
                );
            }
        }
        table
    }

    #[test]
    fn readme_metric_table_matches_the_registered_families_and_labels() {
        let m = Metrics::new();
        touch_all(&m);
        let registered: std::collections::BTreeMap<String, Vec<String>> = m
            .registry
            .gather()
            .iter()
            .map(|f| {
                let mut labels: Vec<String> = f
                    .get_metric()
                    .first()
                    .map(|s| s.get_label().iter().map(|l| l.name().to_string()).collect())
                    .unwrap_or_default();
                labels.sort();
                (f.name().to_string(), labels)
            })
            .collect();
        assert_eq!(
            registered.len(),
            CATALOGUE.len(),
            "every family has a sample"
        );
        assert_eq!(readme_table(), registered);
    }

    #[test]
    fn catalogue_lists_exactly_the_registered_families() {
        let m = Metrics::new();
        touch_all(&m);
        let mut names = m.registered_names();
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
        assert!(
            text.contains(r#"isogate_build_info{engine="quickjs",version=""#),
            "{text}"
        );
    }
}
