//! The egress pipeline: every `fetch()` a Worker makes, in order, failing closed.
//!
//! [`Egress::authorize`] (no I/O): parse the URL (WHATWG, normalised host; userinfo and
//! non-http(s) schemes refused), match the tenant's allow rules (`mode: report` lets a would-be
//! denial through and counts it), apply the rule's and the tenant's rate limits (a synthetic 429
//! with `Retry-After`, upstream untouched). The pool then charges the subrequest budget.
//!
//! [`Egress::send`] (on the egress runtime): refuse non-public destination addresses unless the
//! rule says `allow_private` (IP literals checked here, names checked by the guarded resolver,
//! which hands the connector exactly the addresses it checked), attach the rule's credential,
//! send with rustls, follow redirects (each hop through the same steps, credential dropped when
//! the origin changes), scrub injected secrets from the response, and write one audit line per
//! request.

pub mod client;
pub mod limits;
pub mod redact;

pub use limits::TenantLimiters;

use crate::metrics::{EgressDecision, Metrics};
use crate::state::Snapshot;
use crate::vault::Credential;
use arc_swap::ArcSwap;
use bytes::Bytes;
use client::{address_allowed, guard_refusal, read_body_limited, GuardedClient};
use futures::future::BoxFuture;
use http_body_util::Full;
use isogate_config::Injection;
use isogate_policy::{parse_target, Decision, EgressMode, EgressRule, Target, TargetHost};
use isogate_pool::{
    Authorization, Egress, EgressError, EgressRequest, EgressResponse, Invoker, Verdict,
    NETWORK_DISABLED,
};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many redirects are followed.
const MAX_REDIRECTS: u32 = 10;
/// Largest upstream response body handed to a Worker.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Time allowed for an upstream to deliver its whole response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's [`Egress`].
pub struct GatewayEgress {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Public destinations only.
    strict: GuardedClient,
    /// Also private-use ranges, for rules with `allow_private: true`.
    private: GuardedClient,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

impl GatewayEgress {
    /// Builds the pipeline over the gateway's reloadable snapshot; I/O runs on `runtime`.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> GatewayEgress {
        GatewayEgress {
            inner: Arc::new(Inner {
                snapshot,
                strict: client::guarded_client(false),
                private: client::guarded_client(true),
                metrics,
                runtime,
            }),
        }
    }
}

/// One audit line per outbound request (never the query, never a secret).
#[allow(clippy::too_many_arguments)]
fn audit(
    invoker: &Invoker,
    method: &str,
    target: &Target,
    rule: Option<&str>,
    decision: &str,
    credential: Option<&str>,
    status: Option<u16>,
    bytes: usize,
    started: Instant,
) {
    tracing::info!(
        target: "isogate::egress",
        tenant = %invoker.tenant,
        worker_id = invoker.worker_id.as_deref().unwrap_or(""),
        method,
        scheme = %target.scheme,
        host = %target.host.to_string(),
        port = target.port,
        path = %target.path,
        rule = rule.unwrap_or(""),
        decision,
        credential = credential.unwrap_or(""),
        status = status.unwrap_or(0),
        bytes,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "egress"
    );
}

/// What the policy step decided for one hop.
enum Step {
    Go {
        rule: Option<EgressRule>,
        report_only: bool,
    },
    Respond(EgressResponse),
    Refuse(String),
}

impl Inner {
    /// URL, policy and rate limits for one hop (the first hop and every redirect).
    fn decide(&self, invoker: &Invoker, method: &str, url: &str) -> (Option<Target>, Step) {
        let started = Instant::now();
        let snapshot = self.snapshot.load();
        let target = match parse_target(url) {
            Ok(t) => t,
            Err(e) => {
                self.metrics
                    .egress(&invoker.tenant, None, EgressDecision::Deny);
                return (None, Step::Refuse(format!("fetch refused: {e}")));
            }
        };
        let Some(tenant) = snapshot.policy.tenant(&invoker.tenant) else {
            return (
                Some(target),
                Step::Refuse("fetch refused: the tenant is no longer configured".into()),
            );
        };
        if tenant.egress.rules.is_empty() && tenant.egress.mode == EgressMode::Enforce {
            self.metrics
                .egress(&invoker.tenant, None, EgressDecision::Deny);
            return (
                Some(target),
                Step::Refuse(format!(
                    "{NETWORK_DISABLED} (the tenant has no egress rules)"
                )),
            );
        }
        let limiters = snapshot.limiters.get(&invoker.tenant);
        let host = target.host.to_string();
        let mut report_only = false;
        let (rule_index, rule) = match tenant.egress.decide(method, &target) {
            Decision::Allow { rule } => (Some(rule), tenant.egress.rules.get(rule).cloned()),
            Decision::Deny(reason) => {
                if tenant.egress.mode == EgressMode::Report {
                    report_only = true;
                    self.metrics
                        .egress(&invoker.tenant, None, EgressDecision::ReportDeny);
                    tracing::warn!(target: "isogate::egress", tenant = %invoker.tenant, host = %host, reason = %reason,
                        "egress would be denied (report mode): letting it through");
                    audit(
                        invoker,
                        method,
                        &target,
                        None,
                        "report_deny",
                        None,
                        None,
                        0,
                        started,
                    );
                    // The rule that matched the host (if any) still decides `allow_private`; it
                    // takes no rate-limit cell and attaches no credential.
                    (
                        None,
                        reason
                            .rule()
                            .and_then(|i| tenant.egress.rules.get(i).cloned()),
                    )
                } else {
                    self.metrics
                        .egress(&invoker.tenant, None, EgressDecision::Deny);
                    audit(
                        invoker, method, &target, None, "deny", None, None, 0, started,
                    );
                    return (
                        Some(target),
                        Step::Refuse(format!("fetch denied: {reason}")),
                    );
                }
            }
        };
        let rule_name = rule.as_ref().map(|r| r.name.as_str());
        if let Some(limiters) = limiters {
            if let Err(wait) = limiters.check(rule_index) {
                self.metrics
                    .egress(&invoker.tenant, rule_name, EgressDecision::RateLimited);
                audit(
                    invoker,
                    method,
                    &target,
                    rule_name,
                    "rate_limited",
                    None,
                    Some(429),
                    0,
                    started,
                );
                let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
                return (
                    Some(target),
                    Step::Respond(EgressResponse {
                        status: 429,
                        headers: vec![
                            ("retry-after".into(), retry.to_string()),
                            ("content-type".into(), "text/plain".into()),
                            ("x-isogate-egress".into(), "rate_limited".into()),
                        ],
                        body: format!(
                            "isogate: egress rate limit exceeded for {host}; retry after {retry} s"
                        )
                        .into_bytes(),
                        hops: 0,
                    }),
                );
            }
        }
        (Some(target), Step::Go { rule, report_only })
    }
}

impl Egress for GatewayEgress {
    fn authorize(&self, invoker: &Invoker, request: &EgressRequest) -> Verdict {
        match self.inner.decide(invoker, &request.method, &request.url).1 {
            Step::Go { rule, report_only } => Verdict::Proceed(Authorization {
                rule: rule.map(|r| r.name),
                report_only,
            }),
            Step::Respond(r) => Verdict::Respond(r),
            Step::Refuse(msg) => Verdict::Reject(msg),
        }
    }

    fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> BoxFuture<'static, Result<EgressResponse, EgressError>> {
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

impl Inner {
    async fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> Result<EgressResponse, EgressError> {
        let EgressRequest {
            mut method,
            url,
            mut headers,
            mut body,
            redirect,
            budget,
        } = request;
        let mut url = url::Url::parse(&url)
            .map_err(|e| EgressError::Rejected(format!("fetch refused: invalid URL: {e}")))?;
        let mut first: Option<Target> = None;
        let mut hops = 0u32;
        let mut injected: Vec<(String, SecretString)> = Vec::new();
        let mut rule_name = authorization.rule;
        let mut report_only = authorization.report_only;
        loop {
            let started = Instant::now();
            // The first hop was decided by `authorize`; every redirect hop is decided again.
            let (target, rule) = if hops == 0 {
                let target = parse_target(url.as_str())
                    .map_err(|e| EgressError::Rejected(format!("fetch refused: {e}")))?;
                let snapshot = self.snapshot.load();
                let rule = snapshot
                    .policy
                    .tenant(&invoker.tenant)
                    .and_then(|t| {
                        rule_name
                            .as_ref()
                            .and_then(|n| t.egress.rules.iter().find(|r| &r.name == n))
                    })
                    .cloned();
                (target, rule)
            } else {
                match self.decide(&invoker, &method, url.as_str()) {
                    (
                        Some(target),
                        Step::Go {
                            rule,
                            report_only: r,
                        },
                    ) => {
                        report_only = r;
                        (target, rule)
                    }
                    (_, Step::Respond(mut r)) => {
                        r.hops = hops;
                        return Ok(self.scrub(r, &injected));
                    }
                    (_, Step::Refuse(msg)) => return Err(EgressError::Rejected(msg)),
                    (None, Step::Go { .. }) => {
                        return Err(EgressError::Rejected(
                            "fetch refused: invalid redirect".into(),
                        ))
                    }
                }
            };
            rule_name = rule
                .as_ref()
                .map(|r| r.name.clone())
                .filter(|_| !report_only);
            let origin = first.get_or_insert_with(|| target.clone()).clone();
            let allow_private = rule.as_ref().is_some_and(|r| r.allow_private);
            let host = target.host.to_string();

            // SSRF guard for IP literals (names are checked by the guarded resolver).
            if let TargetHost::Ip(ip) = &target.host {
                if let Err(range) = address_allowed(*ip, allow_private) {
                    return Err(self.ssrf_refusal(
                        &invoker,
                        &method,
                        &target,
                        rule_name.as_deref(),
                        started,
                        format!("{ip} is a {range}"),
                    ));
                }
            }

            // Credential, only while the origin is the one the Worker asked for.
            let mut request_url = url.clone();
            let mut credential_name: Option<String> = None;
            let mut header_injection: Option<(String, String)> = None;
            let credential: Option<Arc<Credential>> = rule
                .as_ref()
                .filter(|_| !report_only)
                .and_then(|r| r.credential.as_deref())
                .filter(|_| same_origin(&origin, &target))
                .and_then(|name| self.snapshot.load().secrets.credential(name));
            if let Some(cred) = &credential {
                let secrets = self.snapshot.load().secrets.clone();
                let value = secrets.value(cred).await.map_err(|e| {
                    audit(
                        &invoker,
                        &method,
                        &target,
                        rule_name.as_deref(),
                        "deny",
                        Some(&cred.name),
                        None,
                        0,
                        started,
                    );
                    EgressError::Rejected(format!("fetch to {host} refused: {e}"))
                })?;
                match &cred.inject {
                    Injection::Header { header, .. } => {
                        header_injection = Some((
                            header.to_ascii_lowercase(),
                            cred.inject.render(value.expose_secret()),
                        ));
                    }
                    Injection::Query { query, .. } => {
                        let rendered = cred.inject.render(value.expose_secret());
                        let kept: Vec<(String, String)> = request_url
                            .query_pairs()
                            .filter(|(k, _)| k != query)
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        request_url
                            .query_pairs_mut()
                            .clear()
                            .extend_pairs(kept)
                            .append_pair(query, &rendered);
                    }
                }
                credential_name = Some(cred.name.clone());
                self.metrics
                    .credentials_injected
                    .with_label_values(&[&cred.name])
                    .inc();
                injected.push((cred.name.clone(), value));
            }

            let mut builder = http::Request::builder()
                .method(method.as_str())
                .uri(request_url.as_str());
            for (name, value) in &headers {
                let lower = name.to_ascii_lowercase();
                if forbidden_request_header(&lower)
                    || header_injection.as_ref().is_some_and(|(h, _)| *h == lower)
                {
                    continue;
                }
                builder = builder.header(lower.as_str(), value.as_str());
            }
            if let Some((name, value)) = &header_injection {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let hyper_request =
                builder
                    .body(Full::new(Bytes::from(body.clone())))
                    .map_err(|e| {
                        EgressError::Rejected(format!(
                            "fetch to {host} refused: invalid request: {e}"
                        ))
                    })?;

            if !report_only {
                // Report-mode passes were counted as `report_deny` when decided.
                self.metrics
                    .egress(&invoker.tenant, rule_name.as_deref(), EgressDecision::Allow);
            }
            let client = if allow_private {
                &self.private
            } else {
                &self.strict
            };
            let sent = tokio::time::timeout(RESPONSE_TIMEOUT, client.request(hyper_request)).await;
            let what = match sent {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => match guard_refusal(&e) {
                    Some(refused) => {
                        return Err(self.ssrf_refusal(
                            &invoker,
                            &method,
                            &target,
                            rule_name.as_deref(),
                            started,
                            refused.to_string(),
                        ))
                    }
                    None if e.is_connect() => Err("could not connect"),
                    None => Err("connection error"),
                },
                Err(_) => Err("timed out"),
            };
            let response = match what {
                Ok(response) => response,
                Err(what) => {
                    let cred = credential_name.as_deref();
                    audit(
                        &invoker,
                        &method,
                        &target,
                        rule_name.as_deref(),
                        "allow",
                        cred,
                        None,
                        0,
                        started,
                    );
                    return Err(EgressError::Rejected(format!(
                        "fetch to {host} failed: {what}"
                    )));
                }
            };
            let status = response.status().as_u16();
            let response_headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = tokio::time::timeout(
                RESPONSE_TIMEOUT,
                read_body_limited(response.into_body(), MAX_RESPONSE_BYTES),
            )
            .await
            .map_err(|_| EgressError::Rejected(format!("fetch to {host} failed: timed out")))?
            .map_err(|e| EgressError::Rejected(format!("fetch to {host} failed: {e}")))?;
            self.metrics
                .egress_duration
                .with_label_values(&[
                    invoker.tenant.as_str(),
                    rule_name.as_deref().unwrap_or(crate::metrics::NO_RULE),
                ])
                .observe(started.elapsed().as_secs_f64());
            audit(
                &invoker,
                &method,
                &target,
                rule_name.as_deref(),
                "allow",
                credential_name.as_deref(),
                Some(status),
                bytes.len(),
                started,
            );

            let follow = is_redirect(status) && location.is_some();
            if follow && redirect == "error" {
                return Err(EgressError::Rejected(format!(
                    "fetch to {host} was redirected and the request's redirect mode is \"error\""
                )));
            }
            if !follow || redirect == "manual" {
                return Ok(self.scrub(
                    EgressResponse {
                        status,
                        headers: response_headers,
                        body: bytes.to_vec(),
                        hops,
                    },
                    &injected,
                ));
            }
            // Follow the redirect.
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(EgressError::Rejected(format!(
                    "fetch to {host} failed: more than {MAX_REDIRECTS} redirects"
                )));
            }
            if hops > budget {
                return Err(EgressError::SubrequestLimit);
            }
            let next = url
                .join(location.as_deref().unwrap_or_default())
                .map_err(|_| {
                    EgressError::Rejected(format!(
                        "fetch to {host} failed: invalid redirect location"
                    ))
                })?;
            if status == 303 || ((status == 301 || status == 302) && method == "POST") {
                method = "GET".into();
                body.clear();
                headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("content-type")
                        && !k.eq_ignore_ascii_case("content-length")
                });
            }
            let next_target = parse_target(next.as_str())
                .map_err(|e| EgressError::Rejected(format!("fetch refused: redirect: {e}")))?;
            if !same_origin(&origin, &next_target) {
                // Credentials the Worker set itself do not follow a cross-origin redirect either.
                headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("cookie")
                });
            }
            url = next;
        }
    }

    /// Counts, audits and words a refusal by the SSRF guard.
    fn ssrf_refusal(
        &self,
        invoker: &Invoker,
        method: &str,
        target: &Target,
        rule: Option<&str>,
        started: Instant,
        why: String,
    ) -> EgressError {
        self.metrics
            .egress(&invoker.tenant, rule, EgressDecision::Deny);
        audit(
            invoker, method, target, rule, "deny", None, None, 0, started,
        );
        EgressError::Rejected(format!(
            "fetch to {} refused: {why} (SSRF guard)",
            target.host
        ))
    }

    fn scrub(
        &self,
        response: EgressResponse,
        injected: &[(String, SecretString)],
    ) -> EgressResponse {
        redact::scrub(response, injected, |credential| {
            self.metrics
                .secrets_redacted
                .with_label_values(&[credential])
                .inc();
        })
    }
}
