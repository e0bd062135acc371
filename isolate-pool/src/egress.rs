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

use crate::api::{BodyPart, Invoker};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

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
    /// `fetch()` rejects with a `TypeError` carrying the failure's message and, as properties
    /// the code can act on, its `code`, `rule`, `reason` and `hint` (a policy denial).
    Refuse(Box<ApiFailure>),
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
    /// Body bytes: the whole body, or (when `streamed`) what of it arrived with the head.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// More of the body follows through the [`BodyStream`] handed over with this response.
    #[serde(default)]
    pub streamed: bool,
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
    /// Answered by the gateway without sending anything (a rate limit checked only once the
    /// request was on its way, e.g. against a shared store): like [`Verdict::Respond`], the
    /// subrequest is not charged.
    #[error("answered by the gateway (status {})", .0.status)]
    Answered(EgressResponse),
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

    /// Performs an authorized request. A response whose body is still arriving comes with the
    /// [`BodyStream`] of the rest (and `streamed` set).
    fn send(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        authorization: Authorization,
    ) -> BoxFuture<'static, Result<Delivered, EgressError>>;
}

/// A response as the egress hands it over: its head with what of the body has arrived, and the
/// rest of the body when it is still arriving.
pub type Delivered = (EgressResponse, Option<BodyStream>);

/// What one `fetch()` came to, and the rest of a streamed response body ([`Fetched::Sent`]
/// with `streamed` set).
pub type FetchReply = (Fetched, Option<BodyStream>);

/// Bytes of a streamed body that may be on their way to a reader that has not taken them yet:
/// a producer waits for the reader before sending more (so a slow Worker holds back a fast
/// upstream instead of buffering its body).
pub const BODY_WINDOW: usize = 256 * 1024;

/// The window share of one chunk: what a producer waits for before sending it and a reader
/// gives back on taking it (a chunk larger than the window takes all of it).
fn window_share(len: usize) -> u32 {
    len.clamp(1, BODY_WINDOW) as u32
}

/// The rest of a response body, as it arrives: chunks, then its end. Dropping it tells the
/// producer to stop (an in-process producer sees its channel closed; across the process wall
/// the drop guard cancels the gateway's side).
pub struct BodyStream {
    parts: mpsc::UnboundedReceiver<BodyPart>,
    credit: Box<dyn Fn(u32) + Send + Sync>,
    ended: bool,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl BodyStream {
    /// A stream fed by `parts`; `credit(n)` is called with each chunk's window share as the
    /// reader takes it; `guard` is dropped with the stream.
    pub fn new(
        parts: mpsc::UnboundedReceiver<BodyPart>,
        credit: impl Fn(u32) + Send + Sync + 'static,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> BodyStream {
        BodyStream {
            parts,
            credit: Box::new(credit),
            ended: false,
            _guard: guard,
        }
    }

    /// The next chunk; `None` at the end; `Err` when the body broke off (the producer went
    /// away without an end counts as broken off).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        if self.ended {
            return None;
        }
        match self.parts.recv().await {
            Some(BodyPart::Chunk(bytes)) => {
                (self.credit)(window_share(bytes.len()));
                Some(Ok(bytes))
            }
            Some(BodyPart::End(Ok(()))) => {
                self.ended = true;
                None
            }
            Some(BodyPart::End(Err(e))) => {
                self.ended = true;
                Some(Err(e))
            }
            None => {
                self.ended = true;
                Some(Err("the response body broke off".into()))
            }
        }
    }
}

/// The producing end of an in-process [`BodyStream`] (see [`body_channel`]).
#[derive(Debug)]
pub struct BodyWriter {
    parts: mpsc::UnboundedSender<BodyPart>,
    window: Window,
}

impl BodyWriter {
    /// Sends a chunk once the window has room for it; false when the reader is gone.
    pub async fn chunk(&mut self, bytes: Vec<u8>) -> bool {
        if bytes.is_empty() {
            return !self.parts.is_closed();
        }
        tokio::select! {
            room = self.window.take(bytes.len()) => if !room {
                return false;
            },
            // The reader went away while the window was full.
            () = self.parts.closed() => return false,
        }
        self.parts.send(BodyPart::Chunk(bytes)).is_ok()
    }

    /// Ends the body: complete (`Ok`) or broken off with a message (never a secret).
    pub fn end(self, result: Result<(), String>) {
        let _ = self.parts.send(BodyPart::End(result));
    }

    /// Whether the reader dropped its stream.
    pub fn is_closed(&self) -> bool {
        self.parts.is_closed()
    }

    /// Resolves when the reader dropped its stream.
    pub async fn closed(&self) {
        self.parts.closed().await
    }
}

/// A window of [`BODY_WINDOW`] bytes that a reader refills: `give` adds back at most what
/// was taken, whatever a (possibly hostile) peer claims. Closing it (the reader is gone) makes
/// every `take` answer false at once.
#[derive(Debug, Clone)]
pub struct Window(Option<Arc<Semaphore>>);

impl Default for Window {
    fn default() -> Self {
        Window(Some(Arc::new(Semaphore::new(BODY_WINDOW))))
    }
}

impl Window {
    /// A window that is never full.
    pub fn unbounded() -> Window {
        Window(None)
    }

    /// Waits until `len` bytes' share is free and takes it; false once closed.
    pub async fn take(&self, len: usize) -> bool {
        let Some(semaphore) = &self.0 else {
            return true;
        };
        match semaphore.acquire_many(window_share(len)).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back `n` bytes' share, never beyond the window.
    pub fn give(&self, n: u32) {
        let Some(semaphore) = &self.0 else {
            return;
        };
        let room = BODY_WINDOW.saturating_sub(semaphore.available_permits());
        let n = (n as usize).min(room);
        if n > 0 {
            semaphore.add_permits(n);
        }
    }

    /// The reader is gone: every `take`, waiting or later, answers false.
    pub fn close(&self) {
        if let Some(semaphore) = &self.0 {
            semaphore.close();
        }
    }
}

/// An in-process body channel with a [`BODY_WINDOW`] of bytes in flight.
pub fn body_channel() -> (BodyWriter, BodyStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let window = Window::default();
    let giver = window.clone();
    let stream = BodyStream::new(rx, move |n| giver.give(n), None);
    (BodyWriter { parts: tx, window }, stream)
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
        /// What the code can act on (`e.code`, `e.rule`, `e.reason`, `e.hint`), for a denial.
        #[serde(default)]
        detail: Option<Box<ApiFailure>>,
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
    ) -> BoxFuture<'static, FetchReply>;

    /// Calls a tenant API (`env.<api>.<tool>(args)`). `left` as for [`EgressPort::fetch`]: the
    /// call is checked first (API, tool, arguments) and a refused call costs nothing.
    fn api(&self, invoker: Invoker, call: ApiCall, left: u32) -> BoxFuture<'static, ApiAnswer> {
        let _ = (invoker, call, left);
        Box::pin(std::future::ready(ApiAnswer::Failed {
            failure: ApiFailure::new(ApiErrorCode::ApiNotFound, NO_APIS),
            charged: false,
        }))
    }
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
    ) -> BoxFuture<'static, FetchReply> {
        let ready = |fetched| -> BoxFuture<'static, FetchReply> {
            Box::pin(std::future::ready((fetched, None)))
        };
        let authorization = match self.authorize(&invoker, &request) {
            Verdict::Proceed(a) => a,
            Verdict::Respond(response) => return ready(Fetched::Answered(response)),
            Verdict::Reject(message) => {
                return ready(Fetched::Rejected {
                    message,
                    charged: false,
                    detail: None,
                })
            }
            Verdict::Refuse(failure) => {
                return ready(Fetched::Rejected {
                    message: failure.message.clone(),
                    charged: false,
                    detail: Some(failure),
                })
            }
        };
        if left == 0 {
            self.abandoned(&invoker, &request, &authorization);
            return ready(Fetched::SubrequestLimit { redirecting: false });
        }
        request.budget = left - 1;
        let sent = self.send(invoker, request, authorization);
        Box::pin(async move {
            match sent.await {
                Ok((response, rest)) => (Fetched::Sent(response), rest),
                Err(EgressError::Rejected(message)) => (
                    Fetched::Rejected {
                        message,
                        charged: true,
                        detail: None,
                    },
                    None,
                ),
                Err(EgressError::SubrequestLimit) => {
                    (Fetched::SubrequestLimit { redirecting: true }, None)
                }
                Err(EgressError::Answered(response)) => (Fetched::Answered(response), None),
            }
        })
    }
}

/// A call of a tenant API from a Worker: `await env.<api>.<tool>(args)`. The gateway finds the
/// API among the tenant's (by the invocation it dispatched, never by anything the Worker says),
/// checks `args` against the tool's schema and sends one upstream request through the egress
/// pipeline, so the tenant's egress rules, credentials, rate limits and scrubbing apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCall {
    /// The API's name (`env.<api>`).
    pub api: String,
    /// The tool's name as the Worker wrote it (a JS property name).
    pub tool: String,
    /// The argument object as JSON text (at most [`MAX_API_ARGS_BYTES`]).
    pub args: String,
    /// A client-side tool of an execute (`<namespace>.<tool>(args)`, `api` is the namespace):
    /// the gateway hands the call to the client that sent the code instead of an upstream.
    /// It sends nothing out and costs no subrequest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client: bool,
}

/// Largest argument object of one API call, as JSON text.
pub const MAX_API_ARGS_BYTES: usize = 4 * 1024 * 1024;

/// The bound on an API call's (or a client-side tool call's) arguments: checked by the engine
/// before the call leaves the isolate, and again by the gateway, which does not trust a worker
/// process to have.
pub fn check_api_args(args: &str) -> Result<(), ApiFailure> {
    if args.len() > MAX_API_ARGS_BYTES {
        return Err(ApiFailure::new(
            ApiErrorCode::InvalidArguments,
            format!(
                "the arguments are {} bytes of JSON, more than the limit of {MAX_API_ARGS_BYTES}",
                args.len()
            ),
        ));
    }
    Ok(())
}

/// What an API call came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiAnswer {
    /// The tool's result as JSON text. Costs one subrequest.
    Done(String),
    /// The call failed: the promise rejects with an `ApiError` carrying these fields.
    /// `charged`: a request was sent upstream (it cost its subrequest).
    Failed {
        /// What went wrong.
        failure: ApiFailure,
        /// Whether the subrequest was spent.
        charged: bool,
    },
    /// The invocation's subrequest budget was spent: nothing was sent.
    SubrequestLimit,
}

/// What went wrong with an API call: `e.code` in JS, and the `outcome` label of
/// `isogate_api_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiErrorCode {
    /// The tenant has no API of that name.
    ApiNotFound,
    /// The API has no tool of that name.
    ToolNotFound,
    /// The arguments do not match the tool's input schema (nothing was sent).
    InvalidArguments,
    /// The tool's input schema cannot be compiled, so no arguments can be checked.
    InvalidSchema,
    /// The tenant's egress policy refused the upstream request.
    EgressDenied,
    /// The gateway answered without sending (a status other than 429).
    EgressAnswered,
    /// An egress rate limit refused the call.
    RateLimited,
    /// The upstream answered with an error (HTTP status, JSON-RPC error, bad answer).
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream could not be reached (connection, TLS, SSRF guard).
    UpstreamUnreachable,
    /// The tool ran and reported an error (MCP `isError`).
    ToolError,
    /// The API's tool list could not be loaded, or the call could not be made at all.
    ApiUnavailable,
    /// Too many client-side tool calls of the execution are waiting for the client's answer.
    TooManyCalls,
}

impl ApiErrorCode {
    /// Every code, in a stable order (metrics are initialised with them).
    pub const ALL: &'static [ApiErrorCode] = &[
        ApiErrorCode::ApiNotFound,
        ApiErrorCode::ToolNotFound,
        ApiErrorCode::InvalidArguments,
        ApiErrorCode::InvalidSchema,
        ApiErrorCode::EgressDenied,
        ApiErrorCode::EgressAnswered,
        ApiErrorCode::RateLimited,
        ApiErrorCode::UpstreamError,
        ApiErrorCode::UpstreamTimeout,
        ApiErrorCode::UpstreamUnreachable,
        ApiErrorCode::ToolError,
        ApiErrorCode::ApiUnavailable,
        ApiErrorCode::TooManyCalls,
    ];

    /// The code as a metric label (`egress_denied`).
    pub fn label(self) -> &'static str {
        match self {
            ApiErrorCode::ApiNotFound => "api_not_found",
            ApiErrorCode::ToolNotFound => "tool_not_found",
            ApiErrorCode::InvalidArguments => "invalid_arguments",
            ApiErrorCode::InvalidSchema => "invalid_schema",
            ApiErrorCode::EgressDenied => "egress_denied",
            ApiErrorCode::EgressAnswered => "egress_answered",
            ApiErrorCode::RateLimited => "rate_limited",
            ApiErrorCode::UpstreamError => "upstream_error",
            ApiErrorCode::UpstreamTimeout => "upstream_timeout",
            ApiErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ApiErrorCode::ToolError => "tool_error",
            ApiErrorCode::ApiUnavailable => "api_unavailable",
            ApiErrorCode::TooManyCalls => "too_many_calls",
        }
    }

    /// The code as JS sees it (`EGRESS_DENIED`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::ApiNotFound => "API_NOT_FOUND",
            ApiErrorCode::ToolNotFound => "TOOL_NOT_FOUND",
            ApiErrorCode::InvalidArguments => "INVALID_ARGUMENTS",
            ApiErrorCode::InvalidSchema => "INVALID_SCHEMA",
            ApiErrorCode::EgressDenied => "EGRESS_DENIED",
            ApiErrorCode::EgressAnswered => "EGRESS_ANSWERED",
            ApiErrorCode::RateLimited => "RATE_LIMITED",
            ApiErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ApiErrorCode::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            ApiErrorCode::UpstreamUnreachable => "UPSTREAM_UNREACHABLE",
            ApiErrorCode::ToolError => "TOOL_ERROR",
            ApiErrorCode::ApiUnavailable => "API_UNAVAILABLE",
            ApiErrorCode::TooManyCalls => "TOO_MANY_CALLS",
        }
    }
}

/// Why an API call failed, as the Worker's code sees it (`e.code`, `e.message`, …). Never a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFailure {
    /// What kind of failure it is.
    pub code: ApiErrorCode,
    /// What happened, for a person or an agent.
    pub message: String,
    /// The egress rule that decided, when one did.
    #[serde(default)]
    pub rule: Option<String>,
    /// The machine-readable reason of a denial (the egress audit reason).
    #[serde(default)]
    pub reason: Option<String>,
    /// What the operator would have to change to allow the call, when that is known.
    #[serde(default)]
    pub hint: Option<String>,
    /// The upstream's HTTP status, when there was one.
    #[serde(default)]
    pub status: Option<u16>,
}

impl ApiFailure {
    /// A failure with a code and a message and nothing else.
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            code,
            message: message.into(),
            rule: None,
            reason: None,
            hint: None,
            status: None,
        }
    }
}

/// The message of an API call when the gateway serves no APIs.
pub const NO_APIS: &str = "this gateway serves no tenant APIs";

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
    ) -> BoxFuture<'static, Result<Delivered, EgressError>> {
        Box::pin(async { Err(EgressError::Rejected(NETWORK_DISABLED.to_string())) })
    }
}
