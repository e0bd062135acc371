//! Client-side tools ("bring your own tools"): `POST /v1/execute` with `tools` and
//! `Accept: application/x-ndjson` streams the execution's events to the client that sent the
//! code. Every call the snippet makes to `<namespace>.<tool>(args)` becomes a `call` event;
//! the client answers it with `POST /v1/executions/<execution>/calls/<call>` (same tenant key)
//! and the call's promise settles with that answer. The final event is the `result`.
//!
//! The registry here is the one place that decides about such calls and replies:
//! - an execution id is random (128 bits) and belongs to its tenant: another tenant's reply is
//!   answered 404, exactly like an id that never existed;
//! - a reply to an execution that has ended is answered 410 for [`KEEP_FINISHED`] (then 404);
//! - a call must be one the client declared (the worker process is not trusted to say so);
//! - at most [`MAX_PENDING`] calls of one execution wait for answers at once (more are refused
//!   with `TOO_MANY_CALLS`), and events are written under the body window: a client that does
//!   not read its stream holds the snippet's calls back instead of filling the gateway's
//!   memory;
//! - calls have no timeout of their own: the invocation's wall-clock limit ends them (the
//!   execution then ends with `wall_limit` and every waiting call is dropped).
//!
//! With `shared.redis`, a reply may reach any replica: one that does not run the execution
//! relays it to the one that does ([`crate::cluster`]); this registry answers the relayed reply
//! like a local one.

use crate::receipts::{Entry, Receipts};
use isogate_pool::{
    ApiAnswer, ApiCall, ApiErrorCode, ApiFailure, BodyPart, ClientTools, Invoker, Window,
};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most calls of one execution waiting for the client's answer at once.
pub const MAX_PENDING: usize = 64;
/// Most namespaces of one execution.
pub const MAX_NAMESPACES: usize = 32;
/// Most tools of one execution, over all its namespaces.
pub const MAX_TOOLS: usize = 1024;
/// Longest tool name, in bytes.
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// How long a reply to an ended execution is answered 410 (then 404).
pub const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// Most ended executions remembered for that (the oldest are forgotten first).
const MAX_FINISHED: usize = 100_000;
/// Most executions streaming at once.
const MAX_LIVE: usize = 100_000;

/// Reads the `tools` of an execute request: namespace → tool names. Every error names the
/// field (`tools.<namespace>[<i>]`).
pub fn parse_tools(tools: &BTreeMap<String, Vec<String>>) -> Result<Vec<ClientTools>, String> {
    if tools.len() > MAX_NAMESPACES {
        return Err(format!(
            "tools: {} namespaces, more than the limit of {MAX_NAMESPACES}",
            tools.len()
        ));
    }
    let total: usize = tools.values().map(Vec::len).sum();
    if total > MAX_TOOLS {
        return Err(format!(
            "tools: {total} tools, more than the limit of {MAX_TOOLS}"
        ));
    }
    let mut out = Vec::with_capacity(tools.len());
    for (namespace, names) in tools {
        check_namespace(namespace).map_err(|e| format!("tools.{namespace}: {e}"))?;
        let mut seen = std::collections::HashSet::new();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_TOOL_NAME_BYTES {
                return Err(format!(
                    "tools.{namespace}[{i}]: a tool name must be 1 to {MAX_TOOL_NAME_BYTES} bytes"
                ));
            }
            if name.chars().any(char::is_control) {
                return Err(format!(
                    "tools.{namespace}[{i}]: a tool name must not contain control characters"
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("tools.{namespace}[{i}]: {name:?} is listed twice"));
            }
        }
        let js = isogate_policy::apis::unique_js_names(names.iter().map(String::as_str));
        out.push(ClientTools {
            namespace: namespace.clone(),
            tools: names.iter().cloned().zip(js).collect(),
        });
    }
    Ok(out)
}

/// A namespace is a variable of the snippet: a JS identifier that can be a parameter of a
/// strict-mode function.
fn check_namespace(name: &str) -> Result<(), String> {
    isogate_policy::apis::check_api_name(name).map_err(|e| e.replace("API name", "namespace"))?;
    if matches!(name, "eval" | "arguments") {
        return Err(format!("invalid namespace {name:?}: it is a reserved word"));
    }
    Ok(())
}

/// The client's answer to one call.
type Answer = Result<Box<RawValue>, String>;

/// One streaming execution.
struct Live {
    id: String,
    tenant: String,
    tools: Vec<ClientTools>,
    events: mpsc::UnboundedSender<BodyPart>,
    window: Window,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_call: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// By execution id.
    live: HashMap<String, Arc<Live>>,
    /// By trace id (`Invoker::trace`): how a call finds its execution.
    by_trace: HashMap<u64, Arc<Live>>,
    /// Ended executions: id → (tenant, when).
    finished: HashMap<String, (String, Instant)>,
    order: VecDeque<(String, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gateway's streaming executions.
pub struct Executions {
    inner: Mutex<Inner>,
    receipts: Arc<Receipts>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The events of one execution, as NDJSON lines for the response body.
pub struct Events {
    /// The lines.
    pub parts: mpsc::UnboundedReceiver<BodyPart>,
    /// The window the lines are written under (the writer gives room back).
    pub window: Window,
}

/// A running execution: ends (its id answers 410, its waiting calls fail) when dropped.
pub struct Execution {
    live: Arc<Live>,
    trace: u64,
    executions: Arc<Executions>,
}

impl Execution {
    /// Its id (`/v1/executions/<id>`).
    pub fn id(&self) -> &str {
        &self.live.id
    }

    /// Ends the execution, then sends the last event and ends the stream: a client that has
    /// read the result is answered 410 for any call, never 404.
    pub fn finish(self, result: &serde_json::Value) {
        let events = self.live.events.clone();
        drop(self);
        let _ = events.send(BodyPart::Chunk(ndjson_line(result)));
        let _ = events.send(BodyPart::End(Ok(())));
    }

    /// Resolves when the client has stopped reading the stream.
    pub fn abandoned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let events = self.live.events.clone();
        async move { events.closed().await }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        let mut inner = lock(&self.executions.inner);
        inner.by_trace.remove(&self.trace);
        inner.live.remove(&self.live.id);
        let now = Instant::now();
        while inner.order.len() >= MAX_FINISHED
            || inner
                .order
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) > KEEP_FINISHED)
        {
            let Some((oldest, _)) = inner.order.pop_front() else {
                break;
            };
            inner.finished.remove(&oldest);
        }
        inner
            .finished
            .insert(self.live.id.clone(), (self.live.tenant.clone(), now));
        inner.order.push_back((self.live.id.clone(), now));
        drop(inner);
        // Waiting calls fail: their senders go.
        lock(&self.live.pending).clear();
    }
}

/// Why a reply was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// This replica runs no such execution of this tenant, and has not run it lately.
    NoExecution(String),
    /// No such call is waiting for an answer.
    NoCall(String),
    /// The execution has ended.
    Gone(String),
}

impl ReplyError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ReplyError::NoExecution(_) | ReplyError::NoCall(_) => 404,
            ReplyError::Gone(_) => 410,
        }
    }
}

impl Executions {
    /// The registry; calls are recorded in `receipts` and counted in `metrics`.
    pub fn new(
        receipts: Arc<Receipts>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Arc<Executions> {
        Arc::new(Executions {
            inner: Mutex::default(),
            receipts,
            metrics,
        })
    }

    /// Starts an execution of `tenant` whose invocation runs under `trace`: the execution and
    /// the receiving end of its events. `None` when too many executions stream at once.
    pub fn start(
        self: &Arc<Self>,
        tenant: &str,
        trace: u64,
        tools: Vec<ClientTools>,
    ) -> Option<(Execution, Events)> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).ok()?;
        let id = hex::encode(bytes);
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Window::default();
        let live = Arc::new(Live {
            id: id.clone(),
            tenant: tenant.to_string(),
            tools,
            events: tx,
            window: window.clone(),
            pending: Mutex::default(),
            next_call: AtomicU64::new(1),
        });
        let mut inner = lock(&self.inner);
        if inner.live.len() >= MAX_LIVE {
            return None;
        }
        inner.live.insert(id, live.clone());
        inner.by_trace.insert(trace, live.clone());
        drop(inner);
        let execution = Execution {
            live,
            trace,
            executions: self.clone(),
        };
        Some((execution, Events { parts: rx, window }))
    }

    /// A client-side tool call of the invocation `invoker`: a `call` event, then the client's
    /// answer.
    pub async fn call(self: Arc<Self>, invoker: Invoker, call: ApiCall) -> ApiAnswer {
        let started = Instant::now();
        let tool = format!("{}.{}", call.api, call.tool);
        let answer = self.run(&invoker, call).await;
        let outcome = match &answer {
            ApiAnswer::Done(_) => "ok",
            ApiAnswer::Failed { failure, .. } => failure.code.label(),
            ApiAnswer::SubrequestLimit => "subrequest_limit",
        };
        if let Some(metrics) = &self.metrics {
            metrics.client_tool_call(&invoker.tenant, outcome);
        }
        self.receipts.record(
            invoker.trace,
            Entry::Tool {
                tool: tool.chars().take(2 * MAX_TOOL_NAME_BYTES).collect(),
                outcome,
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            },
        );
        answer
    }

    async fn run(&self, invoker: &Invoker, call: ApiCall) -> ApiAnswer {
        let live = lock(&self.inner).by_trace.get(&invoker.trace).cloned();
        let Some(live) = live.filter(|l| l.tenant == invoker.tenant) else {
            return fail(
                ApiErrorCode::ApiUnavailable,
                "client-side tools can only be called by a streamed execute",
            );
        };
        // The engine checked both; a worker process is not trusted to have.
        let checked = ClientTools::check(&live.tools, &call.api, &call.tool)
            .and_then(|()| isogate_pool::check_api_args(&call.args));
        if let Err(failure) = checked {
            return ApiAnswer::Failed {
                failure,
                charged: false,
            };
        }
        let args: Box<RawValue> = match serde_json::from_str(&call.args) {
            Ok(args) => args,
            Err(e) => {
                return fail(
                    ApiErrorCode::InvalidArguments,
                    format!("the arguments are not JSON: {e}"),
                )
            }
        };
        let id = live.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&live.pending);
            if pending.len() >= MAX_PENDING {
                return fail(
                    ApiErrorCode::TooManyCalls,
                    format!(
                        "{MAX_PENDING} client-side tool calls are already waiting for the client's answers"
                    ),
                );
            }
            pending.insert(id, tx);
        }
        // The call is withdrawn when this future goes (the invocation ended or was cancelled).
        let _waiting = Withdraw {
            live: live.clone(),
            id,
        };
        let event = serde_json::json!({
            "type": "call",
            "id": id.to_string(),
            "tool": format!("{}.{}", call.api, call.tool),
            "args": args,
            "reply_to": format!("/v1/executions/{}/calls/{id}", live.id),
        });
        let line = ndjson_line(&event);
        let gone = || {
            fail(
                ApiErrorCode::ApiUnavailable,
                "the client that sent the code has stopped reading its events",
            )
        };
        if !live.window.take(line.len()).await || live.events.send(BodyPart::Chunk(line)).is_err() {
            return gone();
        }
        match rx.await {
            Ok(Ok(result)) => ApiAnswer::Done(result.get().to_string()),
            Ok(Err(message)) => fail(ApiErrorCode::ToolError, message),
            Err(_) => gone(),
        }
    }

    /// Takes the client's answer to call `call` of execution `id` of `tenant`.
    pub fn reply(
        &self,
        tenant: &str,
        id: &str,
        call: &str,
        answer: Answer,
    ) -> Result<(), ReplyError> {
        let inner = lock(&self.inner);
        let live = match inner.live.get(id) {
            Some(live) if live.tenant == tenant => live.clone(),
            _ => {
                return Err(match inner.finished.get(id) {
                    Some((owner, at)) if owner == tenant && at.elapsed() <= KEEP_FINISHED => {
                        ReplyError::Gone(format!("execution {id} has ended"))
                    }
                    _ => ReplyError::NoExecution(format!("no execution {id}")),
                })
            }
        };
        drop(inner);
        let waiting = call
            .parse::<u64>()
            .ok()
            .and_then(|n| lock(&live.pending).remove(&n));
        match waiting {
            Some(tx) => {
                // The call may have been withdrawn just now: its answer is then dropped.
                let _ = tx.send(answer);
                Ok(())
            }
            None => Err(ReplyError::NoCall(format!(
                "execution {id} has no call {call:?} waiting for an answer (unknown, or answered already)"
            ))),
        }
    }
}

/// One event of the stream: its JSON and a newline.
fn ndjson_line(event: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Removes a call from the waiting ones when its future goes.
struct Withdraw {
    live: Arc<Live>,
    id: u64,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        lock(&self.live.pending).remove(&self.id);
    }
}

fn fail(code: ApiErrorCode, message: impl Into<String>) -> ApiAnswer {
    ApiAnswer::Failed {
        failure: ApiFailure::new(code, message),
        charged: false,
    }
}

/// The body of a reply: `{"result": <json>}` or `{"error": "<message>"}`, exactly one.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<String>,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// Longest error message a client may answer with, in bytes (longer ones are cut).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

/// Reads a reply's body; the error names the field.
pub fn parse_reply(body: &[u8]) -> Result<Answer, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let reply: ReplyBody = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "" | "." => format!("malformed reply: {}", e.into_inner()),
            _ => format!("malformed reply: {path}: {}", e.into_inner()),
        }
    })?;
    de.end().map_err(|e| format!("malformed reply: {e}"))?;
    match (reply.result, reply.error) {
        (Some(result), None) => Ok(Ok(result)),
        (None, Some(mut message)) => {
            if message.len() > MAX_ERROR_MESSAGE_BYTES {
                let mut end = MAX_ERROR_MESSAGE_BYTES;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Ok(Err(message))
        }
        (Some(_), Some(_)) => Err("malformed reply: give `result` or `error`, not both".into()),
        (None, None) => Err(
            "malformed reply: missing field `result` (or `error`: a message the call rejects with)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, t)| (n.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn tool_declarations_are_checked_and_name_the_field() {
        let ok = parse_tools(&tools(&[("codemode", &["search", "get-sum"])])).unwrap();
        assert_eq!(ok[0].namespace, "codemode");
        assert_eq!(
            ok[0].tools,
            vec![
                ("search".to_string(), "search".to_string()),
                ("get-sum".to_string(), "get_sum".to_string())
            ]
        );
        for (bad, field) in [
            (tools(&[("a-b", &["x"])]), "tools.a-b"),
            (tools(&[("eval", &["x"])]), "tools.eval"),
            (tools(&[("class", &["x"])]), "tools.class"),
            (tools(&[("ns", &[""])]), "tools.ns[0]"),
            (tools(&[("ns", &["x", "x"])]), "tools.ns[1]"),
            (tools(&[("ns", &["a\nb"])]), "tools.ns[0]"),
        ] {
            let e = parse_tools(&bad).unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
        let long = "t".repeat(MAX_TOOL_NAME_BYTES + 1);
        assert!(parse_tools(&tools(&[("ns", &[long.as_str()])])).is_err());
        let many: Vec<String> = (0..=MAX_TOOLS).map(|i| format!("t{i}")).collect();
        let e = parse_tools(&[("ns".to_string(), many)].into_iter().collect()).unwrap_err();
        assert!(e.contains("more than the limit"), "{e}");
    }

    #[test]
    fn replies_are_result_or_error() {
        assert_eq!(
            parse_reply(br#"{"result": {"a": 1}}"#)
                .unwrap()
                .unwrap()
                .get(),
            r#"{"a": 1}"#
        );
        assert_eq!(
            parse_reply(br#"{"result": null}"#).unwrap().unwrap().get(),
            "null"
        );
        assert_eq!(
            parse_reply(br#"{"error": "no"}"#).unwrap().unwrap_err(),
            "no"
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"result": 1, "error": "x"}"#,
            br#"{"result": 1, "extra": 2}"#,
            br#"{"error": 5}"#,
            br#"{"result": 1} x"#,
            b"[",
        ] {
            assert!(parse_reply(bad).is_err());
        }
        let long = format!(r#"{{"error": "{}"}}"#, "é".repeat(MAX_ERROR_MESSAGE_BYTES));
        let cut = parse_reply(long.as_bytes()).unwrap().unwrap_err();
        assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES);
    }

    fn code_of(answer: &ApiAnswer) -> Option<ApiErrorCode> {
        match answer {
            ApiAnswer::Failed { failure, .. } => Some(failure.code),
            _ => None,
        }
    }

    fn invoker(tenant: &str, trace: u64) -> Invoker {
        Invoker {
            tenant: tenant.into(),
            trace,
            ..Invoker::default()
        }
    }

    fn call(tool: &str, args: &str) -> ApiCall {
        ApiCall {
            api: "ns".into(),
            tool: tool.into(),
            args: args.into(),
            client: true,
        }
    }

    #[tokio::test]
    async fn a_call_is_an_event_and_settles_with_the_reply() {
        let executions = Executions::new(Arc::default(), None);
        let declared = parse_tools(&tools(&[("ns", &["echo"])])).unwrap();
        let (execution, mut events) = executions.start("t1", 7, declared).unwrap();
        let id = execution.id().to_string();
        let pending = tokio::spawn(
            executions
                .clone()
                .call(invoker("t1", 7), call("echo", r#"{"x":1}"#)),
        );
        let Some(BodyPart::Chunk(line)) = events.parts.recv().await else {
            panic!("no event")
        };
        let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(event["type"], "call");
        assert_eq!(event["tool"], "ns.echo");
        assert_eq!(event["args"], serde_json::json!({"x": 1}));
        let call_id = event["id"].as_str().unwrap().to_string();
        assert_eq!(
            event["reply_to"],
            format!("/v1/executions/{id}/calls/{call_id}")
        );
        // Another tenant cannot answer it, nor can anyone answer twice.
        assert!(matches!(
            executions.reply(
                "t2",
                &id,
                &call_id,
                Ok(RawValue::from_string("1".into()).unwrap())
            ),
            Err(ReplyError::NoExecution(_))
        ));
        let answer = RawValue::from_string(r#"{"y":2}"#.into()).unwrap();
        executions.reply("t1", &id, &call_id, Ok(answer)).unwrap();
        assert_eq!(pending.await.unwrap(), ApiAnswer::Done(r#"{"y":2}"#.into()));
        assert!(matches!(
            executions.reply("t1", &id, &call_id, Err("x".into())),
            Err(ReplyError::NoCall(_))
        ));
        // Undeclared tools and other invocations are refused without an event.
        let refused = executions
            .clone()
            .call(invoker("t1", 7), call("other", "{}"))
            .await;
        assert_eq!(code_of(&refused), Some(ApiErrorCode::ToolNotFound));
        let refused = executions
            .clone()
            .call(invoker("t2", 7), call("echo", "{}"))
            .await;
        assert_eq!(code_of(&refused), Some(ApiErrorCode::ApiUnavailable));
        drop(execution);
        assert!(matches!(
            executions.reply("t1", &id, "2", Err("x".into())),
            Err(ReplyError::Gone(_))
        ));
        assert!(matches!(
            executions.reply("t2", &id, "2", Err("x".into())),
            Err(ReplyError::NoExecution(_))
        ));
    }

    #[tokio::test]
    async fn waiting_calls_are_bounded_and_fail_when_the_execution_ends() {
        let executions = Executions::new(Arc::default(), None);
        let declared = parse_tools(&tools(&[("ns", &["t"])])).unwrap();
        let (execution, mut events) = executions.start("t", 1, declared).unwrap();
        let mut waiting = Vec::new();
        for _ in 0..MAX_PENDING {
            waiting.push(tokio::spawn(
                executions.clone().call(invoker("t", 1), call("t", "null")),
            ));
            assert!(events.parts.recv().await.is_some());
        }
        let over = executions
            .clone()
            .call(invoker("t", 1), call("t", "null"))
            .await;
        assert_eq!(code_of(&over), Some(ApiErrorCode::TooManyCalls));
        drop(execution);
        for w in waiting {
            let answer = w.await.unwrap();
            assert_eq!(code_of(&answer), Some(ApiErrorCode::ApiUnavailable));
        }
        // Invalid JSON from a (compromised) worker process is refused, not forwarded.
        let (_e, _events) = executions
            .start("t", 2, parse_tools(&tools(&[("ns", &["t"])])).unwrap())
            .unwrap();
        let bad = executions
            .clone()
            .call(invoker("t", 2), call("t", "{"))
            .await;
        assert_eq!(code_of(&bad), Some(ApiErrorCode::InvalidArguments));
        let huge = format!("\"{}\"", "x".repeat(isogate_pool::MAX_API_ARGS_BYTES));
        let bad = executions
            .clone()
            .call(invoker("t", 2), call("t", &huge))
            .await;
        assert_eq!(code_of(&bad), Some(ApiErrorCode::InvalidArguments));
        assert!(
            matches!(bad, ApiAnswer::Failed { ref failure, .. } if failure.message.contains("more than the limit"))
        );
    }
}
