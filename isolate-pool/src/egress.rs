//! The one door from a Worker to the network.
//!
//! Every `fetch()` a Worker makes becomes an [`EgressRequest`] handed to the [`Egress`]
//! implementation the gateway installs. The pool never opens a socket itself. The request is
//! owned and serialisable, and the identity of the caller ([`Invoker`]) comes from host state,
//! never from the Worker's arguments.
//!
//! The pipeline is split in two so the pool can charge the invocation's subrequest budget at
//! the right step: [`Egress::authorize`] (URL, policy, rate limits; synchronous, no I/O) decides
//! first; only a request it lets through costs a subrequest; then [`Egress::send`] does the I/O
//! (SSRF-checked resolution, credential injection, redirects, response scrubbing).

use crate::api::Invoker;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What the Worker asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRequest {
    /// Method, upper-case.
    pub method: String,
    /// The URL exactly as the Worker's `Request` normalised it.
    pub url: String,
    /// Headers the Worker set.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The `redirect` mode of the request: `follow`, `manual` or `error`.
    pub redirect: String,
    /// Subrequests the invocation may still make after this one (redirect hops count).
    pub budget: u32,
}

/// [`Egress::authorize`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Go on to [`Egress::send`] with this authorization.
    Proceed(Authorization),
    /// Answer the Worker with this synthetic response (e.g. 429 from a rate limit); nothing is
    /// sent upstream and no subrequest is charged.
    Respond(EgressResponse),
    /// `fetch()` rejects with a `TypeError` carrying this message.
    Reject(String),
}

/// What [`Egress::authorize`] decided, handed back to [`Egress::send`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// Name of the matched rule, if any.
    pub rule: Option<String>,
    /// A would-be denial let through because the tenant's egress is in report mode (`rule` is
    /// then the rule that matched the host, if one did; no credential is attached).
    pub report_only: bool,
}

/// What the Worker gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Redirect hops followed (each is one more subrequest).
    pub hops: u32,
}

/// Why an outbound request did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EgressError {
    /// Refused (policy, SSRF guard, network disabled, upstream failure): `fetch()` rejects with
    /// a `TypeError` carrying this message. The message must never contain a secret.
    #[error("{0}")]
    Rejected(String),
    /// Following redirects would exceed the invocation's subrequest budget.
    #[error("subrequest limit exceeded while following redirects")]
    SubrequestLimit,
}

/// The gateway's egress pipeline, as the pool sees it.
pub trait Egress: Send + Sync + 'static {
    /// Whether Workers have network access at all. When false, `fetch()` rejects with
    /// [`NETWORK_DISABLED`] before the subrequest budget is charged.
    fn enabled(&self) -> bool {
        true
    }

    /// Steps that need no I/O: URL parsing, policy decision, rate limits.
    fn authorize(&self, invoker: &Invoker, request: &EgressRequest) -> Verdict;

    /// An authorized request that the pool did not send because the invocation's subrequest
    /// budget was spent: the gateway records it (its audit line) and sends nothing.
    fn abandoned(
        &self,
        _invoker: &Invoker,
        _request: &EgressRequest,
        _authorization: &Authorization,
    ) {
    }

    /// Performs an authorized request.
    fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> BoxFuture<'static, Result<EgressResponse, EgressError>>;
}

/// The message `fetch()` rejects with when a Worker has no network access.
pub const NETWORK_DISABLED: &str = "network access is disabled for this Worker";

/// An egress that refuses everything: used when no egress is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledEgress;

impl Egress for DisabledEgress {
    fn enabled(&self) -> bool {
        false
    }

    fn authorize(&self, _invoker: &Invoker, _request: &EgressRequest) -> Verdict {
        Verdict::Reject(NETWORK_DISABLED.to_string())
    }

    fn send(
        &self,
        _invoker: Invoker,
        _request: EgressRequest,
        _authorization: Authorization,
    ) -> BoxFuture<'static, Result<EgressResponse, EgressError>> {
        Box::pin(async { Err(EgressError::Rejected(NETWORK_DISABLED.to_string())) })
    }
}
