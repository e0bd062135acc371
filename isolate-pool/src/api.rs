//! The message-shaped interface between the gateway and the pool.
//!
//! Everything here is owned and serialisable: a later release runs isolates in a separate,
//! confined process, and these types are what would cross that wall. No engine type, no
//! reference into the gateway, no secret appears here.

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::egress::Window;

/// Worker code as a client submits it; mirrors Cloudflare's Worker Loader `WorkerCode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerCode {
    /// Name of the module (a key of `modules`) whose default export is the Worker.
    pub main_module: String,
    /// Module name → source. JS modules are plain strings; data modules are `{"json": ...}` or
    /// `{"text": "..."}`.
    pub modules: BTreeMap<String, ModuleSource>,
    /// Plain JSON configuration handed to the Worker as `env`.
    #[serde(default = "empty_object")]
    pub env: serde_json::Value,
    /// Per-Worker limits; they can only lower the tenant's limits.
    #[serde(default)]
    pub limits: Option<LimitOverrides>,
    /// `null` disables `fetch()` for this Worker; absent means the tenant's egress policy.
    #[serde(
        default,
        deserialize_with = "deserialize_outbound",
        skip_serializing_if = "Outbound::is_default"
    )]
    pub global_outbound: Outbound,
    /// Accepted for compatibility with Cloudflare's shape; isogate has one behaviour today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility_date: Option<String>,
    /// Accepted for compatibility with Cloudflare's shape; isogate has one behaviour today.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compatibility_flags: Vec<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One module of a Worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSource {
    /// An ES module's source text.
    Js(String),
    /// A module whose default export is this JSON value.
    Json {
        /// The value.
        json: serde_json::Value,
    },
    /// A module whose default export is this string.
    Text {
        /// The string.
        text: String,
    },
}

/// What `globalOutbound` says. Serialised as the client writes it (`null` for `Disabled`), so
/// that it reads back unchanged (JSON and the worker wire alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outbound {
    /// Field absent: outbound requests go through the tenant's egress policy.
    #[default]
    Default,
    /// `globalOutbound: null`: `fetch()` rejects.
    Disabled,
}

impl Serialize for Outbound {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `WorkerCode` never writes `Default` (`skip_serializing_if`): the field is absent.
        match self {
            Outbound::Disabled => s.serialize_none(),
            Outbound::Default => s.serialize_unit_variant("Outbound", 0, "Default"),
        }
    }
}

impl Outbound {
    fn is_default(&self) -> bool {
        *self == Outbound::Default
    }
}

fn deserialize_outbound<'de, D: Deserializer<'de>>(d: D) -> Result<Outbound, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        Ok(Outbound::Disabled)
    } else {
        Err(serde::de::Error::custom(
            "only `null` is supported (it disables fetch for this Worker); omit the field to use the tenant's egress policy",
        ))
    }
}

impl WorkerCode {
    /// Checks the shape a Worker needs before an isolate is spent on it. The error names the
    /// offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.modules.is_empty() {
            return Err("modules: at least one module is required".into());
        }
        match self.modules.get(&self.main_module) {
            None => {
                return Err(format!(
                    "mainModule: `{}` is not a key of modules",
                    self.main_module
                ))
            }
            Some(ModuleSource::Js(_)) => {}
            Some(_) => {
                return Err(format!(
                    "mainModule: `{}` must be a JS module, not a data module",
                    self.main_module
                ))
            }
        }
        for name in self.modules.keys() {
            if name.is_empty() || name.len() > 256 || name.contains('\0') {
                return Err(format!("modules: invalid module name {name:?}"));
            }
            if name.starts_with("isogate:") {
                return Err(format!(
                    "modules: module names starting with `isogate:` are reserved ({name:?})"
                ));
            }
        }
        if !self.env.is_object() {
            return Err("env: must be a JSON object".into());
        }
        Ok(())
    }

    /// A stable digest of the code (used to tell "identical code" from "different code").
    pub fn digest(&self) -> CodeDigest {
        // serde_json serialises BTreeMaps and structs in a fixed order, and JSON objects inside
        // `env`/`json` modules keep their (sorted, without `preserve_order`) key order.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        CodeDigest(Sha256::digest(&bytes).into())
    }
}

/// WorkerCode with its digest computed once (stored Workers are dispatched many times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedCode {
    code: Arc<WorkerCode>,
    digest: CodeDigest,
}

impl SealedCode {
    /// Seals `code`, computing its digest.
    pub fn new(code: WorkerCode) -> SealedCode {
        let digest = code.digest();
        SealedCode {
            code: Arc::new(code),
            digest,
        }
    }

    /// The code.
    pub fn code(&self) -> &Arc<WorkerCode> {
        &self.code
    }

    /// Its digest.
    pub fn digest(&self) -> CodeDigest {
        self.digest
    }
}

/// SHA-256 of a Worker's canonical JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodeDigest(pub [u8; 32]);

impl fmt::Debug for CodeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Limits a request or a Worker may ask for (the wire shape); the gateway applies them so that
/// each can only lower the tenant's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// CPU milliseconds.
    pub cpu_ms: Option<u64>,
    /// Isolate heap in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock milliseconds.
    pub wall_ms: Option<u64>,
    /// Outbound `fetch()` calls.
    pub subrequests: Option<u32>,
}

/// The limits one invocation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU time of the invocation (not wall time), in milliseconds.
    pub cpu_ms: u64,
    /// Heap of the isolate, in MiB.
    pub memory_mb: u64,
    /// Wall-clock time of the invocation, in milliseconds.
    pub wall_ms: u64,
    /// Number of outbound `fetch()` calls.
    pub subrequests: u32,
    /// For `get()`: how many invocations the cached Worker's isolate runs at once, interleaved
    /// at their await points (more wait for a turn). Set from the tenant's
    /// `max_concurrent_requests`; each request brings the Worker's bound to its value (a
    /// lowered value takes effect as busy turns end).
    pub worker_concurrency: u32,
}

/// An HTTP request handed to a Worker's `fetch` handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute URL the Worker sees as `request.url`.
    pub url: String,
    /// Header list in order (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for none).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A Worker's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header list in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty when `streamed`).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The body follows as [`BodyPart`]s through the caller's [`BodySink`] (the Worker returned
    /// a streamed Response and the caller gave a sink); `body` is empty.
    pub streamed: bool,
}

/// A piece of a streamed response body, in order: chunks, then exactly one `End`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyPart {
    /// The next bytes.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The body is complete (`Ok`), or broke off: the Worker's stream errored, a limit cut it
    /// (the message says which). The client sees a truncated body either way.
    End(Result<(), String>),
}

/// Where a streamed response body goes, part by part, on the isolate thread that runs the
/// invocation, paced by its consumer: before each chunk the isolate waits for room in the
/// sink's [`Window`] (the consumer gives room back as it passes bytes on, e.g. writes them to
/// the client's socket), so a slow client holds the Worker's stream back instead of the
/// gateway queueing its body. Sending answers whether more is wanted (`false`: the client went
/// away; the isolate cancels the Worker's stream).
pub struct BodySink {
    send: Box<dyn FnMut(BodyPart) -> bool + Send>,
    window: Window,
}

impl BodySink {
    /// A sink that passes parts to `send` once `window` has room for them.
    pub fn new(send: impl FnMut(BodyPart) -> bool + Send + 'static, window: Window) -> BodySink {
        BodySink {
            send: Box::new(send),
            window,
        }
    }

    /// A sink that is never full (tests, and consumers bounded by other means).
    pub fn unpaced(send: impl FnMut(BodyPart) -> bool + Send + 'static) -> BodySink {
        BodySink::new(send, Window::unbounded())
    }

    /// Waits until the consumer has room for `len` more bytes; false once it is gone.
    pub async fn room(&mut self, len: usize) -> bool {
        self.window.take(len).await
    }

    /// Passes a part on; false when the consumer wants no more.
    pub fn send(&mut self, part: BodyPart) -> bool {
        (self.send)(part)
    }
}

impl std::fmt::Debug for BodySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySink").finish_non_exhaustive()
    }
}

/// Which tenant (and Worker) an invocation runs for. Host calls read identity from here, never
/// from JS arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Invoker {
    /// Tenant name from the authenticated API key.
    pub tenant: String,
    /// The Worker id for `get()`; `None` for `load()` and `execute`.
    pub worker_id: Option<String>,
    /// The invocation's id, unique within the gateway process while it runs (0 when the caller
    /// does not track invocations). Watchdogs and the worker wire use it; the gateway, not the
    /// Worker or the worker process, decides which tenant an id belongs to.
    #[serde(default)]
    pub invocation: u64,
    /// The names of the tenant's APIs at dispatch (`env.<name>` in the Worker): which bindings
    /// the isolate builds. Which calls are allowed is decided again by the gateway per call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<String>,
    /// The gateway's id of the request this invocation serves (its receipt collects the
    /// invocation's outbound calls under it; 0: none). Unlike `invocation`, it stays the same
    /// when the invocation is dispatched again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trace: u64,
    /// The client-side tools of an execute (`POST /v1/execute` with `tools`): each namespace
    /// is a variable of the snippet whose tools call back to the client that sent the code.
    /// Which calls are allowed is decided again by the gateway per call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ClientTools>,
}

/// One namespace of client-side tools (`<namespace>.<tool>(args)` in an execute snippet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientTools {
    /// The namespace: a JS identifier, a variable of the snippet.
    pub namespace: String,
    /// Its tools: the name the client gave, and the JS property name it is reachable under
    /// (the same when the name is an identifier).
    pub tools: Vec<(String, String)>,
}

impl ClientTools {
    /// Whether `declared` lists tool `tool` (the client's name) under `namespace`: the rule
    /// the engine applies before a call leaves the isolate and the gateway applies again
    /// (`TOOL_NOT_FOUND` otherwise).
    pub fn check(
        declared: &[ClientTools],
        namespace: &str,
        tool: &str,
    ) -> Result<(), crate::egress::ApiFailure> {
        let listed = declared
            .iter()
            .find(|n| n.namespace == namespace)
            .is_some_and(|n| n.tools.iter().any(|(name, _)| name == tool));
        if listed {
            return Ok(());
        }
        Err(crate::egress::ApiFailure::new(
            crate::egress::ApiErrorCode::ToolNotFound,
            format!("{namespace}.{tool} is not a tool the client declared"),
        ))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One captured `console.*` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// `log`, `info`, `debug`, `warn`, `error` or `trace`.
    pub level: String,
    /// The formatted message.
    pub message: String,
}

/// Why an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// User code threw (or returned something that is not a Response).
    Exception,
    /// User code did not parse.
    Syntax,
    /// The invocation used more CPU time than allowed.
    CpuLimit,
    /// The isolate ran out of its heap limit.
    MemoryLimit,
    /// The invocation ran longer than the wall-clock limit.
    WallLimit,
    /// The invocation made more outbound requests than allowed.
    SubrequestLimit,
    /// The worker process running the invocation died (killed by the watchdog for another
    /// invocation's overrun, a crash, or a fatal signal); the invocation may be retried.
    WorkerCrashed,
    /// Another invocation running in the same isolate (requests to one cached Worker interleave
    /// in its isolate) breached a limit: the isolate was discarded with this invocation in it;
    /// the invocation may be retried.
    IsolateDiscarded,
    /// A fault in isogate itself (never caused by user input).
    Internal,
}

impl ErrorKind {
    /// The snake_case name used in JSON errors and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Exception => "exception",
            ErrorKind::Syntax => "syntax",
            ErrorKind::CpuLimit => "cpu_limit",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::WallLimit => "wall_limit",
            ErrorKind::SubrequestLimit => "subrequest_limit",
            ErrorKind::WorkerCrashed => "worker_crashed",
            ErrorKind::IsolateDiscarded => "isolate_discarded",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the invocation failed through no fault of its own and may be retried: its worker
    /// process died or its isolate was discarded for another invocation's breach.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::WorkerCrashed | ErrorKind::IsolateDiscarded)
    }

    /// Whether this is a resource-limit breach (as opposed to a bug in user code).
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            ErrorKind::CpuLimit
                | ErrorKind::MemoryLimit
                | ErrorKind::WallLimit
                | ErrorKind::SubrequestLimit
        )
    }
}

/// A failed invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A message for the caller (user code's own message for exceptions).
    pub message: String,
}

impl WorkerError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WorkerError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Resource use of one invocation, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationStats {
    /// CPU time spent running the invocation's JS, in seconds.
    pub cpu_seconds: f64,
    /// Whether a fresh isolate had to be started for it (not taken warm / not cached).
    pub cold_start: bool,
}

/// What an invocation produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation<T> {
    /// The result or the failure.
    pub outcome: Result<T, WorkerError>,
    /// Captured console output, in order.
    pub logs: Vec<LogEntry>,
    /// Resource use.
    pub stats: InvocationStats,
}

impl<T> Invocation<T> {
    /// An invocation that failed with `error` before producing anything.
    pub fn failed(error: WorkerError) -> Invocation<T> {
        Invocation {
            outcome: Err(error),
            logs: Vec::new(),
            stats: InvocationStats::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(json: &str) -> Result<WorkerCode, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn worker_code_parses_cloudflare_shape() {
        let c = code(
            r#"{"mainModule":"w.js","modules":{"w.js":"export default {}","d.json":{"json":{"a":1}},"t.txt":{"text":"hi"}},"env":{"K":"v"},"globalOutbound":null,"compatibilityDate":"2025-01-01"}"#,
        )
        .unwrap();
        assert_eq!(c.global_outbound, Outbound::Disabled);
        assert!(matches!(c.modules["d.json"], ModuleSource::Json { .. }));
        assert!(matches!(c.modules["t.txt"], ModuleSource::Text { .. }));
        c.validate().unwrap();
        let absent = code(r#"{"mainModule":"w.js","modules":{"w.js":""}}"#).unwrap();
        assert_eq!(absent.global_outbound, Outbound::Default);
        assert!(absent.env.is_object());
    }

    #[test]
    fn worker_code_rejects_bad_shapes_naming_the_field() {
        let e = code(r#"{"mainModule":"w.js","modules":{"w.js":""},"globalOutbound":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("only `null`"), "{e}");
        let e = code(r#"{"mainModule":"w.js","modules":{},"bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let c = code(r#"{"mainModule":"x.js","modules":{"w.js":""}}"#).unwrap();
        assert!(c.validate().unwrap_err().starts_with("mainModule"));
        let c = code(r#"{"mainModule":"d","modules":{"d":{"text":""}}}"#).unwrap();
        assert!(c.validate().unwrap_err().contains("JS module"));
        let c = code(r#"{"mainModule":"w.js","modules":{"w.js":""},"env":[1]}"#).unwrap();
        assert!(c.validate().unwrap_err().starts_with("env"));
    }

    #[test]
    fn digest_tells_identical_from_different_code() {
        let a = code(r#"{"mainModule":"w.js","modules":{"w.js":"a"}}"#).unwrap();
        let b = code(r#"{"modules":{"w.js":"a"},"mainModule":"w.js"}"#).unwrap();
        let c = code(r#"{"mainModule":"w.js","modules":{"w.js":"b"}}"#).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }
}
