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
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The `redirect` mode of the request: `follow`, `manual` or `error`.
    pub redirect: String,
    /// Subrequests the invocation may still make after this one (redirect hops count). Set by
    /// [`EgressPort::fetch`]; whatever the caller puts here is overwritten.
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
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Redirect hops followed (each is one more subrequest).
    pub hops: u32,
    /// The URL of the response (after redirects), as the Worker would have written it: never
    /// with an injected credential (scrubbed like a header value). Empty: the request's URL.
    #[serde(default)]
    pub url: String,
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

/// What one `fetch()` came to, after the whole pipeline ([`EgressPort::fetch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fetched {
    /// Sent upstream: costs one subrequest, plus one per redirect hop (`hops`).
    Sent(EgressResponse),
    /// Answered without sending anything (e.g. 429 from a rate limit): costs nothing.
    Answered(EgressResponse),
    /// `fetch()` rejects with a `TypeError` carrying `message`. `charged`: the request had
    /// passed authorization and cost its subrequest (an upstream failure), as opposed to a
    /// refusal by policy, which costs nothing.
    Rejected {
        /// The message (never a secret).
        message: String,
        /// Whether the subrequest was spent.
        charged: bool,
    },
    /// The invocation's subrequest budget was spent: before sending (`redirecting: false`) or
    /// while following redirects.
    SubrequestLimit {
        /// Whether the budget ran out while following redirects.
        redirecting: bool,
    },
}

/// The one door as the engine sees it: a whole `fetch()` in one call, so that it can cross a
/// process wall in one round trip. Every [`Egress`] is an `EgressPort` (authorize → budget →
/// send, in that order, written once below); the worker process implements it by asking the
/// gateway, which runs the same code.
pub trait EgressPort: Send + Sync + 'static {
    /// Whether Workers have network access at all.
    fn enabled(&self) -> bool;

    /// Runs one outbound request. `left` is how many subrequests the invocation may still make
    /// *including* this one (0: the budget is spent — the request is still authorized, so that
    /// a policy refusal keeps its own message and an authorized one is audited as refused).
    fn fetch(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        left: u32,
    ) -> BoxFuture<'static, Fetched>;
}

impl<E: Egress + ?Sized> EgressPort for E {
    fn enabled(&self) -> bool {
        Egress::enabled(self)
    }

    fn fetch(
        &self,
        invoker: Invoker,
        mut request: EgressRequest,
        left: u32,
    ) -> BoxFuture<'static, Fetched> {
        let authorization = match self.authorize(&invoker, &request) {
            Verdict::Proceed(a) => a,
            Verdict::Respond(response) => {
                return Box::pin(std::future::ready(Fetched::Answered(response)))
            }
            Verdict::Reject(message) => {
                return Box::pin(std::future::ready(Fetched::Rejected {
                    message,
                    charged: false,
                }))
            }
        };
        if left == 0 {
            self.abandoned(&invoker, &request, &authorization);
            return Box::pin(std::future::ready(Fetched::SubrequestLimit {
                redirecting: false,
            }));
        }
        request.budget = left - 1;
        let sent = self.send(invoker, request, authorization);
        Box::pin(async move {
            match sent.await {
                Ok(response) => Fetched::Sent(response),
                Err(EgressError::Rejected(message)) => Fetched::Rejected {
                    message,
                    charged: true,
                },
                Err(EgressError::SubrequestLimit) => Fetched::SubrequestLimit { redirecting: true },
            }
        })
    }
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
