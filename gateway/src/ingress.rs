//! The ingress HTTP API (a pingora [`HttpServerApp`]): authentication, body limits, tenant
//! admission, and the routes that reach the isolate pool.
//!
//! An answer given before the request body was read (401, 404, 413, 503 ...) is followed by a
//! bounded discard of the rest of that body, as nginx does ([`Unread`]): closing a socket with
//! unread bytes makes the kernel send a reset that destroys the answer at clients which send the
//! whole body before they read (Python urllib/requests, Node fetch). `Expect: 100-continue` is
//! honoured: `100 Continue` only once the request passed every check that needs no body.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/execute` | Code Mode: run an async function once, answer `{result, logs, error}` |
//! | `POST /v1/load` | `load()`: run WorkerCode once in a fresh isolate, answer its Response |
//! | `PUT /v1/workers/{id}` | store WorkerCode under an immutable id |
//! | `GET /v1/workers` | the tenant's ids with warm/cold state |
//! | `DELETE /v1/workers/{id}` | evict and forget |
//! | `GET /v1/apis.d.ts` | TypeScript declarations of the tenant's APIs (`env.<api>.<tool>`) |
//! | `GET /v1/receipts/{id}` | the receipt of a `load()`/`get()` (`isogate-receipt` header) |
//! | `POST /mcp` | the MCP endpoint for agents: tools `search` and `execute` ([`crate::mcp`]) |
//! | `ANY /w/{id}/{rest}` | `get(id)`: dispatch to the cached Worker |
//!
//! Before any of these, the request's `Host` and path choose between the API and a tenant's
//! public route (`isogate_policy::RouteTable::resolve`): a route dispatches the request,
//! unchanged and without an API key, to the tenant's stored Worker, under the route's header,
//! body and per-client rate limits and the tenant's limits; its errors tell the public client
//! the kind only (`ApiError::public_body`).

use crate::admission::TenantGate;
use crate::error::ApiError;
use crate::public::{head_bytes, https_location, Forwarded, Scheme};
use crate::receipts::Trace;
use crate::state::{AppState, Snapshot};
use crate::store::PutOutcome;
use async_trait::async_trait;
use isogate_policy::{
    check_worker_id, LimitOverrides as PolicyOverrides, PublicRoute, RouteMatch, TenantPolicy,
};
use isogate_pool::{
    BodyPart, BodySink, Hold, HttpRequest, HttpResponse, Invocation, Invoker, LimitOverrides,
    Limits, SealedCode, Window, WorkerCode,
};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The least number of unread request-body bytes the gateway reads and discards after an early
/// answer; a tenant's bound is twice its `max_body_bytes` when that is larger.
pub const DISCARD_MIN_BYTES: u64 = 8 << 20;

/// How long the gateway keeps reading and discarding an unread request body after an early
/// answer; a client still sending after that is cut off.
pub const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Seconds an idle keep-alive connection stays open (pingora's default for `ServeHttp` apps).
const KEEPALIVE_S: u64 = 60;

/// The ingress app (one per listener: plain HTTP and TLS).
pub struct Ingress {
    state: Arc<AppState>,
    scheme: Scheme,
}

impl Ingress {
    /// Builds the plain-HTTP app over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self::with_scheme(state, Scheme::Http)
    }

    /// Builds the app of the listener that speaks `scheme`.
    pub fn with_scheme(state: Arc<AppState>, scheme: Scheme) -> Self {
        Ingress { state, scheme }
    }
}

/// A finished HTTP answer.
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A Worker's streamed body: its parts, written to the client as they come (chunked).
    stream: Option<BodyParts>,
}

/// The receiving end of a Worker's streamed response body: the parts, and the window that
/// paces the Worker (room is given back as parts are written to the client's socket, so a
/// slow client holds the Worker's stream back; dropping this closes it, which cancels the
/// stream).
pub(crate) struct BodyParts {
    parts: mpsc::UnboundedReceiver<BodyPart>,
    window: Window,
    /// While waiting for the next part, watch the connection: a client that closes it ends
    /// the stream at once (a streamed execute, whose events may be far apart).
    watch_client: bool,
}

impl BodyParts {
    async fn recv(&mut self) -> Option<BodyPart> {
        self.parts.recv().await
    }

    /// `n` bytes were written to the client: the Worker may send that much more.
    fn written(&self, n: usize) {
        self.window.give(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

impl Drop for BodyParts {
    fn drop(&mut self) {
        self.window.close();
    }
}

/// A sink for a Worker's streamed response body and the receiving end the ingress writes from.
/// The sink says the body is no longer wanted once the receiver is gone (the client left).
fn body_channel() -> (BodySink, BodyParts) {
    let (tx, rx) = mpsc::unbounded_channel();
    let window = Window::default();
    let sink = BodySink::new(move |part| tx.send(part).is_ok(), window.clone());
    (
        sink,
        BodyParts {
            parts: rx,
            window,
            watch_client: false,
        },
    )
}

impl Reply {
    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
            stream: None,
        }
    }

    pub(crate) fn error(e: &ApiError) -> Reply {
        Reply::error_with(e, e.body())
    }

    /// An error for a public route's client ([`ApiError::public_body`]).
    fn public_error(e: &ApiError) -> Reply {
        Reply::error_with(e, e.public_body())
    }

    fn error_with(e: &ApiError, body: serde_json::Value) -> Reply {
        let mut r = Reply::json(e.status(), &body);
        r.headers
            .extend(e.headers().into_iter().map(|(k, v)| (k.to_string(), v)));
        r
    }

    /// A permanent redirect that keeps the method (308).
    fn redirect(location: String) -> Reply {
        Reply {
            status: 308,
            headers: vec![("location".into(), location)],
            body: Vec::new(),
            stream: None,
        }
    }

    fn from_worker(resp: HttpResponse, stream: BodyParts) -> Reply {
        Reply {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
            stream: resp.streamed.then_some(stream),
        }
    }

    /// Builds the response; headers that are hop-by-hop or not valid HTTP are dropped, the
    /// length is ours.
    pub(crate) fn into_http(self) -> http::Response<Vec<u8>> {
        self.into_http_for(false)
    }

    /// [`Reply::into_http`] for a request whose method was HEAD (`head`) or not. Responses
    /// that carry no content (1xx, 204, 205, 304, any answer to HEAD) go out without a body;
    /// 204 and 304 without `Content-Length`, 205 with `Content-Length: 0`, HEAD without one (the
    /// gateway cannot know that a Worker's HEAD body is the length of its GET body). A status
    /// outside 200-599 is a gateway fault: 500.
    pub(crate) fn into_http_for(self, head: bool) -> http::Response<Vec<u8>> {
        self.split_for(head).0
    }

    /// [`Reply::into_http_for`], and a streamed body's parts apart (the response then has
    /// `Transfer-Encoding: chunked` and an empty body, unless it carries no content).
    fn split_for(mut self, head: bool) -> (http::Response<Vec<u8>>, Option<BodyParts>) {
        let stream = self.stream.take();
        let status = http::StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let no_content = head
            || matches!(
                status,
                http::StatusCode::NO_CONTENT
                    | http::StatusCode::RESET_CONTENT
                    | http::StatusCode::NOT_MODIFIED
            );
        let mut builder = http::Response::builder().status(status);
        if let Some(headers) = builder.headers_mut() {
            for (name, value) in &self.headers {
                let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) else {
                    continue;
                };
                if is_hop_by_hop(name.as_str()) || name == http::header::CONTENT_LENGTH {
                    // `connection: close` is ours to set on errors that close the connection.
                    if !(name == http::header::CONNECTION && value == "close") {
                        continue;
                    }
                }
                headers.append(name, value);
            }
            if status == http::StatusCode::RESET_CONTENT {
                headers.insert(http::header::CONTENT_LENGTH, 0.into());
            } else if !no_content && stream.is_some() {
                headers.insert(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static("chunked"),
                );
            } else if !no_content {
                headers.insert(http::header::CONTENT_LENGTH, self.body.len().into());
            }
        }
        let body = if no_content { Vec::new() } else { self.body };
        let response = builder
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()));
        // A body-less answer drops the stream's receiver: the isolate stops the Worker's stream.
        (response, stream.filter(|_| !no_content))
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// What happens to a request body that was not (fully) read when the answer is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// The body was read (or there is none): the connection is reusable as usual.
    Nothing,
    /// `Content-Length` says how much is left, within the bound: answer with keep-alive, then
    /// read and discard the rest (at most [`DISCARD_TIME`]) and reuse the connection.
    Skip,
    /// Answer with `Connection: close`, half-close, then read and discard up to `limit` bytes
    /// for at most [`DISCARD_TIME`] before closing.
    Linger {
        /// Bytes to discard at most.
        limit: u64,
    },
}

/// The request's declared body length, when it is framed by `Content-Length` alone.
fn declared_length(session: &ServerSession) -> Option<u64> {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether an HTTP/1.1 client waits for `100 Continue` before it sends the body.
fn expects_continue(session: &ServerSession) -> bool {
    let header = session.req_header();
    header.version == http::Version::HTTP_11
        && header
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Decides what to do with the body left unread after the answer (see [`Unread`]).
fn unread_plan(session: &mut ServerSession, seen: &Seen) -> Unread {
    if session.is_body_done() {
        return Unread::Nothing;
    }
    let limit = seen.discard_limit();
    // A client still waiting for `100 Continue` sends no body after a final answer (or sends it
    // anyway, RFC 9110 §10.1.1): only closing makes the connection's framing unambiguous.
    let waiting_for_continue = expects_continue(session) && !seen.continued;
    let left = declared_length(session).map(|n| n.saturating_sub(session.body_bytes_read() as u64));
    if !waiting_for_continue
        && !seen.close
        && session.get_keepalive().is_some()
        && left.is_some_and(|n| n <= limit)
    {
        Unread::Skip
    } else {
        Unread::Linger {
            limit: limit.saturating_sub(session.body_bytes_read() as u64),
        }
    }
}

/// After the answer: half-closes the connection (the client reads the answer to its end), then
/// reads and discards what the client still sends, up to `limit` bytes and [`DISCARD_TIME`],
/// never holding more than one read buffer, then closes.
async fn linger(session: ServerSession, limit: u64) {
    let ServerSession::H1(h1) = session else {
        return;
    };
    let mut stream = h1.into_inner();
    let discard = async {
        let _ = stream.shutdown().await;
        let mut buf = vec![0u8; 16 << 10];
        let mut discarded = 0u64;
        while discarded < limit {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return discarded,
                Ok(n) => discarded += n as u64,
            }
        }
        discarded
    };
    match tokio::time::timeout(DISCARD_TIME, discard).await {
        Ok(discarded) => tracing::debug!(discarded, "unread request body discarded"),
        Err(_) => tracing::debug!("client still sending after the discard time; closing"),
    }
}

#[async_trait]
impl HttpServerApp for Ingress {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a request head");
                return None;
            }
        }
        let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_S);
        session.set_keepalive(keepalive);
        // What an early answer does to the connection is decided here (`unread_plan`), not by
        // pingora's close-on-early-response default.
        session.set_close_on_response_before_downstream_finish(false);
        let head = session.req_header().method == http::Method::HEAD;
        let (reply, seen) = self.response(&mut session).await;
        let unread = unread_plan(&mut session, &seen);
        if seen.close || matches!(unread, Unread::Linger { .. }) {
            session.set_keepalive(None);
        }
        let (response, stream) = reply.split_for(head);
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = session.write_response_header(Box::new(header)).await {
            tracing::debug!(error = %e, "cannot write the response head");
            return None;
        }
        match stream {
            Some(parts) => {
                if !write_streamed(&mut session, parts).await {
                    // Broken off (the Worker's stream failed or the client left): the chunked
                    // body is not terminated, so the client sees it incomplete; no reuse.
                    return None;
                }
            }
            None => {
                if let Err(e) = session.write_response_body(body.into(), true).await {
                    tracing::debug!(error = %e, "cannot write the response body");
                    return None;
                }
            }
        }
        if let Unread::Linger { limit } = unread {
            linger(session, limit).await;
            return None;
        }
        // `finish` reads and discards what is left of the body (bounded by `unread_plan` and
        // by this timeout) before the connection is reused.
        session.set_total_drain_timeout(Some(DISCARD_TIME));
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!(error = %e, "connection not reusable after the answer");
                None
            }
        }
    }
}

impl Ingress {
    /// The answer to one request, and what was learnt about it.
    async fn response(&self, session: &mut ServerSession) -> (Reply, Seen) {
        let started = Instant::now();
        let method = session.req_header().method.to_string();
        let mut seen = Seen::default();
        if self.state.refusing.load(Ordering::SeqCst) {
            seen.close = true;
            self.state.metrics.request_failure(&ApiError::Draining);
            return (Reply::error(&ApiError::Draining), seen);
        }
        let _in_flight = InFlight::enter(&self.state);
        let reply = match self.handle(session, &mut seen).await {
            Ok(r) => r,
            Err(e) => {
                match &e {
                    ApiError::TooManyRequests { .. } => self.reject(&seen, "concurrency"),
                    ApiError::Overloaded => self.reject(&seen, "overloaded"),
                    _ => {}
                }
                seen.close = e.closes_connection();
                self.state.metrics.request_failure(&e);
                if seen.public {
                    Reply::public_error(&e)
                } else {
                    Reply::error(&e)
                }
            }
        };
        let mut reply = reply;
        if let Some(id) = &seen.receipt {
            reply.headers.push((RECEIPT_HEADER.to_string(), id.clone()));
        }
        let tenant = seen.tenant.as_deref().unwrap_or(crate::metrics::NO_TENANT);
        self.state
            .metrics
            .request(tenant, seen.route, reply.status, started.elapsed());
        if let Some(route) = &seen.route_name {
            self.state
                .metrics
                .route_request(tenant, route, reply.status);
        }
        tracing::debug!(
            method,
            tenant,
            route = seen.route,
            status = reply.status,
            duration_us = started.elapsed().as_micros() as u64,
            "ingress request"
        );
        (reply, seen)
    }
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a AppState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a AppState) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.metrics.in_flight.inc();
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.in_flight.dec();
    }
}

/// What the request turned out to be, for metrics and logs (bounded values only).
struct Seen {
    tenant: Option<String>,
    /// The id of the request's receipt (`load()`, `get()`), sent as `isogate-receipt`.
    receipt: Option<String>,
    route: &'static str,
    /// The tenant's `max_body_bytes`, once the tenant is known.
    max_body_bytes: Option<u64>,
    /// `100 Continue` was sent.
    continued: bool,
    /// The answer closes the connection.
    close: bool,
    /// The request is public traffic (a route, or a host no route claims): errors tell the
    /// kind only.
    public: bool,
    /// The public route's name.
    route_name: Option<String>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            receipt: None,
            tenant: None,
            route: "unknown",
            max_body_bytes: None,
            continued: false,
            close: false,
            public: false,
            route_name: None,
        }
    }
}

impl Seen {
    /// Unread body bytes the gateway discards at most after an early answer.
    fn discard_limit(&self) -> u64 {
        self.max_body_bytes.map_or(DISCARD_MIN_BYTES, |m| {
            m.saturating_mul(2).max(DISCARD_MIN_BYTES)
        })
    }
}

/// The routes, parsed from the path.
enum Route {
    Execute,
    Load,
    Workers,
    Worker(String),
    Dispatch {
        id: String,
        rest: String,
    },
    ApiDeclarations,
    Mcp,
    Receipt(String),
    /// `POST /v1/executions/{execution}/calls/{call}`: the client's answer to a tool call.
    CallReply {
        execution: String,
        call: String,
    },
}

fn parse_route(path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::NotFound(format!("no route for {path}"));
    match path {
        "/v1/execute" => return Ok(Route::Execute),
        "/v1/load" => return Ok(Route::Load),
        "/v1/workers" | "/v1/workers/" => return Ok(Route::Workers),
        "/v1/apis.d.ts" => return Ok(Route::ApiDeclarations),
        "/mcp" => return Ok(Route::Mcp),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/v1/executions/") {
        let hex_id =
            |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        return match rest.split_once("/calls/") {
            Some((execution, call))
                if hex_id(execution)
                    && !call.is_empty()
                    && call.len() <= 20
                    && call.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Route::CallReply {
                    execution: execution.to_string(),
                    call: call.to_string(),
                })
            }
            _ => Err(not_found()),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/receipts/") {
        if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Route::Receipt(id.to_string()));
        }
        return Err(not_found());
    }
    if let Some(id) = path.strip_prefix("/v1/workers/") {
        return Ok(Route::Worker(valid_id(id)?.to_string()));
    }
    if let Some(tail) = path.strip_prefix("/w/") {
        let (id, rest) = tail.split_once('/').unwrap_or((tail, ""));
        return Ok(Route::Dispatch {
            id: valid_id(id)?.to_string(),
            rest: rest.to_string(),
        });
    }
    Err(not_found())
}

/// Worker ids: the one rule of `isogate_policy::check_worker_id`.
fn valid_id(id: &str) -> Result<&str, ApiError> {
    check_worker_id(id).map_err(ApiError::BadRequest)?;
    Ok(id)
}

/// The host a request names: its `Host` header, else the authority of an absolute-form target.
fn request_host(header: &pingora::http::RequestHeader) -> Option<&str> {
    header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))
}

/// Whether the client asks for NDJSON (`Accept: application/x-ndjson`, among others).
fn accepts_ndjson(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            part.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-ndjson"))
        })
}

fn bearer_key(session: &ServerSession) -> Option<&str> {
    let value = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Reads the whole body, refusing more than `limit` bytes (by `Content-Length` before reading
/// anything, and by counting while reading). A client that waits for `100 Continue` gets it
/// here, once the declared length is known to fit. Every chunk is charged to `held` (the
/// gateway's in-flight budget) before it is kept.
async fn read_body(
    session: &mut ServerSession,
    limit: u64,
    seen: &mut Seen,
    held: &mut crate::inflight::InflightPermit,
) -> Result<Vec<u8>, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if expects_continue(session) && !session.is_body_done() {
        session
            .write_continue_response()
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot answer 100-continue: {e}")))?;
        seen.continued = true;
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                held.grow(chunk.len())
                    .await
                    .map_err(|e| ApiError::MemoryBudget(e.to_string()))?;
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "cannot read request body: {e}"
                )))
            }
        }
    }
}

/// Parses a JSON body; the error names the field that is wrong.
fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::BadRequest(format!("malformed {what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("malformed {what}: {path}: {inner}"))
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    code: String,
    #[serde(default = "empty_object")]
    env: serde_json::Value,
    #[serde(default)]
    limits: Option<LimitOverrides>,
    /// Client-side tools: namespace → tool names (needs `Accept: application/x-ndjson`).
    #[serde(default)]
    tools: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    code: WorkerCode,
    #[serde(default)]
    request: Option<LoadRequest>,
    #[serde(default)]
    limits: Option<LimitOverrides>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_url")]
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_method() -> String {
    "GET".into()
}
fn default_url() -> String {
    "/".into()
}

fn overrides(o: Option<&LimitOverrides>) -> PolicyOverrides {
    o.map(|o| PolicyOverrides {
        cpu_ms: o.cpu_ms,
        memory_mb: o.memory_mb,
        wall_ms: o.wall_ms,
        subrequests: o.subrequests,
    })
    .unwrap_or_default()
}

/// The tenant's limits, lowered (never raised) by the Worker's and the request's overrides.
fn limits_for(
    tenant: &TenantPolicy,
    code: Option<&LimitOverrides>,
    request: Option<&LimitOverrides>,
) -> Limits {
    let l = tenant
        .limits
        .invocation()
        .lowered_by(&overrides(code))
        .lowered_by(&overrides(request));
    Limits {
        cpu_ms: l.cpu_ms,
        memory_mb: l.memory_mb,
        wall_ms: l.wall_ms,
        subrequests: l.subrequests,
        worker_concurrency: tenant.limits.max_concurrent_requests,
    }
}

fn check_code(code: &WorkerCode) -> Result<(), ApiError> {
    code.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid WorkerCode: {e}")))
}

/// The response header naming the receipt of a `load()` or `get()`.
pub const RECEIPT_HEADER: &str = "isogate-receipt";

/// How an invocation ended, as its receipt says: `completed`, `threw`, or the error kind.
fn outcome_label<T>(outcome: &Result<T, isogate_pool::WorkerError>) -> &'static str {
    match outcome {
        Ok(_) => "completed",
        Err(e) if e.kind == isogate_pool::ErrorKind::Exception => "threw",
        Err(e) => e.kind.as_str(),
    }
}

fn worker_reply(
    inv: Invocation<HttpResponse>,
    tenant: &str,
    stream: BodyParts,
) -> Result<Reply, ApiError> {
    log_console(tenant, &inv);
    match inv.outcome {
        Ok(resp) => Ok(Reply::from_worker(resp, stream)),
        Err(e) => Err(e.into()),
    }
}

/// Writes a Worker's streamed body as it comes, then ends the chunked body. Whether it ended
/// cleanly (else the caller drops the connection without the terminating chunk).
async fn write_streamed(session: &mut ServerSession, mut parts: BodyParts) -> bool {
    loop {
        let next = if parts.watch_client {
            tokio::select! {
                part = parts.recv() => part,
                idle = session.read_body_or_idle(true) => {
                    if let Err(e) = idle {
                        tracing::debug!(error = %e, "the client left a streamed answer");
                        return false;
                    }
                    // The client sent more (a pipelined request): stop watching.
                    parts.watch_client = false;
                    continue;
                }
            }
        } else {
            parts.recv().await
        };
        match next {
            Some(BodyPart::Chunk(bytes)) => {
                if bytes.is_empty() {
                    continue;
                }
                let n = bytes.len();
                if let Err(e) = session.write_response_body(bytes.into(), false).await {
                    tracing::debug!(error = %e, "cannot write a streamed body chunk");
                    return false;
                }
                parts.written(n);
            }
            Some(BodyPart::End(Ok(()))) => break,
            Some(BodyPart::End(Err(e))) => {
                tracing::debug!(error = %e, "a Worker's streamed body broke off");
                return false;
            }
            None => {
                tracing::debug!("a Worker's streamed body ended without its end (worker lost)");
                return false;
            }
        }
    }
    match session.write_response_body(bytes::Bytes::new(), true).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot end a streamed body");
            false
        }
    }
}

fn log_console<T>(tenant: &str, inv: &Invocation<T>) {
    for entry in &inv.logs {
        tracing::debug!(target: "isogate::worker_console", tenant, level = %entry.level, message = %entry.message);
    }
}

impl Ingress {
    fn reject(&self, seen: &Seen, reason: &str) {
        if let Some(t) = &seen.tenant {
            self.state
                .metrics
                .rejections
                .with_label_values(&[t.as_str(), reason])
                .inc();
        }
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        seen: &mut Seen,
    ) -> Result<Reply, ApiError> {
        let snapshot = self.state.snapshot();
        let path = session.req_header().uri.path().to_string();
        let host = request_host(session.req_header()).map(str::to_string);
        match snapshot.policy.routes().resolve(host.as_deref(), &path) {
            RouteMatch::Api => {}
            RouteMatch::NoRoute => {
                seen.route = "no_route";
                seen.public = true;
                return Err(ApiError::NotFound("not found".into()));
            }
            RouteMatch::Route(route) => {
                let host = host.unwrap_or_default();
                return self.public(session, seen, &snapshot, route, &host).await;
            }
        }
        let route = parse_route(&path)?;
        let method = session.req_header().method.clone();
        seen.route = match &route {
            Route::Execute => "execute",
            Route::Load => "load",
            Route::Workers => "list_workers",
            Route::Worker(_) if method == http::Method::DELETE => "delete_worker",
            Route::Worker(_) => "put_worker",
            Route::Dispatch { .. } => "dispatch",
            Route::ApiDeclarations => "api_declarations",
            Route::Mcp => "mcp",
            Route::Receipt(_) => "receipt",
            Route::CallReply { .. } => "call_reply",
        };
        let tenant = bearer_key(session)
            .and_then(|key| snapshot.policy.authenticate(key))
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        seen.tenant = Some(tenant.name.as_str().to_string());
        seen.max_body_bytes = Some(tenant.limits.max_body_bytes);
        let allow = |ok: bool, allow: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ApiError::MethodNotAllowed { allow })
            }
        };
        match &route {
            Route::Execute | Route::Load | Route::Mcp | Route::CallReply { .. } => {
                allow(method == http::Method::POST, "POST")?
            }
            Route::Workers | Route::ApiDeclarations | Route::Receipt(_) => {
                allow(method == http::Method::GET, "GET")?
            }
            Route::Worker(_) => allow(
                method == http::Method::PUT || method == http::Method::DELETE,
                "PUT, DELETE",
            )?,
            Route::Dispatch { .. } => {}
        }
        // Before the body is read: an unknown Worker is refused without taking the upload.
        let stored = match &route {
            Route::Dispatch { id, .. } => Some(
                self.state
                    .store
                    .get(tenant.name.as_str(), id)
                    .await?
                    .ok_or_else(|| unknown_worker(id))?,
            ),
            _ => None,
        };
        let (body, held) = self
            .read_charged(session, seen, &tenant, tenant.limits.max_body_bytes)
            .await?;
        let reply = match route {
            Route::Execute => self.execute(session, &snapshot, &tenant, &body).await,
            Route::CallReply { execution, call } => {
                self.call_reply(&tenant, &execution, &call, &body).await
            }
            Route::Load => {
                self.load(&snapshot, &tenant, &body, &mut seen.receipt)
                    .await
            }
            Route::Workers => self.list(&tenant).await,
            Route::ApiDeclarations => Ok(self.api_declarations(&tenant).await),
            Route::Mcp => self.mcp(session, &snapshot, &tenant, &body).await,
            Route::Receipt(id) => self.receipt(&tenant, &id),
            Route::Worker(id) if method == http::Method::PUT => self.put(&tenant, &id, &body).await,
            Route::Worker(id) => self.delete(&tenant, &id).await,
            Route::Dispatch { id, rest } => {
                let request = self.forwarded_request(session, &rest, body);
                match stored {
                    Some(code) => {
                        let receipt = Some(&mut seen.receipt);
                        self.dispatch(&snapshot, &tenant, &id, code, request, receipt)
                            .await
                    }
                    None => Err(unknown_worker(&id)),
                }
            }
        }?;
        self.charge_reply(held, &reply, &tenant).await?;
        Ok(reply)
    }

    /// Reads the body (at most `limit` bytes), charging it to the gateway's in-flight budget:
    /// Worker request and response bodies are charged while the request holds them.
    async fn read_charged(
        &self,
        session: &mut ServerSession,
        seen: &mut Seen,
        tenant: &TenantPolicy,
        limit: u64,
    ) -> Result<(Vec<u8>, crate::inflight::InflightPermit), ApiError> {
        let mut held = self.state.inflight.permit(tenant.name.as_str());
        let body = read_body(session, limit, seen, &mut held)
            .await
            .inspect_err(|e| self.budget_refused(e, tenant.name.as_str()))?;
        Ok((body, held))
    }

    /// Charges a buffered reply's body to the permit that held the request.
    async fn charge_reply(
        &self,
        mut held: crate::inflight::InflightPermit,
        reply: &Reply,
        tenant: &TenantPolicy,
    ) -> Result<(), ApiError> {
        held.grow(reply.body.len()).await.map_err(|e| {
            let e = ApiError::MemoryBudget(e.to_string());
            self.budget_refused(&e, tenant.name.as_str());
            e
        })
    }

    /// A request on a public route: no API key; the route's header, rate and body limits, then
    /// the tenant's admission and limits, and the request as the client sent it (forwarding
    /// headers set) to the route's Worker.
    async fn public(
        &self,
        session: &mut ServerSession,
        seen: &mut Seen,
        snapshot: &Snapshot,
        route: &PublicRoute,
        host: &str,
    ) -> Result<Reply, ApiError> {
        seen.route = "public";
        seen.public = true;
        seen.route_name = Some(route.name.clone());
        seen.tenant = Some(route.tenant.as_str().to_string());
        seen.max_body_bytes = Some(route.max_body_bytes);
        let tenant = snapshot
            .policy
            .tenant(route.tenant.as_str())
            .cloned()
            .ok_or_else(|| ApiError::Internal("a route names an unknown tenant".into()))?;
        if head_bytes(session.req_header()) > route.max_header_bytes {
            return Err(ApiError::HeadersTooLarge {
                limit: route.max_header_bytes,
            });
        }
        if let (Scheme::Http, Some(port)) = (self.scheme, route.https_redirect) {
            let target = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            return Ok(Reply::redirect(https_location(host, port, target)));
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let forwarded = Forwarded::of(
            &snapshot.policy,
            peer,
            self.scheme,
            host,
            &session.req_header().headers,
        );
        let key = (tenant.name.as_str().to_string(), route.name.clone());
        if let Some(limiter) = snapshot.clients.get(&key) {
            if let Err(wait) = limiter.check(forwarded.client) {
                self.state
                    .metrics
                    .route_rate_limited
                    .with_label_values(&[key.0.as_str(), key.1.as_str()])
                    .inc();
                return Err(ApiError::RateLimited {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        // Before the body is read: a route whose Worker is not stored takes no upload.
        let code = self
            .state
            .store
            .get(tenant.name.as_str(), &route.worker)
            .await?
            .ok_or_else(|| ApiError::NotFound("not found".into()))?;
        let (body, held) = self
            .read_charged(session, seen, &tenant, route.max_body_bytes)
            .await?;
        let request = public_request(session.req_header(), &forwarded, host, body);
        let reply = self
            .dispatch(snapshot, &tenant, &route.worker, code, request, None)
            .await?;
        self.charge_reply(held, &reply, &tenant).await?;
        Ok(reply)
    }

    fn budget_refused(&self, e: &ApiError, tenant: &str) {
        if matches!(e, ApiError::MemoryBudget(_)) {
            self.state.metrics.inflight_refused(tenant);
        }
    }

    fn gate<'a>(
        &self,
        snapshot: &'a Snapshot,
        tenant: &TenantPolicy,
    ) -> Result<&'a TenantGate, ApiError> {
        snapshot
            .gates
            .get(tenant.name.as_str())
            .map(|g| g.as_ref())
            .ok_or_else(|| ApiError::Internal("tenant has no admission gate".into()))
    }

    /// Takes a concurrency slot of the tenant, keeping the queue-depth gauge current.
    async fn admit(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let gate = self.gate(snapshot, tenant)?;
        let depth = self
            .state
            .metrics
            .queue_depth
            .with_label_values(&[tenant.name.as_str()]);
        let waiting = gate.admit();
        tokio::pin!(waiting);
        // Poll once; only a request that has to wait moves the gauge.
        if let Some(result) = futures::FutureExt::now_or_never(&mut waiting) {
            return result;
        }
        depth.set(gate.queue_depth() as i64);
        let result = waiting.await;
        depth.set(gate.queue_depth() as i64);
        result
    }

    /// Counts an invocation's outcome and CPU time.
    fn observe<T>(&self, tenant: &TenantPolicy, inv: &Invocation<T>) {
        let outcome = match &inv.outcome {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.state
            .metrics
            .invocation(tenant.name.as_str(), outcome, inv.stats.cpu_seconds);
    }

    fn invoker(tenant: &TenantPolicy, worker_id: Option<&str>) -> Invoker {
        Invoker {
            tenant: tenant.name.as_str().to_string(),
            worker_id: worker_id.map(str::to_string),
            invocation: next_invocation(),
            apis: tenant.apis.iter().map(|a| a.name.clone()).collect(),
            trace: 0,
            tools: Vec::new(),
        }
    }

    async fn execute(
        &self,
        session: &ServerSession,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        let req: ExecuteBody = parse_json(body, "execute request")?;
        if !req.env.is_object() {
            return Err(ApiError::BadRequest(
                "malformed execute request: env: must be a JSON object".into(),
            ));
        }
        let streamed = accepts_ndjson(session);
        if req.tools.is_some() && !streamed {
            return Err(ApiError::BadRequest(
                "malformed execute request: tools: client-side tools need a streamed answer; send `Accept: application/x-ndjson`".into(),
            ));
        }
        let tools = match &req.tools {
            Some(tools) => crate::executions::parse_tools(tools)
                .map_err(|e| ApiError::BadRequest(format!("malformed execute request: {e}")))?,
            None => Vec::new(),
        };
        if streamed {
            return self.execute_streamed(snapshot, tenant, req, tools).await;
        }
        let answer = self
            .run_execute(snapshot, tenant, req.code, req.env, req.limits.as_ref())
            .await?;
        Ok(Reply::json(200, &answer))
    }

    /// `POST /v1/execute` with `Accept: application/x-ndjson`: admitted now (a refusal is an
    /// HTTP error), then the execution runs on its own task and its events stream as NDJSON
    /// lines: a `call` per client-side tool call, the `result` last (see [`crate::executions`]).
    async fn execute_streamed(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        req: ExecuteBody,
        tools: Vec<isogate_pool::ClientTools>,
    ) -> Result<Reply, ApiError> {
        let permit = self.admit(snapshot, tenant).await?;
        let (mut invoker, trace) = self.traced(tenant, None);
        invoker.tools = tools.clone();
        let (execution, events) = self
            .state
            .executions
            .start(tenant.name.as_str(), trace.id, tools)
            .ok_or(ApiError::Overloaded)?;
        let id = execution.id().to_string();
        // Replicas that get this execution's replies find it here (before any event is sent).
        let shared = self.state.store.shared().cloned();
        if let Some(shared) = &shared {
            let wall = Duration::from_millis(limits_for(tenant, None, req.limits.as_ref()).wall_ms);
            let ttl = wall + crate::executions::KEEP_FINISHED;
            if let Err(e) = shared
                .execution_started(&id, tenant.name.as_str(), &self.state.replica, ttl)
                .await
            {
                tracing::warn!(error = %e, "a streamed execute's replies can reach this replica only");
            }
        }
        let runner = Ingress {
            state: self.state.clone(),
            scheme: self.scheme,
        };
        let tenant = tenant.clone();
        let abandoned = execution.abandoned();
        let id_ended = id.clone();
        tokio::spawn(async move {
            let run = runner.run_admitted(
                &tenant,
                (invoker, trace),
                req.code,
                req.env,
                req.limits.as_ref(),
                permit,
            );
            tokio::select! {
                answer = run => {
                    let mut event = answer.unwrap_or_else(|e| {
                        serde_json::json!({"result": null, "logs": [], "error": {"kind": e.kind(), "message": e.message()}, "receipt": []})
                    });
                    event["type"] = "result".into();
                    execution.finish(&event);
                }
                // The client left: the waiting calls fail, the snippet ends under its limits.
                () = abandoned => {}
            }
            if let Some(shared) = shared {
                let keep = crate::executions::KEEP_FINISHED;
                let _ = shared
                    .execution_ended(&id_ended, tenant.name.as_str(), keep)
                    .await;
            }
        });
        Ok(Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/x-ndjson".into()),
                ("cache-control".into(), "no-store".into()),
                ("isogate-execution".into(), id),
            ],
            body: Vec::new(),
            stream: Some(BodyParts {
                parts: events.parts,
                window: events.window,
                watch_client: true,
            }),
        })
    }

    /// `POST /v1/executions/{execution}/calls/{call}`: the client's answer to a tool call.
    /// With `shared.redis`, a reply for an execution another replica runs is relayed there.
    async fn call_reply(
        &self,
        tenant: &TenantPolicy,
        execution: &str,
        call: &str,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        use crate::cluster::{ExecutionAt, RelayedReply};
        use crate::executions::ReplyError;
        let answer = crate::executions::parse_reply(body).map_err(ApiError::BadRequest)?;
        let tenant_name = tenant.name.as_str();
        let status = match self
            .state
            .executions
            .reply(tenant_name, execution, call, answer)
        {
            Ok(()) => 200,
            Err(ReplyError::NoExecution(m)) => {
                let Some(shared) = self.state.store.shared() else {
                    return Err(ApiError::NotFound(m));
                };
                match shared
                    .execution_at(execution, tenant_name)
                    .await
                    .map_err(|e| ApiError::StoreUnavailable(e.to_string()))?
                {
                    ExecutionAt::Unknown => 404,
                    ExecutionAt::Ended => 410,
                    ExecutionAt::Running(replica) if replica == self.state.replica => 404,
                    ExecutionAt::Running(replica) => {
                        let relayed = RelayedReply {
                            execution: execution.to_string(),
                            call: call.to_string(),
                            tenant: tenant_name.to_string(),
                            body: String::from_utf8_lossy(body).into_owned(),
                            ack: String::new(),
                        };
                        shared
                            .relay_reply(&replica, relayed)
                            .await
                            .map_err(|e| ApiError::StoreUnavailable(e.to_string()))?
                    }
                }
            }
            Err(e) => e.status(),
        };
        match status {
            200 => Ok(Reply::json(200, &serde_json::json!({"accepted": true}))),
            410 => Err(ApiError::Gone(format!("execution {execution} has ended"))),
            400 => Err(ApiError::BadRequest("malformed reply".into())),
            _ => Err(ApiError::NotFound(format!(
                "no execution {execution} with a call {call:?} waiting for an answer"
            ))),
        }
    }

    /// Runs a Code Mode snippet under the tenant's admission and limits: `{result, logs,
    /// error}` (a failure of the code is in `error`; the gateway's own is an `ApiError`).
    async fn run_execute(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        code: String,
        env: serde_json::Value,
        overrides: Option<&LimitOverrides>,
    ) -> Result<serde_json::Value, ApiError> {
        let traced = self.traced(tenant, None);
        let permit = self.admit(snapshot, tenant).await?;
        self.run_admitted(tenant, traced, code, env, overrides, permit)
            .await
    }

    /// [`Ingress::run_execute`] once admitted.
    async fn run_admitted(
        &self,
        tenant: &TenantPolicy,
        (invoker, trace): (Invoker, Trace),
        code: String,
        env: serde_json::Value,
        overrides: Option<&LimitOverrides>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<serde_json::Value, ApiError> {
        let limits = limits_for(tenant, None, overrides);
        let inv = self
            .state
            .pool
            .execute(invoker, code, env, limits, Hold::new(permit))
            .await?;
        self.observe(tenant, &inv);
        let receipt = trace.close(outcome_label(&inv.outcome));
        let logs = serde_json::to_value(&inv.logs).unwrap_or_default();
        let (result, error) = match inv.outcome {
            Ok(v) => (v, serde_json::Value::Null),
            Err(e) if e.kind == isogate_pool::ErrorKind::Internal => {
                return Err(ApiError::Internal(e.message))
            }
            Err(e) => {
                // Answered 200 with the error in the body, and still a failed request.
                let error = serde_json::json!({"kind": e.kind.as_str(), "message": e.message});
                self.state.metrics.request_failure(&ApiError::from(e));
                (serde_json::Value::Null, error)
            }
        };
        Ok(serde_json::json!({"result": result, "logs": logs, "error": error, "receipt": receipt}))
    }

    /// `POST /mcp`: one JSON-RPC message of the MCP endpoint (see [`crate::mcp`]).
    async fn mcp(
        &self,
        session: &ServerSession,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        use crate::mcp::{self as m, Message};
        let headers = &session.req_header().headers;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !m::origin_allowed(header("origin"), header("host")) {
            return Err(ApiError::BadRequest(
                "the Origin header does not match the host (MCP requests from other sites are refused)".into(),
            ));
        }
        let reply = |status: u16, value: serde_json::Value| Ok(Reply::json(status, &value));
        match m::parse(body, header("mcp-protocol-version")) {
            Message::Accepted => Ok(Reply {
                status: 202,
                headers: Vec::new(),
                body: Vec::new(),
                stream: None,
            }),
            Message::Initialize { id, version } => {
                reply(200, m::result(id, m::initialized(&version)))
            }
            Message::Ping { id } => reply(200, m::result(id, serde_json::json!({}))),
            Message::ListTools { id } => reply(200, m::result(id, m::tools())),
            Message::Search { id, query, limit } => {
                let found = match &self.state.apis {
                    Some(apis) => apis.search(tenant, &query, limit).await,
                    None => serde_json::json!({"results": [], "matched": 0, "unavailable": []}),
                };
                reply(200, m::result(id, m::tool_result(found, false)))
            }
            Message::Execute { id, code } => {
                let (value, failed) = match self
                    .run_execute(snapshot, tenant, code, serde_json::json!({}), None)
                    .await
                {
                    Ok(answer) => {
                        let failed = !answer["error"].is_null();
                        (answer, failed)
                    }
                    // Refused by the gateway (admission, overload): the tool's error too.
                    Err(e) => (
                        serde_json::json!({"result": null, "logs": [], "error": {"kind": e.kind(), "message": e.message()}}),
                        true,
                    ),
                };
                reply(200, m::result(id, m::tool_result(value, failed)))
            }
            Message::Error { id, code, message } => {
                let status = if code == m::METHOD_NOT_FOUND || code == m::INVALID_PARAMS {
                    200
                } else {
                    400
                };
                reply(status, m::rpc_error(id, code, &message))
            }
        }
    }

    async fn load(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        body: &[u8],
        receipt: &mut Option<String>,
    ) -> Result<Reply, ApiError> {
        let req: LoadBody = parse_json(body, "load request")?;
        check_code(&req.code)?;
        let request = match req.request {
            None => HttpRequest {
                method: "GET".into(),
                url: "http://localhost/".into(),
                headers: vec![],
                body: vec![],
            },
            Some(r) => HttpRequest {
                method: valid_method(&r.method)?,
                url: absolute_url(&r.url)?,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body: r.body.into_bytes(),
            },
        };
        let limits = limits_for(tenant, req.code.limits.as_ref(), req.limits.as_ref());
        // The slot is held by the job until all of the invocation's work (ctx.waitUntil
        // included) has ended, not only until the response.
        let permit = self.admit(snapshot, tenant).await?;
        let (sink, stream) = body_channel();
        let (invoker, trace) = self.traced(tenant, None);
        let inv = self
            .state
            .pool
            .load(
                invoker,
                Arc::new(req.code),
                request,
                limits,
                Hold::new(permit),
                sink,
            )
            .await?;
        self.observe(tenant, &inv);
        *receipt = Some(self.keep_receipt(tenant, trace, &inv.outcome));
        worker_reply(inv, tenant.name.as_str(), stream)
    }

    async fn put(&self, tenant: &TenantPolicy, id: &str, body: &[u8]) -> Result<Reply, ApiError> {
        let code: WorkerCode = parse_json(body, "WorkerCode")?;
        check_code(&code)?;
        let outcome = self.state.store.put(tenant.name.as_str(), id, code).await;
        let outcome = self.stored_write(tenant, "put", outcome).await?;
        match outcome {
            PutOutcome::Created => Ok(Reply::json(201, &serde_json::json!({"id": id, "created": true}))),
            PutOutcome::Unchanged => Ok(Reply::json(200, &serde_json::json!({"id": id, "created": false}))),
            PutOutcome::Conflict => Err(ApiError::Conflict(format!(
                "worker {id:?} already exists with different code; ids are immutable, use a new (versioned) id"
            ))),
        }
    }

    async fn delete(&self, tenant: &TenantPolicy, id: &str) -> Result<Reply, ApiError> {
        let existed = self.state.store.delete(tenant.name.as_str(), id).await;
        let existed = self.stored_write(tenant, "delete", existed).await?;
        let evicted = self.state.pool.evict(tenant.name.as_str(), id).await > 0;
        if !existed {
            return Err(ApiError::NotFound(format!(
                "no worker {id:?} for this tenant"
            )));
        }
        Ok(Reply::json(
            200,
            &serde_json::json!({"id": id, "deleted": true, "evicted": evicted}),
        ))
    }

    /// Counts a write to the stored Workers (and the store's size after it) and logs a failure.
    async fn stored_write<T>(
        &self,
        tenant: &TenantPolicy,
        op: &'static str,
        result: Result<T, crate::store::StoredError>,
    ) -> Result<T, ApiError> {
        let store = self.state.store.clone();
        let disk = tokio::task::spawn_blocking(move || store.disk_bytes())
            .await
            .unwrap_or(0);
        self.state.metrics.store_write(op, result.is_ok(), disk);
        if let Err(e) = &result {
            tracing::error!(tenant = %tenant.name.as_str(), op, error = %e, "stored-Worker write failed");
        }
        Ok(result?)
    }

    /// `GET /v1/apis.d.ts`: the declarations of the tenant's APIs (an API whose tools cannot
    /// be loaded now is declared `unknown` with the reason in a comment).
    async fn api_declarations(&self, tenant: &TenantPolicy) -> Reply {
        let text = match &self.state.apis {
            Some(apis) => apis.declarations(tenant).await,
            None => crate::apis::dts::declarations(&[]),
        };
        Reply {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "application/typescript; charset=utf-8".into(),
            )],
            body: text.into_bytes(),
            stream: None,
        }
    }

    async fn list(&self, tenant: &TenantPolicy) -> Result<Reply, ApiError> {
        let name = tenant.name.as_str();
        let ids = self.state.store.ids(name).await?;
        let warm: std::collections::HashSet<String> =
            self.state.pool.cached_ids(name).await.into_iter().collect();
        let workers: Vec<serde_json::Value> = ids
            .into_iter()
            .map(|id| {
                let state = if warm.contains(&id) { "warm" } else { "cold" };
                serde_json::json!({"id": id, "state": state})
            })
            .collect();
        Ok(Reply::json(200, &serde_json::json!({ "workers": workers })))
    }

    /// The request as the Worker sees it: path `/{rest}`, the query, the headers (without the
    /// tenant's API key and hop-by-hop headers), the body.
    fn forwarded_request(&self, session: &ServerSession, rest: &str, body: Vec<u8>) -> HttpRequest {
        let header = session.req_header();
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        let mut url = format!("http://{host}/{rest}");
        if let Some(q) = header.uri.query() {
            url.push('?');
            url.push_str(q);
        }
        let headers = header
            .headers
            .iter()
            .filter(|(name, _)| {
                *name != http::header::AUTHORIZATION && !is_hop_by_hop(name.as_str())
            })
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        HttpRequest {
            method: header.method.to_string(),
            url,
            headers,
            body,
        }
    }

    async fn dispatch(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantPolicy,
        id: &str,
        code: SealedCode,
        request: HttpRequest,
        receipt: Option<&mut Option<String>>,
    ) -> Result<Reply, ApiError> {
        let limits = limits_for(tenant, code.code().limits.as_ref(), None);
        let permit = self.admit(snapshot, tenant).await?;
        let (sink, stream) = body_channel();
        // A public route's client is not the tenant: it gets no receipt.
        let (invoker, trace) = if receipt.is_some() {
            let (invoker, trace) = self.traced(tenant, Some(id));
            (invoker, Some(trace))
        } else {
            (Self::invoker(tenant, Some(id)), None)
        };
        let inv = self
            .state
            .pool
            .get(
                invoker,
                code,
                request,
                limits,
                tenant.limits.max_cached_workers as usize,
                Hold::new(permit),
                sink,
            )
            .await?;
        self.observe(tenant, &inv);
        if let (Some(trace), Some(slot)) = (trace, receipt) {
            *slot = Some(self.keep_receipt(tenant, trace, &inv.outcome));
        }
        worker_reply(inv, tenant.name.as_str(), stream)
    }

    /// An invoker whose outbound calls are collected in a new receipt, and the receipt.
    fn traced(&self, tenant: &TenantPolicy, worker_id: Option<&str>) -> (Invoker, Trace) {
        let mut invoker = Self::invoker(tenant, worker_id);
        let trace = self.state.receipts.open();
        invoker.trace = trace.id;
        (invoker, trace)
    }

    /// Closes the receipt `trace` and keeps it for `GET /v1/receipts/{id}`: its id.
    fn keep_receipt<T>(
        &self,
        tenant: &TenantPolicy,
        trace: Trace,
        outcome: &Result<T, isogate_pool::WorkerError>,
    ) -> String {
        let receipt = trace.close(outcome_label(outcome));
        self.state.receipts.keep(tenant.name.as_str(), receipt)
    }

    /// `GET /v1/receipts/{id}`: a receipt the tenant's `load()` or `get()` left.
    fn receipt(&self, tenant: &TenantPolicy, id: &str) -> Result<Reply, ApiError> {
        match self.state.receipts.get(tenant.name.as_str(), id) {
            Some(receipt) => Ok(Reply::json(
                200,
                &serde_json::to_value(receipt).unwrap_or_default(),
            )),
            None => Err(ApiError::NotFound(format!(
                "no receipt {id:?} for this tenant (receipts are kept {} s)",
                crate::receipts::KEEP.as_secs()
            ))),
        }
    }
}

/// The request a public route's Worker sees: as the client sent it (method, path, query, body,
/// every header including `Authorization` and cookies), without hop-by-hop headers, with the
/// gateway's `X-Forwarded-*`.
fn public_request(
    header: &pingora::http::RequestHeader,
    forwarded: &Forwarded,
    host: &str,
    body: Vec<u8>,
) -> HttpRequest {
    let target = header.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()) {
        host
    } else {
        "localhost"
    };
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110, 7.6.1).
    let connection: Vec<String> = header
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers: Vec<(String, String)> = header
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !is_hop_by_hop(name)
                && !forwarded.replaces(name)
                && !connection.iter().any(|c| c == name)
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    headers.extend(forwarded.headers());
    HttpRequest {
        method: header.method.to_string(),
        url: format!("{}://{host}{target}", forwarded.proto),
        headers,
        body,
    }
}

fn unknown_worker(id: &str) -> ApiError {
    ApiError::NotFound(format!("no worker {id:?} for this tenant"))
}

fn valid_method(m: &str) -> Result<String, ApiError> {
    let m = m.to_ascii_uppercase();
    http::Method::from_bytes(m.as_bytes())
        .map(|_| m.clone())
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "malformed load request: request.method: invalid method {m:?}"
            ))
        })
}

fn absolute_url(u: &str) -> Result<String, ApiError> {
    if u.starts_with('/') {
        return Ok(format!("http://localhost{u}"));
    }
    if (u.starts_with("http://") || u.starts_with("https://")) && u.parse::<http::Uri>().is_ok() {
        return Ok(u.to_string());
    }
    Err(ApiError::BadRequest(format!(
        "malformed load request: request.url: {u:?} must be a path (\"/p?q\") or an http(s) URL"
    )))
}

/// A fresh invocation id, unique within this process (never 0).
fn next_invocation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_ids_are_validated() {
        assert!(matches!(parse_route("/v1/execute"), Ok(Route::Execute)));
        assert!(
            matches!(parse_route("/v1/workers/a.b-1@v2"), Ok(Route::Worker(id)) if id == "a.b-1@v2")
        );
        assert!(
            matches!(parse_route("/w/x/a/b"), Ok(Route::Dispatch{id, rest}) if id == "x" && rest == "a/b")
        );
        assert!(
            matches!(parse_route("/w/x"), Ok(Route::Dispatch{id, rest}) if id == "x" && rest.is_empty())
        );
        assert_eq!(
            parse_route("/w/a%2Fb/x").err().map(|e| e.status()),
            Some(400)
        );
        assert_eq!(parse_route("/v1/workers/").ok().map(|_| ()), Some(()));
        assert_eq!(parse_route("/nope").err().map(|e| e.status()), Some(404));
        for dots in [
            "/w/./x",
            "/w/../x",
            "/w/..",
            "/v1/workers/.",
            "/v1/workers/..",
            "/v1/workers/...",
        ] {
            let e = parse_route(dots).err().expect(dots);
            assert_eq!(e.status(), 400, "{dots}");
            assert!(e.message().contains("worker id"), "{}", e.message());
        }
        assert!(matches!(parse_route("/w/a..b/x"), Ok(Route::Dispatch{id, ..}) if id == "a..b"));
        assert_eq!(
            parse_route(&format!("/w/{}", "a".repeat(129)))
                .err()
                .map(|e| e.status()),
            Some(400)
        );
    }

    #[test]
    fn load_urls_are_made_absolute_or_refused() {
        assert_eq!(absolute_url("/p?q=1").unwrap(), "http://localhost/p?q=1");
        assert_eq!(
            absolute_url("https://x.test/a").unwrap(),
            "https://x.test/a"
        );
        assert!(absolute_url("ftp://x").is_err());
        assert!(absolute_url("p").is_err());
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<ExecuteBody>(br#"{"code": 1}"#, "execute request").unwrap_err();
        assert!(e.message().contains("code"), "{}", e.message());
        let e = parse_json::<ExecuteBody>(br#"{"code": "x", "limit": {}}"#, "execute request")
            .unwrap_err();
        assert!(e.message().contains("limit"), "{}", e.message());
        let e = parse_json::<LoadBody>(
            br#"{"code": {"mainModule": "w.js", "modules": {"w.js": 5}}}"#,
            "load request",
        )
        .unwrap_err();
        assert!(e.message().contains("code.modules"), "{}", e.message());
        let e = parse_json::<ExecuteBody>(b"{", "execute request").unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn worker_headers_are_filtered_and_length_is_ours() {
        let r = Reply {
            status: 200,
            headers: vec![
                ("content-length".into(), "999".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("x-ok".into(), "1".into()),
                ("bad header".into(), "x".into()),
            ],
            body: b"abc".to_vec(),
            stream: None,
        }
        .into_http();
        assert_eq!(r.headers()["content-length"], "3");
        assert!(r.headers().get("transfer-encoding").is_none());
        assert_eq!(r.headers()["x-ok"], "1");
        assert_eq!(r.headers().len(), 2);
    }

    fn worker_reply(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("x-ok".into(), "1".into())],
            body: b"dropped".to_vec(),
            stream: None,
        }
    }

    #[test]
    fn bodiless_statuses_carry_neither_body_nor_its_length() {
        for status in [204, 304] {
            let r = worker_reply(status).into_http_for(false);
            assert_eq!(r.status().as_u16(), status);
            assert!(r.headers().get("content-length").is_none(), "{status}");
            assert!(r.body().is_empty());
        }
        let r = worker_reply(205).into_http_for(false);
        assert_eq!(r.headers()["content-length"], "0");
        assert!(r.body().is_empty());
        let r = worker_reply(200).into_http_for(true);
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers().get("content-length").is_none());
        assert!(r.body().is_empty());
        let r = worker_reply(200).into_http_for(false);
        assert_eq!(r.headers()["content-length"], "7");
        for status in [100, 101, 199, 600, 999] {
            assert_eq!(
                worker_reply(status).into_http().status().as_u16(),
                500,
                "{status}"
            );
        }
    }

    #[test]
    fn discard_bound_is_twice_the_body_limit_but_at_least_the_floor() {
        let mut seen = Seen::default();
        assert_eq!(seen.discard_limit(), DISCARD_MIN_BYTES);
        seen.max_body_bytes = Some(1024);
        assert_eq!(seen.discard_limit(), DISCARD_MIN_BYTES);
        seen.max_body_bytes = Some(32 << 20);
        assert_eq!(seen.discard_limit(), 64 << 20);
        seen.max_body_bytes = Some(u64::MAX);
        assert_eq!(seen.discard_limit(), u64::MAX);
    }
}
