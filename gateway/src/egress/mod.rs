//! The egress pipeline: every `fetch()` a Worker makes, in order, failing closed.
//!
//! [`Egress::authorize`] (no I/O): [`Inner::plan`] — the one place the live path consults the
//! policy: parse the URL (WHATWG, normalised host; userinfo and non-http(s) schemes refused),
//! then policy's pure `EgressPolicy::plan` (the same function redirects and `isogate explain`
//! use: verdict, rule, credential, limiters, `allow_private` scope) — then the
//! rule's and the tenant's rate limits (a synthetic 429 with `Retry-After`, upstream
//! untouched). The pool then charges the subrequest budget.
//!
//! [`Egress::send`] (on the egress runtime) loads the configuration snapshot once and runs each
//! hop as named steps: `plan` (again for hop 0, against that snapshot: a tenant or rule removed
//! by a reload in between refuses; each redirect hop also takes its rate-limit cell) →
//! `check_address` (policy's one SSRF rule: IP literals here with their port; names in the
//! guarded connector, on every resolved `(address, port)`, connecting only to those) →
//! `attach_credential` (only while the origin is the one the Worker asked for) →
//! `build_request` → `exchange` (a connection pool per tenant, credential and `allow_private`;
//! see [`pools`]) → `read_body` (bounded, charged to the in-flight budget) → `decode`
//! (Content-Encoding) → `strip_hop_by_hop` → `redirect` (a target carrying an injected secret is
//! refused) → `scrub` (every form of every injected secret; `Content-Length` recomputed).
//!
//! Every exit of a hop is a [`Failure`] (its variant is the audit/metric `reason` label) or a
//! response, and [`Inner::emit`] writes the hop's audit line and its counters together, in one
//! place, for every hop and every refusal.

pub mod body;
pub mod client;
pub mod decode;
pub mod limits;
pub mod pools;
pub mod redact;
pub mod scrub;

pub use limits::TenantLimiters;

use crate::inflight::{InflightBudget, InflightError, InflightPermit};
use crate::metrics::{EgressDecision, Metrics, NO_RULE};
use crate::state::Snapshot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use client::guard_refusal;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use isogate_config::Injection;
use isogate_policy::{
    check_address, parse_target, DenyReason, EgressPlan, PlanVerdict, Target, TargetHost,
};
use isogate_pool::{
    body_channel, Authorization, BodyWriter, Delivered, Egress, EgressError, EgressRequest,
    EgressResponse, Invoker, Verdict, BODY_WINDOW, NETWORK_DISABLED,
};
use pools::{PoolKey, SentBody, Watch};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many redirects are followed.
const MAX_REDIRECTS: u32 = 10;
/// Largest upstream response body handed to a Worker (also the bound of a decoded body).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Time allowed for an upstream to deliver its response head, and then its whole body.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's [`Egress`].
pub struct GatewayEgress {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    pools: pools::Pools,
    scrubbers: scrub::ScrubberCache,
    inflight: Arc<InflightBudget>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// The shared store whose rate limits hold across replicas (`shared.redis`).
    shared: Option<Arc<crate::cluster::Shared>>,
    /// Falling back to per-replica rate limits because the shared store did not answer.
    falling_back: std::sync::atomic::AtomicBool,
    /// Where each hop is also recorded for its invocation's receipt.
    receipts: Option<Arc<crate::receipts::Receipts>>,
}

impl GatewayEgress {
    /// Builds the pipeline over the gateway's reloadable snapshot; I/O runs on `runtime`. Bodies
    /// are not charged to any in-flight budget (see [`GatewayEgress::with_inflight`]).
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> GatewayEgress {
        GatewayEgress::with_inflight(snapshot, metrics, runtime, InflightBudget::unlimited())
    }

    /// Builds the pipeline, charging request and response bodies to `inflight`.
    pub fn with_inflight(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        inflight: Arc<InflightBudget>,
    ) -> GatewayEgress {
        GatewayEgress {
            inner: Arc::new(Inner {
                snapshot,
                pools: pools::Pools::new(),
                scrubbers: scrub::ScrubberCache::default(),
                inflight,
                metrics,
                runtime,
                shared: None,
                falling_back: std::sync::atomic::AtomicBool::new(false),
                receipts: None,
            }),
        }
    }

    /// The same pipeline, recording each hop in its invocation's receipt. Call before the
    /// pipeline is shared.
    pub fn with_receipts(mut self, receipts: Arc<crate::receipts::Receipts>) -> GatewayEgress {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.receipts = Some(receipts);
        }
        self
    }

    /// The same pipeline with its rate limits in the shared store, for every replica at once
    /// (per-replica limits while the store does not answer). Call before the pipeline is shared.
    pub fn with_shared(mut self, shared: Option<Arc<crate::cluster::Shared>>) -> GatewayEgress {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.shared = shared;
        }
        self
    }
}

/// Why an outbound request (one hop) ended without a response for the Worker. The variant is
/// the `reason` of the audit line and of `isogate_egress_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The URL does not parse or is not allowed as a target (scheme, userinfo).
    InvalidUrl(String),
    /// The tenant left the configuration.
    TenantGone,
    /// The tenant has no egress rules (`hint`: what an operator would have to add).
    NetworkDisabled {
        /// What an operator would have to add.
        hint: String,
    },
    /// No rule allows the request.
    Denied(Box<Denial>),
    /// A reload changed the rule that authorized the request before it was sent.
    PolicyChanged,
    /// The destination address is not allowed.
    Ssrf {
        /// Host.
        host: String,
        /// Why.
        why: String,
    },
    /// The rule's credential could not be read.
    CredentialUnavailable {
        /// Host.
        host: String,
        /// Message (names the credential, never a value).
        message: String,
    },
    /// The request cannot be expressed in HTTP.
    InvalidRequest {
        /// Host.
        host: String,
    },
    /// The gateway's in-flight memory budget has no room for the bodies.
    InflightBudget {
        /// Host.
        host: String,
        /// Why.
        error: InflightError,
    },
    /// No connection could be made.
    Connect {
        /// Host.
        host: String,
    },
    /// The connection failed.
    Connection {
        /// Host.
        host: String,
    },
    /// The upstream took longer than the response timeout.
    Timeout {
        /// Host.
        host: String,
    },
    /// The response body is larger than the limit.
    ResponseTooLarge {
        /// Host.
        host: String,
    },
    /// Reading the response body failed.
    ResponseRead {
        /// Host.
        host: String,
    },
    /// A Content-Encoding the gateway cannot undo on a response that must be scrubbed.
    UnsupportedEncoding {
        /// Host.
        host: String,
        /// Why.
        error: decode::DecodeError,
    },
    /// The decoded body would exceed the limit (a decompression bomb).
    DecodedTooLarge {
        /// Host.
        host: String,
    },
    /// The body is not valid for its Content-Encoding.
    CorruptEncoding {
        /// Host.
        host: String,
        /// Why.
        error: decode::DecodeError,
    },
    /// Redirected while the request's redirect mode is `error`.
    RedirectModeError {
        /// Host.
        host: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    TooManyRedirects {
        /// Host.
        host: String,
    },
    /// The redirect location is not a usable URL.
    InvalidRedirect {
        /// Host.
        host: String,
    },
    /// The redirect target carries an injected secret (in any form).
    SecretInRedirect {
        /// Host.
        host: String,
    },
    /// Following the redirect would exceed the invocation's subrequest budget.
    SubrequestLimit,
}

/// A policy denial, as the refused code sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why, for a person (`no egress rule allows host …`).
    pub reason: String,
    /// The reason's stable identifier (`no_rules`, `no_rule`, `port`, `method`, `path`).
    pub kind: &'static str,
    /// The rule that matched the host but not the rest, if one did.
    pub rule: Option<String>,
    /// What an operator would have to allow.
    pub hint: String,
}

impl Denial {
    /// The denial of `reason` under `egress` (rules named by their configured names).
    pub fn of(
        reason: &isogate_policy::DenyReason,
        egress: &isogate_policy::EgressPolicy,
    ) -> Denial {
        let name = |i: usize| {
            egress
                .rules
                .get(i)
                .map(|r| r.name.clone())
                .unwrap_or_default()
        };
        Denial {
            reason: reason.to_string(),
            kind: reason.kind(),
            rule: match reason {
                isogate_policy::DenyReason::Port { rule, .. }
                | isogate_policy::DenyReason::Method { rule, .. }
                | isogate_policy::DenyReason::Path { rule, .. } => Some(name(*rule)),
                _ => None,
            },
            hint: reason.hint(name),
        }
    }
}

impl Failure {
    /// What the code can act on: a policy denial's code, reason, rule and hint.
    pub fn detail(&self) -> Option<isogate_pool::ApiFailure> {
        match self {
            Failure::Denied(denial) => Some(isogate_pool::ApiFailure {
                code: isogate_pool::ApiErrorCode::EgressDenied,
                message: self.message(),
                rule: denial.rule.clone(),
                reason: Some(denial.kind.to_string()),
                hint: Some(denial.hint.clone()),
                status: None,
            }),
            Failure::NetworkDisabled { hint } => Some(isogate_pool::ApiFailure {
                code: isogate_pool::ApiErrorCode::EgressDenied,
                message: self.message(),
                rule: None,
                reason: Some("no_rules".into()),
                hint: Some(hint.clone()),
                status: None,
            }),
            _ => None,
        }
    }

    /// The audit/metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::InvalidUrl(_) => "invalid_url",
            Failure::TenantGone => "tenant_gone",
            Failure::NetworkDisabled { .. } => "network_disabled",
            Failure::Denied(_) => "denied",
            Failure::PolicyChanged => "policy_changed",
            Failure::Ssrf { .. } => "ssrf",
            Failure::CredentialUnavailable { .. } => "credential_unavailable",
            Failure::InvalidRequest { .. } => "invalid_request",
            Failure::InflightBudget { .. } => "inflight_budget",
            Failure::Connect { .. } => "connect",
            Failure::Connection { .. } => "connection",
            Failure::Timeout { .. } => "timeout",
            Failure::ResponseTooLarge { .. } => "response_too_large",
            Failure::ResponseRead { .. } => "response_read",
            Failure::UnsupportedEncoding { .. } => "unsupported_encoding",
            Failure::DecodedTooLarge { .. } => "decoded_too_large",
            Failure::CorruptEncoding { .. } => "corrupt_encoding",
            Failure::RedirectModeError { .. } => "redirect_mode_error",
            Failure::TooManyRedirects { .. } => "too_many_redirects",
            Failure::InvalidRedirect { .. } => "invalid_redirect",
            Failure::SecretInRedirect { .. } => "secret_in_redirect",
            Failure::SubrequestLimit => "subrequest_limit",
        }
    }

    /// Every reason label (metrics are initialised with them).
    pub const REASONS: &'static [&'static str] = &[
        "invalid_url",
        "tenant_gone",
        "network_disabled",
        "denied",
        "policy_changed",
        "ssrf",
        "credential_unavailable",
        "invalid_request",
        "inflight_budget",
        "connect",
        "connection",
        "timeout",
        "response_too_large",
        "response_read",
        "unsupported_encoding",
        "decoded_too_large",
        "corrupt_encoding",
        "redirect_mode_error",
        "too_many_redirects",
        "invalid_redirect",
        "secret_in_redirect",
        "subrequest_limit",
    ];

    /// The message `fetch()` rejects with (never a secret).
    pub fn message(&self) -> String {
        match self {
            Failure::InvalidUrl(e) => format!("fetch refused: {e}"),
            Failure::TenantGone => "fetch refused: the tenant is no longer configured".into(),
            Failure::NetworkDisabled { .. } => {
                format!("{NETWORK_DISABLED} (the tenant has no egress rules)")
            }
            Failure::Denied(denial) => format!("fetch denied: {}", denial.reason),
            Failure::PolicyChanged => {
                "fetch refused: the tenant's egress policy changed while the request was in flight"
                    .into()
            }
            Failure::Ssrf { host, why } => format!("fetch to {host} refused: {why} (SSRF guard)"),
            Failure::CredentialUnavailable { host, message } => {
                format!("fetch to {host} refused: {message}")
            }
            Failure::InvalidRequest { host } => {
                format!("fetch to {host} refused: invalid request (a header name or value is not valid HTTP)")
            }
            Failure::InflightBudget { host, error } => format!("fetch to {host} failed: {error}"),
            Failure::Connect { host } => format!("fetch to {host} failed: could not connect"),
            Failure::Connection { host } => format!("fetch to {host} failed: connection error"),
            Failure::Timeout { host } => format!("fetch to {host} failed: timed out"),
            Failure::ResponseTooLarge { host } => format!(
                "fetch to {host} failed: response body exceeds {MAX_RESPONSE_BYTES} bytes"
            ),
            Failure::ResponseRead { host } => {
                format!("fetch to {host} failed: error reading response body")
            }
            Failure::UnsupportedEncoding { host, error }
            | Failure::CorruptEncoding { host, error } => format!("fetch to {host} failed: {error}"),
            Failure::DecodedTooLarge { host } => format!(
                "fetch to {host} failed: decoded response body exceeds {MAX_RESPONSE_BYTES} bytes (decompression bomb?)"
            ),
            Failure::RedirectModeError { host } => format!(
                "fetch to {host} was redirected and the request's redirect mode is \"error\""
            ),
            Failure::TooManyRedirects { host } => {
                format!("fetch to {host} failed: more than {MAX_REDIRECTS} redirects")
            }
            Failure::InvalidRedirect { host } => {
                format!("fetch to {host} failed: invalid redirect location")
            }
            Failure::SecretInRedirect { host } => format!(
                "fetch to {host} refused: the redirect target carries an injected credential"
            ),
            Failure::SubrequestLimit => {
                "subrequest limit exceeded while following redirects".into()
            }
        }
    }

    fn into_error(self) -> EgressError {
        match self {
            Failure::SubrequestLimit => EgressError::SubrequestLimit,
            other => EgressError::Rejected(other.message()),
        }
    }
}

/// What one hop was, for its audit line (filled in as the steps run).
struct Record {
    method: String,
    target: Option<Target>,
    rule: Option<String>,
    credential: Option<String>,
    report_only: bool,
    /// The request left the gateway.
    sent: bool,
    /// This hop was already planned by `authorize` (its report-mode warning is logged).
    authorized: bool,
    status: Option<u16>,
    bytes: usize,
    started: Instant,
}

impl Record {
    fn new(method: &str) -> Record {
        Record {
            method: method.to_string(),
            target: None,
            rule: None,
            credential: None,
            report_only: false,
            sent: false,
            authorized: false,
            status: None,
            bytes: 0,
            started: Instant::now(),
        }
    }
}

/// How a hop ended.
enum Ending<'a> {
    /// A response (the Worker's, or a redirect that is followed).
    Answered,
    /// A synthetic 429.
    RateLimited,
    /// A failure.
    Failed(&'a Failure),
}

/// What the policy step decided for one hop: policy's [`EgressPlan`] for the parsed target.
struct Plan {
    target: Target,
    /// Verdict, allowing rule, credential name, rate limiters and `allow_private` scope.
    egress: EgressPlan,
    /// Name of the allowing rule (none for a report-mode pass).
    rule: Option<String>,
}

impl Plan {
    fn report_only(&self) -> bool {
        matches!(self.egress.verdict, PlanVerdict::ReportDeny(_))
    }

    fn audited_rule(&self) -> Option<String> {
        self.rule.clone()
    }
}

/// The state of one `fetch()` across its hops.
struct Run {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    redirect: String,
    budget: u32,
    hops: u32,
    /// The origin the Worker asked for (credentials are attached only there).
    origin: Option<Target>,
    /// Secrets attached so far (credential name, value).
    injected: Vec<(String, SecretString)>,
    /// Query parameters that carry an injected credential.
    query_params: Vec<String>,
    permit: InflightPermit,
}

/// How a hop continues.
enum Next {
    /// The response; with the rest of its body when it is still arriving.
    Answer(EgressResponse, Option<Box<Tail>>),
    RateLimited(EgressResponse),
    Follow,
}

/// The rest of a response body still arriving, streamed to the Worker by [`Inner::stream`].
struct Tail {
    source: body::Source,
    /// Raw bytes read so far (for the audit line).
    raw: Arc<AtomicUsize>,
    /// Credentials already found in the head (headers, URL).
    scrubbed: Vec<String>,
    /// The in-flight budget held while the body streams: the window and a read.
    permit: InflightPermit,
    deadline: tokio::time::Instant,
}

/// The credential step's result.
#[derive(Default)]
struct Attached {
    url: Option<url::Url>,
    header: Option<(String, String)>,
}

impl Inner {
    /// The one place the live path consults the policy: URL, tenant, rules, report mode.
    fn plan(
        &self,
        snapshot: &Snapshot,
        invoker: &Invoker,
        method: &str,
        url: &str,
        record: &mut Record,
    ) -> Result<Plan, Failure> {
        let target = parse_target(url).map_err(|e| Failure::InvalidUrl(e.to_string()))?;
        record.target = Some(target.clone());
        let tenant = snapshot
            .policy
            .tenant(&invoker.tenant)
            .ok_or(Failure::TenantGone)?;
        let egress = tenant.egress.plan(method, &target);
        match &egress.verdict {
            PlanVerdict::Deny(reason @ DenyReason::NoRules { .. }) => {
                Err(Failure::NetworkDisabled {
                    hint: reason.hint(|_| String::new()),
                })
            }
            PlanVerdict::Deny(reason) => Err(Failure::Denied(Box::new(Denial::of(
                reason,
                &tenant.egress,
            )))),
            PlanVerdict::ReportDeny(reason) => {
                // Logged once per hop: at authorize for the first, here for redirects.
                if !record.authorized {
                    tracing::warn!(target: "isogate::egress", tenant = %invoker.tenant,
                        host = %target.host.to_string(), reason = %reason,
                        "egress would be denied (report mode): letting it through");
                }
                Ok(Plan {
                    target,
                    egress,
                    rule: None,
                })
            }
            PlanVerdict::Allow => Ok(Plan {
                rule: egress.rule(&tenant.egress).map(|r| r.name.clone()),
                target,
                egress,
            }),
        }
    }

    /// The rule's and the tenant's rate limits, this replica's: a synthetic 429 when over.
    fn rate_limit(
        &self,
        snapshot: &Snapshot,
        invoker: &Invoker,
        plan: &Plan,
    ) -> Option<EgressResponse> {
        let limiters = snapshot.limiters.get(&invoker.tenant)?;
        let wait = limiters.check(plan.egress.limiters.rule).err()?;
        Some(Self::limited(plan, wait))
    }

    /// The rate limits wherever they live: in the shared store (one budget for every replica;
    /// this replica's limiters while the store does not answer, with a metric and one log line
    /// per change), else this replica's.
    async fn rate_limit_anywhere(
        &self,
        snapshot: &Snapshot,
        invoker: &Invoker,
        plan: &Plan,
    ) -> Option<EgressResponse> {
        let Some(shared) = &self.shared else {
            return self.rate_limit(snapshot, invoker, plan);
        };
        let tenant = snapshot.policy.tenant(&invoker.tenant)?;
        let mut limits = Vec::with_capacity(2);
        if let Some(rule) = plan.egress.limiters.rule {
            if let Some(r) = tenant.egress.rules.get(rule) {
                if let Some(limit) = r.rate_limit {
                    limits.push((format!("rule:{}", r.name), limit));
                }
            }
        }
        if let Some(limit) = tenant.egress.rate_limit {
            limits.push(("tenant".to_string(), limit));
        }
        if limits.is_empty() {
            return None;
        }
        let result = shared.throttle(&invoker.tenant, &limits).await;
        let fallback = result.is_err();
        if self
            .falling_back
            .swap(fallback, std::sync::atomic::Ordering::Relaxed)
            != fallback
        {
            self.metrics
                .egress_rate_limit_fallback
                .set(i64::from(fallback));
            if fallback {
                tracing::error!("egress rate limits: the shared store does not answer; each replica enforces its own limits until it does (a tenant may get N× its budget meanwhile)");
            } else {
                tracing::info!("egress rate limits: shared across replicas again");
            }
        }
        match result {
            Ok(Ok(())) => None,
            Ok(Err(wait)) => Some(Self::limited(plan, wait)),
            Err(_) => self.rate_limit(snapshot, invoker, plan),
        }
    }

    /// The synthetic 429 of a rate limit.
    fn limited(plan: &Plan, wait: Duration) -> EgressResponse {
        let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
        let host = plan.target.host.to_string();
        EgressResponse {
            status: 429,
            headers: vec![
                ("retry-after".into(), retry.to_string()),
                ("content-type".into(), "text/plain".into()),
                ("x-isogate-egress".into(), "rate_limited".into()),
            ],
            body: format!("isogate: egress rate limit exceeded for {host}; retry after {retry} s")
                .into_bytes(),
            streamed: false,
            hops: 0,
            url: String::new(),
        }
    }

    /// Writes the hop's audit line and counts it: the only place either happens.
    fn emit(&self, invoker: &Invoker, record: &Record, ending: Ending<'_>) {
        let decision = match ending {
            Ending::RateLimited => EgressDecision::RateLimited,
            _ if !record.sent => EgressDecision::Deny,
            _ if record.report_only => EgressDecision::ReportDeny,
            _ => EgressDecision::Allow,
        };
        let reason = match &ending {
            Ending::Failed(f) => f.reason(),
            Ending::RateLimited => "rate_limited",
            Ending::Answered => "",
        };
        let rule = record.rule.as_deref();
        self.metrics.egress(&invoker.tenant, rule, decision);
        if let Ending::Failed(f) = ending {
            self.metrics
                .egress_failure(&invoker.tenant, rule, f.reason());
        }
        if record.sent {
            self.metrics
                .egress_duration
                .with_label_values(&[invoker.tenant.as_str(), rule.unwrap_or(NO_RULE)])
                .observe(record.started.elapsed().as_secs_f64());
        }
        let (scheme, host, port, path) = match &record.target {
            Some(t) => (
                t.scheme.to_string(),
                t.host.to_string(),
                t.port,
                t.path.as_str(),
            ),
            None => (String::new(), String::new(), 0, ""),
        };
        if let Some(receipts) = &self.receipts {
            receipts.record(
                invoker.trace,
                crate::receipts::Entry::Fetch {
                    method: record.method.clone(),
                    target: if scheme.is_empty() {
                        String::new()
                    } else {
                        format!("{scheme}://{host}:{port}{path}")
                    },
                    decision: decision.as_str(),
                    rule: rule.map(str::to_string),
                    reason,
                    status: record.status.unwrap_or(0),
                    bytes: record.bytes,
                    duration_ms: record.started.elapsed().as_secs_f64() * 1000.0,
                },
            );
        }
        tracing::info!(
            target: "isogate::egress",
            tenant = %invoker.tenant,
            worker_id = invoker.worker_id.as_deref().unwrap_or(""),
            method = %record.method,
            scheme = %scheme,
            host = %host,
            port,
            path = %path,
            rule = rule.unwrap_or(""),
            decision = decision.as_str(),
            reason,
            credential = record.credential.as_deref().unwrap_or(""),
            status = record.status.unwrap_or(0),
            bytes = record.bytes,
            duration_ms = record.started.elapsed().as_secs_f64() * 1000.0,
            "egress"
        );
    }
}

impl Egress for GatewayEgress {
    fn authorize(&self, invoker: &Invoker, request: &EgressRequest) -> Verdict {
        let inner = &self.inner;
        let snapshot = inner.snapshot.load();
        let mut record = Record::new(&request.method);
        match inner.plan(
            &snapshot,
            invoker,
            &request.method,
            &request.url,
            &mut record,
        ) {
            Err(failure) => {
                inner.emit(invoker, &record, Ending::Failed(&failure));
                match failure.detail() {
                    Some(detail) => Verdict::Refuse(Box::new(detail)),
                    None => Verdict::Reject(failure.message()),
                }
            }
            Ok(plan) => {
                record.rule = plan.audited_rule();
                // Shared limits need a round trip: checked on the way out (first hop).
                let limited = match inner.shared {
                    Some(_) => None,
                    None => inner.rate_limit(&snapshot, invoker, &plan),
                };
                match limited {
                    Some(response) => {
                        record.status = Some(429);
                        inner.emit(invoker, &record, Ending::RateLimited);
                        Verdict::Respond(response)
                    }
                    None => Verdict::Proceed(Authorization {
                        report_only: plan.report_only(),
                        rule: plan.rule,
                    }),
                }
            }
        }
    }

    fn abandoned(&self, invoker: &Invoker, request: &EgressRequest, authorization: &Authorization) {
        // Authorized, then refused by the invocation's subrequest budget: one audit line too.
        let mut record = Record::new(&request.method);
        record.target = parse_target(&request.url).ok();
        record.rule = authorization.rule.clone();
        record.report_only = authorization.report_only;
        record.authorized = true;
        self.inner
            .emit(invoker, &record, Ending::Failed(&Failure::SubrequestLimit));
    }

    fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> BoxFuture<'static, Result<Delivered, EgressError>> {
        let inner = self.inner.clone();
        let task = self
            .inner
            .runtime
            .spawn(async move { inner.send(invoker, request, authorization).await });
        let mut task = AbortOnDrop(task);
        Box::pin(async move {
            match (&mut task.0).await {
                Ok(result) => result,
                Err(_) => Err(EgressError::Rejected(
                    "fetch failed: egress task ended".into(),
                )),
            }
        })
    }
}

/// Aborts the spawned request when the Worker's invocation goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

fn same_origin(a: &Target, b: &Target) -> bool {
    a.scheme == b.scheme && a.host == b.host && a.port == b.port
}

/// Headers a Worker may not set on an outbound request.
fn forbidden_request_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// Removes hop-by-hop headers from an upstream response: `connection`, `keep-alive`,
/// `transfer-encoding`, `te`, `trailer`, `upgrade`, every `proxy-*`, and those `Connection`
/// names.
pub fn strip_hop_by_hop(headers: &mut Vec<(String, String)>) {
    let named: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    headers.retain(|(k, _)| {
        let k = k.to_ascii_lowercase();
        !(matches!(
            k.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
        ) || k.starts_with("proxy-")
            || named.contains(&k))
    });
}

/// The Content-Length the Worker sees: the length of the body it gets. A body-less response
/// (HEAD, 1xx, 204, 304) keeps the upstream's value unless a secret was injected.
fn set_content_length(
    headers: &mut Vec<(String, String)>,
    method: &str,
    status: u16,
    len: usize,
    secrets_injected: bool,
) {
    let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
    if bodiless && !secrets_injected {
        return;
    }
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
    if !bodiless {
        headers.push(("content-length".into(), len.to_string()));
    }
}

fn budget_failure(host: &str) -> impl FnOnce(InflightError) -> Failure + '_ {
    move |error| Failure::InflightBudget {
        host: host.to_string(),
        error,
    }
}

impl Inner {
    async fn send(
        self: Arc<Self>,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> Result<Delivered, EgressError> {
        // One snapshot for every hop of this request.
        let snapshot = self.snapshot.load_full();
        let mut run = Run {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: Bytes::from(request.body),
            redirect: request.redirect,
            budget: request.budget,
            hops: 0,
            origin: None,
            injected: Vec::new(),
            query_params: Vec::new(),
            permit: self.inflight.permit(&invoker.tenant),
        };
        loop {
            let mut record = Record::new(&run.method);
            record.authorized = run.hops == 0;
            let result = self
                .hop(&snapshot, &invoker, &authorization, &mut run, &mut record)
                .await;
            match result {
                Ok(Next::Follow) => self.emit(&invoker, &record, Ending::Answered),
                Ok(Next::Answer(response, None)) => {
                    self.emit(&invoker, &record, Ending::Answered);
                    return Ok((response, None));
                }
                Ok(Next::Answer(response, Some(tail))) => {
                    // The hop's audit line is written when its body has been streamed.
                    let (writer, stream) = body_channel();
                    let inner = self.clone();
                    self.runtime
                        .spawn(async move { inner.stream(invoker, record, tail, writer).await });
                    return Ok((response, Some(stream)));
                }
                Ok(Next::RateLimited(response)) => {
                    self.emit(&invoker, &record, Ending::RateLimited);
                    if run.hops == 0 {
                        // Refused before anything was sent: not a subrequest.
                        return Err(EgressError::Answered(response));
                    }
                    return Ok((response, None));
                }
                Err(failure) => {
                    self.emit(&invoker, &record, Ending::Failed(&failure));
                    if let Failure::InflightBudget { .. } = failure {
                        self.metrics.inflight_refused(&invoker.tenant);
                    }
                    return Err(failure.into_error());
                }
            }
        }
    }

    /// One hop, as named steps.
    async fn hop(
        &self,
        snapshot: &Snapshot,
        invoker: &Invoker,
        authorization: &Authorization,
        run: &mut Run,
        record: &mut Record,
    ) -> Result<Next, Failure> {
        // Step: plan (the first hop was authorized; it must still be what was authorized).
        let plan = self.plan(snapshot, invoker, &run.method, &run.url, record)?;
        record.rule = plan.audited_rule();
        record.report_only = plan.report_only();
        if run.hops == 0
            && (plan.rule != authorization.rule || plan.report_only() != authorization.report_only)
        {
            return Err(Failure::PolicyChanged);
        }
        // The first hop's local limits were checked when it was authorized.
        let limited = match (run.hops, &self.shared) {
            (0, None) => None,
            _ => self.rate_limit_anywhere(snapshot, invoker, &plan).await,
        };
        if let Some(mut response) = limited {
            record.status = Some(429);
            response.hops = run.hops;
            response.url = run.url.clone();
            return Ok(Next::RateLimited(response));
        }
        let target = plan.target.clone();
        let host = target.host.to_string();
        let origin = run.origin.get_or_insert_with(|| target.clone()).clone();
        let allow_private = plan.egress.allow_private;

        // Step: the request body is charged once; earlier hops' responses are released.
        run.permit.shrink_to(run.body.len());
        if run.permit.bytes() < run.body.len() {
            let missing = run.body.len() - run.permit.bytes();
            run.permit
                .grow(missing)
                .await
                .map_err(budget_failure(&host))?;
        }

        Self::check_address(&target, allow_private)?;
        let attached = self
            .attach_credential(snapshot, &plan, &origin, run, record)
            .await?;
        let (request, done) = Self::build_request(run, attached, &host)?;
        let key = PoolKey {
            tenant: invoker.tenant.clone(),
            credential: record.credential.clone(),
            allow_private,
        };
        record.sent = true;
        let response = self.exchange(&key, request, done, &host).await?;
        let status = response.status().as_u16();
        record.status = Some(status);
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(Failure::ResponseTooLarge { host });
        }

        // Step: redirect (the body of a redirect that is followed is read and dropped).
        let location = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone());
        if is_redirect(status) && location.is_some() && run.redirect != "manual" {
            let body = Self::read_body(response, &mut run.permit, &host).await?;
            record.bytes = body.len();
            self.redirect(
                run,
                &origin,
                location.as_deref().unwrap_or_default(),
                status,
                &host,
            )?;
            return Ok(Next::Follow);
        }

        // Step: the body, decoded and scrubbed as it arrives; what is ready goes with the head.
        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        let codings = self.codings(&mut headers, run, &host)?;
        strip_hop_by_hop(&mut headers);
        let scrubber = (!run.injected.is_empty()).then(|| self.scrubbers.get(&run.injected));
        let raw = Arc::new(AtomicUsize::new(0));
        let reader = body::raw_reader(response.into_body(), raw.clone());
        let opened = body::Source::open(reader, &codings, scrubber.clone(), &host);
        let ready = async {
            let mut source = opened.await?;
            let ready = source.ready()?;
            Ok::<_, Failure>((source, ready))
        };
        let outcome = tokio::time::timeout_at(deadline, ready).await;
        record.bytes = raw.load(Ordering::Relaxed);
        let (source, (ready, complete)) =
            outcome.map_err(|_| Failure::Timeout { host: host.clone() })??;

        // Step: scrub the head (headers, URL); the body was scrubbed by `source`.
        let mut response = EgressResponse {
            status,
            headers,
            body: Vec::new(),
            streamed: !complete,
            hops: run.hops,
            url: run.url.clone(),
        };
        let mut scrubbed: Vec<String> = Vec::new();
        if let Some(scrubber) = &scrubber {
            response = redact::scrub_with(response, scrubber, |credential| {
                scrubbed.push(credential.to_string());
            });
        }
        response.body = ready;
        run.permit.shrink_to(0);
        if complete {
            for credential in source.scrubbed() {
                if !scrubbed.contains(&credential) {
                    scrubbed.push(credential);
                }
            }
            self.count_scrubbed(&scrubbed);
            set_content_length(
                &mut response.headers,
                &run.method,
                status,
                response.body.len(),
                scrubber.is_some(),
            );
            return Ok(Next::Answer(response, None));
        }
        if scrubber.is_some() || !codings.is_empty() {
            // The length of what the Worker gets is not known before the end.
            response
                .headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        }
        let mut permit = std::mem::replace(&mut run.permit, self.inflight.permit(&invoker.tenant));
        permit
            .grow(BODY_WINDOW + body::HEAD_BYTES)
            .await
            .map_err(budget_failure(&host))?;
        Ok(Next::Answer(
            response,
            Some(Box::new(Tail {
                source,
                raw,
                scrubbed,
                permit,
                deadline,
            })),
        ))
    }

    /// The codings the gateway undoes for this response (their headers removed: the Worker
    /// gets the decoded body). A coding it cannot undo passes through untouched only when no
    /// secret was injected (nothing to scrub).
    fn codings(
        &self,
        headers: &mut Vec<(String, String)>,
        run: &Run,
        host: &str,
    ) -> Result<Vec<String>, Failure> {
        let codings = decode::codings(headers);
        if codings.is_empty() {
            return Ok(codings);
        }
        if let Err(error) = decode::supported(&codings) {
            if run.injected.is_empty() {
                return Ok(Vec::new());
            }
            return Err(Failure::UnsupportedEncoding {
                host: host.to_string(),
                error,
            });
        }
        headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("content-encoding") && !k.eq_ignore_ascii_case("content-length")
        });
        Ok(codings)
    }

    fn count_scrubbed(&self, credentials: &[String]) {
        for credential in credentials {
            self.metrics
                .secrets_redacted
                .with_label_values(&[credential])
                .inc();
        }
    }

    /// Streams the rest of a body to the Worker, at the pace it reads, until the end, a
    /// failure, the deadline, or the Worker's going away; then writes the hop's audit line.
    async fn stream(
        self: Arc<Self>,
        invoker: Invoker,
        mut record: Record,
        mut tail: Box<Tail>,
        mut writer: BodyWriter,
    ) {
        let host = record
            .target
            .as_ref()
            .map(|t| t.host.to_string())
            .unwrap_or_default();
        let source = &mut tail.source;
        let pumped = tokio::time::timeout_at(tail.deadline, async {
            loop {
                let next = tokio::select! {
                    next = source.next() => next?,
                    () = writer.closed() => return Ok(()),
                };
                match next {
                    Some(bytes) => {
                        if !writer.chunk(bytes).await {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
        })
        .await
        .unwrap_or(Err(Failure::Timeout { host }));
        record.bytes = tail.raw.load(Ordering::Relaxed);
        for credential in tail.source.scrubbed() {
            if !tail.scrubbed.contains(&credential) {
                tail.scrubbed.push(credential);
            }
        }
        self.count_scrubbed(&tail.scrubbed);
        drop(tail.permit);
        // The audit line first: when the Worker sees the end, the line is written.
        match pumped {
            Ok(()) => {
                self.emit(&invoker, &record, Ending::Answered);
                writer.end(Ok(()));
            }
            Err(failure) => {
                self.emit(&invoker, &record, Ending::Failed(&failure));
                writer.end(Err(failure.message()));
            }
        }
    }

    /// SSRF guard for IP literals, with the port (names are checked by the guarded connector,
    /// which runs the same `check_address` on every resolved address).
    fn check_address(target: &Target, allow_private: bool) -> Result<(), Failure> {
        if let TargetHost::Ip(ip) = &target.host {
            let addr = std::net::SocketAddr::new(*ip, target.port);
            if let Err(refusal) = check_address(addr, &client::scope(allow_private)) {
                return Err(Failure::Ssrf {
                    host: target.host.to_string(),
                    why: format!("{ip} is {refusal}"),
                });
            }
        }
        Ok(())
    }

    /// The rule's credential, only while the origin is the one the Worker asked for.
    async fn attach_credential(
        &self,
        snapshot: &Snapshot,
        plan: &Plan,
        origin: &Target,
        run: &mut Run,
        record: &mut Record,
    ) -> Result<Attached, Failure> {
        let host = plan.target.host.to_string();
        let Some(cred) = plan
            .egress
            .credential
            .as_deref()
            .filter(|_| same_origin(origin, &plan.target))
            .and_then(|name| snapshot.secrets.credential(name))
        else {
            return Ok(Attached::default());
        };
        record.credential = Some(cred.name.clone());
        let value =
            snapshot
                .secrets
                .value(&cred)
                .await
                .map_err(|e| Failure::CredentialUnavailable {
                    host: host.clone(),
                    message: e.to_string(),
                })?;
        let mut attached = Attached::default();
        match &cred.inject {
            Injection::Header { header, .. } => {
                attached.header = Some((
                    header.to_ascii_lowercase(),
                    cred.inject.render(value.expose_secret()),
                ));
            }
            Injection::Query { query, .. } => {
                let mut url = url::Url::parse(&run.url)
                    .map_err(|e| Failure::InvalidUrl(format!("invalid URL: {e}")))?;
                let rendered = cred.inject.render(value.expose_secret());
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != query)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.query_pairs_mut()
                    .clear()
                    .extend_pairs(kept)
                    .append_pair(query, &rendered);
                if !run.query_params.contains(query) {
                    run.query_params.push(query.clone());
                }
                attached.url = Some(url);
            }
        }
        self.metrics
            .credentials_injected
            .with_label_values(&[&cred.name])
            .inc();
        if !run
            .injected
            .iter()
            .any(|(n, v)| *n == cred.name && v.expose_secret() == value.expose_secret())
        {
            run.injected.push((cred.name.clone(), value));
        }
        Ok(attached)
    }

    /// The HTTP request: the Worker's headers less forbidden ones, the credential, the body.
    fn build_request(
        run: &Run,
        attached: Attached,
        host: &str,
    ) -> Result<(http::Request<SentBody>, Arc<std::sync::atomic::AtomicBool>), Failure> {
        let invalid = || Failure::InvalidRequest {
            host: host.to_string(),
        };
        let uri = match &attached.url {
            Some(u) => u.as_str().to_string(),
            None => url::Url::parse(&run.url)
                .map_err(|e| Failure::InvalidUrl(format!("invalid URL: {e}")))?
                .as_str()
                .to_string(),
        };
        let mut builder = http::Request::builder()
            .method(run.method.as_str())
            .uri(uri);
        for (name, value) in &run.headers {
            let lower = name.to_ascii_lowercase();
            if forbidden_request_header(&lower)
                || attached.header.as_ref().is_some_and(|(h, _)| *h == lower)
            {
                continue;
            }
            if lower == "accept-encoding" {
                // Only codings the gateway can undo (it decodes before scrubbing).
                builder = builder.header(lower.as_str(), decode::accept_encoding(value));
            } else {
                builder = builder.header(lower.as_str(), value.as_str());
            }
        }
        if let Some((name, value)) = &attached.header {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let (body, done) = SentBody::new(run.body.clone());
        let request = builder.body(body).map_err(|_| invalid())?;
        Ok((request, done))
    }

    /// Sends on the key's pool; poisons the connection if the response came before the body
    /// was fully sent.
    async fn exchange(
        &self,
        key: &PoolKey,
        mut request: http::Request<SentBody>,
        done: Arc<std::sync::atomic::AtomicBool>,
        host: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        let client = self.pools.client(key);
        let watch = Watch::new(&mut request, done);
        let host = host.to_string();
        match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) => {
                if watch.response_arrived() {
                    tracing::debug!(target: "isogate::egress", host = %host,
                        "response arrived before the request body was sent: connection not reused");
                }
                Ok(response)
            }
            Ok(Err(e)) => match guard_refusal(&e) {
                Some(refused) => Err(Failure::Ssrf {
                    host,
                    why: refused.to_string(),
                }),
                None if e.is_connect() => Err(Failure::Connect { host }),
                None => Err(Failure::Connection { host }),
            },
            Err(_) => Err(Failure::Timeout { host }),
        }
    }

    /// The whole body of a redirect, bounded and charged to the in-flight budget as it arrives.
    async fn read_body(
        response: http::Response<hyper::body::Incoming>,
        permit: &mut InflightPermit,
        host: &str,
    ) -> Result<Vec<u8>, Failure> {
        // The declared length was checked by the hop, for every response.
        let too_large = || Failure::ResponseTooLarge {
            host: host.to_string(),
        };
        let mut body = response.into_body();
        let read = async {
            let mut out: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| Failure::ResponseRead {
                    host: host.to_string(),
                })?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_RESPONSE_BYTES {
                        return Err(too_large());
                    }
                    permit
                        .grow(data.len())
                        .await
                        .map_err(budget_failure(host))?;
                    out.extend_from_slice(&data);
                }
            }
            Ok(out)
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, read)
            .await
            .map_err(|_| Failure::Timeout {
                host: host.to_string(),
            })?
    }

    /// Prepares the next hop, or refuses to follow.
    fn redirect(
        &self,
        run: &mut Run,
        origin: &Target,
        location: &str,
        status: u16,
        host: &str,
    ) -> Result<(), Failure> {
        let host = host.to_string();
        if run.redirect == "error" {
            return Err(Failure::RedirectModeError { host });
        }
        run.hops += 1;
        if run.hops > MAX_REDIRECTS {
            return Err(Failure::TooManyRedirects { host });
        }
        if run.hops > run.budget {
            return Err(Failure::SubrequestLimit);
        }
        let current = url::Url::parse(&run.url)
            .map_err(|_| Failure::InvalidRedirect { host: host.clone() })?;
        let next = current
            .join(location)
            .map_err(|_| Failure::InvalidRedirect { host: host.clone() })?;
        let next_target = parse_target(next.as_str())
            .map_err(|_| Failure::InvalidRedirect { host: host.clone() })?;
        let same = same_origin(origin, &next_target);
        if !run.injected.is_empty() {
            // The credential's own query parameter is replaced on a same-origin hop; anything
            // else carrying a secret is refused before the next origin is contacted.
            let mut checked = next.clone();
            if same && !run.query_params.is_empty() {
                let kept: Vec<(String, String)> = next
                    .query_pairs()
                    .filter(|(k, _)| !run.query_params.iter().any(|q| q == k))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                checked.query_pairs_mut().clear().extend_pairs(kept);
            }
            let scrubber = self.scrubbers.get(&run.injected);
            let text = checked.as_str();
            let decoded = percent_encoding::percent_decode_str(text).collect::<Vec<u8>>();
            if scrubber.contains(text.as_bytes())
                || scrubber.contains(&decoded)
                || scrubber.contains(location.as_bytes())
            {
                return Err(Failure::SecretInRedirect { host });
            }
        }
        if status == 303 || ((status == 301 || status == 302) && run.method == "POST") {
            run.method = "GET".into();
            run.body = Bytes::new();
            run.headers.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("content-type") && !k.eq_ignore_ascii_case("content-length")
            });
        }
        if !same {
            // Credentials the Worker set itself do not follow a cross-origin redirect either.
            run.headers.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("cookie")
            });
        }
        run.url = next.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h: Vec<(String, String)> = [
            ("Connection", "close, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "h2c"),
            ("x-secret-hop", "1"),
            ("x-kept", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, vec![("x-kept".to_string(), "1".to_string())]);
    }

    #[test]
    fn content_length_is_the_body_the_worker_gets() {
        let mut h = vec![("content-length".to_string(), "999".to_string())];
        set_content_length(&mut h, "GET", 200, 12, true);
        assert_eq!(h, vec![("content-length".to_string(), "12".to_string())]);
        let mut h = vec![("content-length".to_string(), "999".to_string())];
        set_content_length(&mut h, "HEAD", 200, 0, false);
        assert_eq!(h[0].1, "999");
        set_content_length(&mut h, "HEAD", 200, 0, true);
        assert!(h.is_empty());
    }

    #[test]
    fn every_failure_has_a_listed_reason() {
        let f = Failure::Connect { host: "h".into() };
        assert!(Failure::REASONS.contains(&f.reason()));
        assert_eq!(Failure::REASONS.len(), 22);
    }
}
