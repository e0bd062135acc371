//! The JS engine: QuickJS through rquickjs, with LLRT's Web API modules.
//!
//! Every engine type (rquickjs, LLRT) stays inside this module. The rest of the pool sees one
//! type, [`Isolate`], with a narrow interface: start an isolate, load a Worker's modules, call its
//! `fetch` handler or run a Code Mode function, under [`Limits`]. The host calls a Worker can make
//! (fetch, console, timers, randomness) are installed here and take the caller's identity from
//! host state ([`HostState`]), never from JS arguments. A second engine (deno_core/V8) would be a
//! sibling of this module implementing the same `Isolate` surface.
#![allow(unsafe_code)] // loading our own QuickJS bytecode (an engine API); each block has a `// SAFETY:` line

mod budget;
mod bytecode;
mod codec;
mod context;
#[cfg(test)]
mod jslayer;
mod loader;
mod memory;
mod panics;
mod text;

use crate::api::{
    BodyPart, BodySink, ErrorKind, HttpRequest, HttpResponse, Invoker, Limits, LogEntry,
    ModuleSource, Outbound, WorkerCode, WorkerError,
};
use crate::egress::{
    ApiAnswer, ApiCall, BodyStream, EgressPort, EgressRequest, EgressResponse, Fetched,
    NETWORK_DISABLED,
};
use budget::{Budget, Metered, RunId};
use loader::{ModuleMap, WorkerLoader, WorkerResolver};
use panics::{Guarded, PanicFlag};
use rquickjs::{
    async_with,
    function::{Async, Func, Rest},
    AsyncContext, AsyncRuntime, CatchResultExt, CaughtError, Ctx, Exception, Function, Module,
    Object, Persistent, Promise, TypedArray, Value,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// The Worker-facing JS layer, compiled to QuickJS bytecode by `build.rs`.
static BOOTSTRAP_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bootstrap.qjsbc"));
/// Parts an isolate loads the first time its Worker uses them (`host.module(name)`), compiled by
/// `build.rs`: the Web Streams implementation (vendored web-streams-polyfill), `URLPattern`
/// (vendored urlpattern-polyfill), `Intl`, and the glue only some Workers need: `lazy.js`
/// (crypto.subtle guards, encoding/compression streams, structuredClone, stack-trace CallSites),
/// `guards.js` (native memory guards), `events.js`, `outbound.js` (fetch) and `forms.js`.
static STREAMS_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/streams.qjsbc"));
static INTL_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/intl.qjsbc"));
static LAZY_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lazy.qjsbc"));
static GUARDS_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guards.qjsbc"));
static EVENTS_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/events.qjsbc"));
static OUTBOUND_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/outbound.qjsbc"));
static FORMS_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/forms.qjsbc"));
static BODIES_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bodies.qjsbc"));
static APIS_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/apis.qjsbc"));
static URLPATTERN_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/urlpattern.qjsbc"));

/// Name of the engine, reported in build info.
pub(crate) const ENGINE_NAME: &str = "quickjs";

/// QuickJS's native stack budget for JS recursion inside one isolate.
const MAX_STACK_BYTES: usize = 512 * 1024;
/// At most this many console entries are kept per invocation; later ones are counted.
const MAX_LOG_ENTRIES: usize = 1000;
/// At most this many bytes of console output are kept per invocation.
const MAX_LOG_BYTES: usize = 256 * 1024;
/// Memory an isolate may use while no invocation runs (creation; module evaluation is counted
/// under the invocation's own limit).
const IDLE_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// What an invocation owns while it runs: limits, captured logs, caller identity.
struct InvocationState {
    invoker: Invoker,
    limits: Limits,
    subrequests: u32,
    logs: Vec<LogEntry>,
    log_bytes: usize,
    dropped_logs: usize,
}

impl InvocationState {
    fn push_log(&mut self, level: &str, message: String) {
        if self.logs.len() >= MAX_LOG_ENTRIES || self.log_bytes + message.len() > MAX_LOG_BYTES {
            self.dropped_logs += 1;
            return;
        }
        self.log_bytes += message.len();
        self.logs.push(LogEntry {
            level: level.to_string(),
            message,
        });
    }

    fn take_logs(&mut self) -> Vec<LogEntry> {
        let mut logs = std::mem::take(&mut self.logs);
        if self.dropped_logs > 0 {
            logs.push(LogEntry {
                level: "warn".into(),
                message: format!(
                    "[isogate] {} console entries dropped (limit {} entries / {} bytes per invocation)",
                    self.dropped_logs, MAX_LOG_ENTRIES, MAX_LOG_BYTES
                ),
            });
            self.dropped_logs = 0;
        }
        self.log_bytes = 0;
        logs
    }
}

/// Host-side state of one isolate, shared by its host functions.
struct HostState {
    budget: Budget,
    contexts: context::Contexts,
    /// The invocations running on the isolate, by run id (their async context).
    invocations: RefCell<HashMap<RunId, InvocationState>>,
    outbound: Cell<Outbound>,
    egress: Arc<dyn EgressPort>,
    /// `fetch()`es a Worker may still abort (its `signal`): id → the trigger that drops the
    /// egress future (which cancels the upstream request, also across the wire).
    aborts: RefCell<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    /// Streamed `fetch()` response bodies being read, by id: the invocation that made the
    /// fetch (its bodies are dropped when it ends, which stops the upstream) and the stream.
    bodies: RefCell<HashMap<u64, FetchBody>>,
    /// The id of the next streamed body.
    next_body: Cell<u64>,
    /// The parts loaded on first use that this isolate has loaded (`host.module`), in order.
    parts: RefCell<Vec<&'static str>>,
}

/// A streamed `fetch()` response body: whose it is, and the rest of it (one read at a time).
struct FetchBody {
    run: RunId,
    stream: Rc<tokio::sync::Mutex<BodyStream>>,
}

impl HostState {
    /// Runs `f` on the state of the invocation whose code runs now (`None` outside one).
    fn with_invocation<R>(&self, f: impl FnOnce(&mut InvocationState) -> R) -> Option<R> {
        let run = self.budget.current()?;
        self.invocations.borrow_mut().get_mut(&run).map(f)
    }

    fn with_run<R>(&self, run: RunId, f: impl FnOnce(&mut InvocationState) -> R) -> Option<R> {
        self.invocations.borrow_mut().get_mut(&run).map(f)
    }
}

/// A streamed Worker Response body being read: the bootstrap's `next()` (a promise of the next
/// chunk, `undefined` at the end) and `cancel()`.
struct StreamPump {
    next: Persistent<Function<'static>>,
    cancel: Persistent<Function<'static>>,
}

/// The loaded Worker: its handler object and `env`.
struct LoadedWorker {
    handler: Persistent<Object<'static>>,
    env: Persistent<Value<'static>>,
}

/// Runs `f` charged to no isolate's memory account: for copies of bytes that are leaving the
/// isolate (a worker process encoding a frame for the wire on an isolate thread).
pub(crate) fn untracked<R>(f: impl FnOnce() -> R) -> R {
    memory::untracked(f)
}

/// One QuickJS runtime + context with the Worker API installed.
///
/// A cached Worker's isolate runs several invocations at once ([`Isolate::fetch`] takes `&self`):
/// they interleave at their await points, each with its own budget, logs and subrequests (see
/// [`budget`]). A limit breach by one condemns the isolate: the others end with
/// [`ErrorKind::IsolateDiscarded`] and the isolate is never reused.
pub(crate) struct Isolate {
    // Field order matters for drop: JS handles before the context before the runtime.
    worker: RefCell<Option<LoadedWorker>>,
    entry: Persistent<Object<'static>>,
    ctx: AsyncContext,
    _rt: AsyncRuntime,
    modules: ModuleMap,
    state: Rc<HostState>,
    /// One Worker load at a time; invocations that arrive meanwhile wait for it.
    loading: tokio::sync::Mutex<()>,
    /// Why the Worker's modules failed to load (then every invocation fails with it).
    load_error: RefCell<Option<WorkerError>>,
    /// Set once an invocation breached a limit or the isolate is otherwise unfit for reuse.
    poisoned: Cell<bool>,
    /// Set once a host function panicked while this isolate ran (never reused afterwards).
    panic: Rc<PanicFlag>,
    /// The isolate's memory account (QuickJS heap + native bytes); released last, after the
    /// runtime freed its heap.
    _account: memory::Account,
}

/// Output of [`Isolate::fetch`] once the Worker produced its response.
pub(crate) type FetchOutput = (Result<HttpResponse, WorkerError>, Vec<LogEntry>);

/// What [`Isolate::dispatch`] gets back: the response head, `waitUntil` work, a streamed body.
type Dispatched = (
    HttpResponse,
    Option<Persistent<Promise<'static>>>,
    Option<StreamPump>,
);

/// The collection threshold once an isolate is built: QuickJS's own rule after a collection
/// (the heap's size and half again), applied to the heap the start left (charged bytes; nothing
/// native is charged during the start).
fn gc_threshold_after_start(heap_bytes: u64) -> usize {
    let heap = usize::try_from(heap_bytes).unwrap_or(usize::MAX);
    heap.saturating_add(heap / 2)
}

fn internal(msg: impl std::fmt::Display) -> WorkerError {
    WorkerError::new(ErrorKind::Internal, msg.to_string())
}

fn wall_limit() -> WorkerError {
    WorkerError::new(ErrorKind::WallLimit, "wall-clock limit")
}

impl Isolate {
    /// Starts an isolate: runtime, context, LLRT Web APIs and isogate's Worker API.
    pub(crate) async fn new(egress: Arc<dyn EgressPort>) -> Result<Isolate, WorkerError> {
        static TIME_INIT: Once = Once::new();
        TIME_INIT.call_once(llrt_utils::time::init);
        panics::install_hook();
        let panic = Rc::new(PanicFlag::default());

        let account = memory::Account::open(IDLE_MEMORY_BYTES)
            .ok_or_else(|| internal("no memory account free for a new isolate"))?;
        let rt = AsyncRuntime::new_with_alloc(memory::QuickJsAllocator::new(account.id()))
            .map_err(internal)?;
        rt.set_max_stack_size(MAX_STACK_BYTES).await;
        let modules = ModuleMap::default();
        rt.set_loader(
            WorkerResolver::new(modules.clone()),
            WorkerLoader::new(modules.clone()),
        )
        .await;
        let state = Rc::new(HostState {
            budget: Budget::new(account.id()),
            contexts: context::Contexts::new(),
            invocations: RefCell::new(HashMap::new()),
            outbound: Cell::new(Outbound::Default),
            egress,
            aborts: RefCell::new(HashMap::new()),
            bodies: RefCell::new(HashMap::new()),
            next_body: Cell::new(1),
            parts: RefCell::new(Vec::new()),
        });
        let interrupt_state = state.clone();
        rt.set_interrupt_handler(Some(Box::new(move || {
            interrupt_state.budget.should_interrupt()
        })))
        .await;
        // Building the context and the Worker API makes no garbage that only a collection could
        // free (no cycles; the rest is freed by reference counting): a collection there only
        // costs time (one ran during every start when the heap crossed QuickJS's initial 256 KiB
        // threshold). Collections resume once the isolate is built (below).
        rt.set_gc_threshold(usize::MAX).await;
        let ctx = AsyncContext::full(&rt).await.map_err(internal)?;
        let host_state = state.clone();
        // The Web API modules and the bootstrap are our code with no user input: their Rust
        // allocations are not charged to the account (QuickJS's heap is, always).
        let installing = ctx.with(|ctx| -> Result<Persistent<Object<'static>>, WorkerError> {
            context::Contexts::bind(&host_state, &ctx);
            install(&ctx, host_state)
                .catch(&ctx)
                .map_err(|e| internal(format!("isolate bootstrap failed: {e}")))
        });
        let entry = Guarded::new(installing, panic.clone()).await?;
        rt.set_gc_threshold(gc_threshold_after_start(account.id().bytes()))
            .await;
        Ok(Isolate {
            worker: RefCell::new(None),
            entry,
            ctx,
            _rt: rt,
            modules,
            state,
            loading: tokio::sync::Mutex::new(()),
            load_error: RefCell::new(None),
            poisoned: Cell::new(false),
            panic,
            _account: account,
        })
    }

    /// The heap's charged bytes before and after a full collection (tests: what a collection
    /// would free at this point).
    #[cfg(test)]
    pub(super) async fn collect(&self) -> (u64, u64) {
        let before = self._account.id().bytes();
        self._rt.run_gc().await;
        (before, self._account.id().bytes())
    }

    /// Whether the isolate may serve another invocation.
    pub(crate) fn is_reusable(&self) -> bool {
        !self.poisoned.get() && !self.panic.is_set() && !self.state.budget.tripped()
    }

    fn begin(&self, invoker: Invoker, limits: Limits) -> RunId {
        let run = self
            .state
            .budget
            .start(invoker.invocation, limits, Instant::now());
        self.state.invocations.borrow_mut().insert(
            run,
            InvocationState {
                invoker,
                limits,
                subrequests: 0,
                logs: Vec::new(),
                log_bytes: 0,
                dropped_logs: 0,
            },
        );
        run
    }

    /// The tenant API names of invocation `run` (its `env` bindings).
    fn apis_of(&self, run: RunId) -> Vec<String> {
        self.state
            .with_run(run, |s| s.invoker.apis.clone())
            .unwrap_or_default()
    }

    /// Ends the invocation, returns its logs and CPU seconds; a limit breach poisons the isolate.
    fn finish(&self, run: RunId) -> (Vec<LogEntry>, f64, u32) {
        let cpu = self.state.budget.stop(run);
        if self.state.budget.tripped() {
            self.poisoned.set(true);
        }
        let (logs, subrequests) = self
            .state
            .invocations
            .borrow_mut()
            .remove(&run)
            .map(|mut s| (s.take_logs(), s.subrequests))
            .unwrap_or_default();
        // Its unread fetch() bodies go with it (the upstream requests are dropped).
        self.state.bodies.borrow_mut().retain(|_, b| b.run != run);
        (logs, cpu, subrequests)
    }

    /// Classifies a failure of `run`, giving a breached limit precedence over what the JS saw.
    /// A memory breach or a fault of isogate condemns the isolate (the other invocations on it
    /// end with `IsolateDiscarded`).
    fn classify(&self, run: RunId, err: WorkerError) -> WorkerError {
        let limits = self.state.with_run(run, |s| s.limits);
        match (self.state.budget.outcome(run), limits) {
            (Some(ErrorKind::Internal), _) | (None, _) => {}
            (Some(kind), Some(limits)) => {
                self.poisoned.set(true);
                return limit_error(kind, &limits);
            }
            (Some(kind), None) => {
                self.poisoned.set(true);
                return WorkerError::new(kind, kind.as_str());
            }
        }
        if err.kind == ErrorKind::MemoryLimit {
            self.poisoned.set(true);
            self.state.budget.trip_run(ErrorKind::MemoryLimit, run);
            if let Some(limits) = limits {
                return limit_error(ErrorKind::MemoryLimit, &limits);
            }
        }
        if err.kind == ErrorKind::Internal {
            self.poisoned.set(true);
            self.state.budget.trip_run(ErrorKind::Internal, run);
        }
        err
    }

    /// Runs `work` for `run` within `remaining` wall time: a timeout trips the wall limit (the
    /// isolate is condemned), and a trip by any invocation on the isolate ends it at once.
    async fn bounded<T>(
        &self,
        run: RunId,
        remaining: Duration,
        work: impl std::future::Future<Output = Result<T, WorkerError>>,
    ) -> Result<T, WorkerError> {
        tokio::select! {
            biased;
            done = tokio::time::timeout(remaining, work) => done.unwrap_or_else(|_| {
                self.state.budget.trip_run(ErrorKind::WallLimit, run);
                Err(wall_limit())
            }),
            () = self.state.budget.discarded() => {
                let kind = self.state.budget.outcome(run).unwrap_or(ErrorKind::IsolateDiscarded);
                Err(WorkerError::new(kind, kind.as_str()))
            }
        }
    }

    /// Loads the Worker unless it is loaded; invocations arriving during a load wait for it and
    /// share its outcome.
    async fn ensure_loaded(&self, code: &WorkerCode, run: RunId) -> Result<(), WorkerError> {
        if self.worker.borrow().is_some() {
            return Ok(());
        }
        let _loading = self.loading.lock().await;
        if self.worker.borrow().is_some() {
            return Ok(());
        }
        if let Some(e) = self.load_error.borrow().clone() {
            return Err(e);
        }
        match self.load_worker(code, run).await {
            Ok(worker) => {
                *self.worker.borrow_mut() = Some(worker);
                Ok(())
            }
            Err(e) => {
                // A Worker whose modules failed to evaluate leaves the isolate half-initialised.
                self.poisoned.set(true);
                *self.load_error.borrow_mut() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Evaluates a Worker's modules and returns its default export. Runs under the invocation's
    /// budget (module top-level code counts).
    async fn load_worker(
        &self,
        code: &WorkerCode,
        run: RunId,
    ) -> Result<LoadedWorker, WorkerError> {
        let tenant = self
            .state
            .with_run(run, |i| i.invoker.tenant.clone())
            .unwrap_or_default();
        self.modules.set(code.modules.clone(), &tenant);
        self.state.outbound.set(code.global_outbound);
        let main_name = code.main_module.clone();
        let main_source = match code.modules.get(&code.main_module) {
            Some(ModuleSource::Js(src)) => src.clone(),
            _ => {
                return Err(WorkerError::new(
                    ErrorKind::Exception,
                    format!("mainModule `{}` is not a JS module", code.main_module),
                ))
            }
        };
        let env_json = serde_json::to_string(&code.env).map_err(internal)?;
        let entry = self.entry.clone();
        let state = self.state.clone();
        let modules = self.modules.clone();
        let fut = async_with!(self.ctx => |ctx| {
            let loaded = async {
                let module = modules
                    .declare(&ctx, main_name.as_str(), main_source)
                    .catch(&ctx)
                    .map_err(|e| compile_error(&e))?;
                let (module, promise) = module
                    .eval()
                    .catch(&ctx)
                    .map_err(|e| compile_error(&e))?;
                let entry = entry.restore(&ctx).map_err(internal)?;
                let promise: Promise = call1(&ctx, &entry, "protect", promise)?;
                promise
                    .into_future::<()>()
                    .await
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                let namespace = module.namespace().catch(&ctx).map_err(|e| js_error(&e))?;
                let handler: Object = call1(&ctx, &entry, "workerHandler", namespace)?;
                let env: Value = call1(&ctx, &entry, "parseEnv", env_json)?;
                Ok::<_, WorkerError>(LoadedWorker {
                    handler: Persistent::save(&ctx, handler),
                    env: Persistent::save(&ctx, env),
                })
            };
            loaded.await
        });
        Metered::new(Guarded::new(fut, self.panic.clone()), state, run).await
    }

    /// Runs one request through the Worker's `fetch` handler. Loads `code` first if no Worker is
    /// loaded yet. The response is returned as soon as the handler produced it; promises passed
    /// to `ctx.waitUntil` are awaited (within the wall-clock limit) before this returns, with
    /// `respond` already called. `respond`'s last argument says whether work is still pending
    /// (waitUntil): when it is `false`, the invocation has ended entirely.
    ///
    /// Other invocations may run on the same isolate meanwhile (`&self`).
    pub(crate) async fn fetch(
        &self,
        code: &WorkerCode,
        request: HttpRequest,
        invoker: Invoker,
        limits: Limits,
        sink: Option<BodySink>,
        respond: impl FnOnce(FetchOutput, f64, bool),
    ) {
        let run = self.begin(invoker, limits);
        let deadline = Duration::from_millis(limits.wall_ms);
        let started = Instant::now();
        let mut respond = Some(respond);
        let streaming = sink.is_some();

        let result = self
            .bounded(run, deadline, async {
                self.ensure_loaded(code, run).await?;
                self.dispatch(run, request, streaming).await
            })
            .await;
        let result = match (result, self.state.budget.outcome(run)) {
            // A limit tripped by a host call fails the invocation even if the JS caught it.
            (Ok(_), Some(kind)) => Err(WorkerError::new(kind, kind.as_str())),
            (r, _) => r,
        };
        let (outcome, wait_until, pump) = match result {
            Ok((response, wait, pump)) => (Ok(response), wait, pump),
            Err(e) => (Err(self.classify(run, e)), None, None),
        };
        if wait_until.is_some() || pump.is_some() {
            // Respond first (a streamed body's head), then stream the body and let waitUntil
            // work finish, within the remaining wall time.
            let logs = self
                .state
                .with_run(run, |s| s.take_logs())
                .unwrap_or_default();
            if let Some(r) = respond.take() {
                r(
                    (outcome.clone(), logs),
                    self.state.budget.used_seconds(run),
                    true,
                );
            }
        }
        if let (Some(pump), Some(sink)) = (pump, sink) {
            let remaining = deadline.saturating_sub(started.elapsed());
            self.pump(run, pump, sink, remaining).await;
        }
        if let Some(wait) = wait_until {
            let remaining = deadline.saturating_sub(started.elapsed());
            if let Err(e) = self
                .bounded(run, remaining, self.await_promise(run, wait))
                .await
            {
                let e = self.classify(run, e);
                tracing::debug!(error = %e, "ctx.waitUntil work failed");
            }
        }
        let (logs, cpu, _) = self.finish(run);
        if let Some(r) = respond.take() {
            r((outcome, logs), cpu, false);
        }
    }

    /// Streams a Worker's Response body into `sink`, chunk by chunk, until it ends, fails, the
    /// sink wants no more (the Worker's stream is cancelled) or `remaining` wall time is spent.
    /// Every outcome ends with one [`BodyPart::End`].
    async fn pump(&self, run: RunId, pump: StreamPump, mut sink: BodySink, remaining: Duration) {
        let streamed = self
            .bounded(run, remaining, async {
                loop {
                    match self.next_chunk(run, &pump.next).await? {
                        Some(bytes) => {
                            // A slow client holds the stream back here (within wall_ms).
                            if !sink.room(bytes.len()).await || !sink.send(BodyPart::Chunk(bytes)) {
                                // The client went away: stop the Worker's stream (best effort;
                                // `cancel` resolves to nothing).
                                let _ = self.next_chunk(run, &pump.cancel).await;
                                return Ok(());
                            }
                        }
                        None => return Ok(()),
                    }
                }
            })
            .await;
        let end = match streamed {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::WallLimit => {
                self.poisoned.set(true);
                Err("the Worker's response body was cut off at the wall-clock limit".to_string())
            }
            Err(e) => Err(self.classify(run, e).message),
        };
        if let Err(e) = &end {
            tracing::debug!(error = %e, "a streamed response body broke off");
        }
        sink.send(BodyPart::End(end));
    }

    /// Calls `next` and awaits it: the next chunk of a streamed body (`None`: the stream is done,
    /// or `next` resolved to nothing), copied out of the isolate.
    async fn next_chunk(
        &self,
        run: RunId,
        next: &Persistent<Function<'static>>,
    ) -> Result<Option<Vec<u8>>, WorkerError> {
        let state = self.state.clone();
        let next = next.clone();
        let fut = async_with!(self.ctx => |ctx| {
            let run = async {
                let next = next.restore(&ctx).map_err(internal)?;
                let promise: Promise = next.call(()).catch(&ctx).map_err(|e| js_error(&e))?;
                let value: Value = promise
                    .into_future()
                    .await
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                if value.is_undefined() {
                    return Ok(None);
                }
                let chunk = TypedArray::<u8>::from_value(value)
                    .map_err(|_| worker_fault("the Worker's Response stream produced a chunk that is not bytes"))?;
                // The chunk leaves the isolate: its copy is not charged to the isolate's account.
                Ok::<_, WorkerError>(Some(memory::untracked(|| {
                    chunk.as_bytes().map(<[u8]>::to_vec).unwrap_or_default()
                })))
            };
            run.await
        });
        Metered::new(Guarded::new(fut, self.panic.clone()), state, run).await
    }

    async fn dispatch(
        &self,
        run: RunId,
        request: HttpRequest,
        streaming: bool,
    ) -> Result<Dispatched, WorkerError> {
        let (handler, env) = {
            let worker = self.worker.borrow();
            let worker = worker
                .as_ref()
                .ok_or_else(|| internal("no Worker loaded"))?;
            (worker.handler.clone(), worker.env.clone())
        };
        let apis = self.apis_of(run);
        let entry = self.entry.clone();
        let state = self.state.clone();
        let fut = async_with!(self.ctx => |ctx| {
            let run = async {
                let entry = entry.restore(&ctx).map_err(internal)?;
                let dispatch: Function = entry.get("dispatch").map_err(internal)?;
                let handler = handler.restore(&ctx).map_err(internal)?;
                let env = env.restore(&ctx).map_err(internal)?;
                let env = with_apis(&ctx, &entry, env, apis)?;
                let headers = header_array(&ctx, &request.headers)?;
                let mut request_body = request.body;
                let body: Value = if request_body.is_empty() {
                    Value::new_null(ctx.clone())
                } else {
                    memory::adopt(&mut request_body);
                    TypedArray::<u8>::new(ctx.clone(), request_body)
                        .map_err(internal)?
                        .into_value()
                };
                let promise: Promise = dispatch
                    .call((handler, env, request.method, request.url, headers, body, streaming))
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                let out: Object = promise
                    .into_future()
                    .await
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                let mut response = read_response(&ctx, &out)?;
                let wait: Option<Promise> = out.get("waitUntil").map_err(internal)?;
                let next: Option<Function> = out.get("next").map_err(internal)?;
                let cancel: Option<Function> = out.get("cancel").map_err(internal)?;
                let pump = match (next, cancel) {
                    (Some(next), Some(cancel)) => {
                        response.streamed = true;
                        Some(StreamPump {
                            next: Persistent::save(&ctx, next),
                            cancel: Persistent::save(&ctx, cancel),
                        })
                    }
                    _ => None,
                };
                Ok::<_, WorkerError>((response, wait.map(|p| Persistent::save(&ctx, p)), pump))
            };
            run.await
        });
        Metered::new(Guarded::new(fut, self.panic.clone()), state, run).await
    }

    async fn await_promise(
        &self,
        run: RunId,
        promise: Persistent<Promise<'static>>,
    ) -> Result<(), WorkerError> {
        let state = self.state.clone();
        let fut = async_with!(self.ctx => |ctx| {
            let run = async {
                let promise = promise.restore(&ctx).map_err(internal)?;
                promise
                    .into_future::<Value>()
                    .await
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                Ok::<_, WorkerError>(())
            };
            run.await
        });
        Metered::new(Guarded::new(fut, self.panic.clone()), state, run).await
    }

    /// Runs a Code Mode snippet (an async function taking `env`) and returns its result as JSON.
    pub(crate) async fn execute(
        &self,
        source: &str,
        env: &serde_json::Value,
        invoker: Invoker,
        limits: Limits,
    ) -> (
        Result<serde_json::Value, WorkerError>,
        Vec<LogEntry>,
        f64,
        u32,
    ) {
        let apis = invoker.apis.clone();
        let tools = invoker.tools.clone();
        let run = self.begin(invoker, limits);
        let deadline = Duration::from_millis(limits.wall_ms);
        // The snippet becomes the default export of a one-module Worker; nothing else is
        // importable. With client-side tools, the export is a function of the namespaces that
        // returns the snippet: each namespace is a variable of the snippet (the gateway checked
        // that the names are identifiers), and the snippet's first line stays line 2.
        let params = tools
            .iter()
            .map(|n| n.namespace.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let module_source = if tools.is_empty() {
            format!("export default (\n{source}\n);\n")
        } else {
            format!("export default (({params}) => (\n{source}\n));\n")
        };
        let tools_json = serde_json::to_string(&tools).unwrap_or_else(|_| "[]".into());
        let env_json = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
        self.modules.set(Default::default(), "");
        let entry = self.entry.clone();
        let state = self.state.clone();
        let fut = async_with!(self.ctx => |ctx| {
            let run = async {
                let module = Module::declare(ctx.clone(), "execute.js", module_source)
                    .catch(&ctx)
                    .map_err(|e| compile_error(&e))?;
                let (module, promise) = module.eval().catch(&ctx).map_err(|e| compile_error(&e))?;
                let entry = entry.restore(&ctx).map_err(internal)?;
                let promise: Promise = call1(&ctx, &entry, "protect", promise)?;
                promise.into_future::<()>().await.catch(&ctx).map_err(|e| js_error(&e))?;
                let mut function: Value = module.get("default").catch(&ctx).map_err(|e| js_error(&e))?;
                if !tools.is_empty() {
                    let bind: Function = entry.get("clientTools").map_err(internal)?;
                    function = bind
                        .call((function, tools_json))
                        .catch(&ctx)
                        .map_err(|e| js_error(&e))?;
                }
                let env: Value = call1(&ctx, &entry, "parseEnv", env_json)?;
                let env = with_apis(&ctx, &entry, env, apis)?;
                let execute: Function = entry.get("execute").map_err(internal)?;
                let promise: Promise = execute
                    .call((function, env))
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                let json: String = promise
                    .into_future()
                    .await
                    .catch(&ctx)
                    .map_err(|e| js_error(&e))?;
                Ok::<_, WorkerError>(json)
            };
            run.await
        });
        let result = self
            .bounded(
                run,
                deadline,
                Metered::new(Guarded::new(fut, self.panic.clone()), state, run),
            )
            .await
            .and_then(|json| match self.state.budget.outcome(run) {
                Some(kind) => Err(WorkerError::new(kind, kind.as_str())),
                None => Ok(json),
            })
            .and_then(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| internal(format!("result is not valid JSON: {e}")))
            })
            .map_err(|e| self.classify(run, e));
        let (logs, cpu, subrequests) = self.finish(run);
        (result, logs, cpu, subrequests)
    }
}

/// The error of an invocation cut short because another one on its isolate breached a limit.
const ISOLATE_DISCARDED: &str = "another request to this Worker breached a limit while this one \
     ran in the same isolate; the isolate was discarded with both requests (retry this one)";

fn limit_error(kind: ErrorKind, limits: &Limits) -> WorkerError {
    let message = match kind {
        ErrorKind::CpuLimit => format!(
            "the Worker exceeded its CPU time limit of {} ms and was stopped",
            limits.cpu_ms
        ),
        ErrorKind::MemoryLimit => format!(
            "the Worker exceeded its memory limit of {} MiB and was stopped",
            limits.memory_mb
        ),
        ErrorKind::WallLimit => format!(
            "the Worker exceeded its wall-clock limit of {} ms and was stopped",
            limits.wall_ms
        ),
        ErrorKind::SubrequestLimit => format!(
            "the Worker exceeded its limit of {} subrequests (outbound fetch calls) and was stopped",
            limits.subrequests
        ),
        ErrorKind::IsolateDiscarded => ISOLATE_DISCARDED.to_string(),
        other => other.as_str().to_string(),
    };
    WorkerError::new(kind, message)
}

/// Calls `entry[name](arg)` and converts the result.
fn call1<'js, A, R>(
    ctx: &Ctx<'js>,
    entry: &Object<'js>,
    name: &str,
    arg: A,
) -> Result<R, WorkerError>
where
    A: rquickjs::IntoJs<'js>,
    R: rquickjs::FromJs<'js>,
{
    let f: Function = entry.get(name).map_err(internal)?;
    f.call((arg,)).catch(ctx).map_err(|e| js_error(&e))
}

fn header_array<'js>(
    ctx: &Ctx<'js>,
    headers: &[(String, String)],
) -> Result<Value<'js>, WorkerError> {
    let array = rquickjs::Array::new(ctx.clone()).map_err(internal)?;
    for (i, (name, value)) in headers.iter().enumerate() {
        let pair = rquickjs::Array::new(ctx.clone()).map_err(internal)?;
        pair.set(0, name.as_str()).map_err(internal)?;
        pair.set(1, value.as_str()).map_err(internal)?;
        array.set(i, pair).map_err(internal)?;
    }
    Ok(array.into_value())
}

/// Header pairs from JS: a `Headers` object (read natively, no call back into JS) or an array of
/// `[name, value]` pairs.
fn read_headers<'js>(value: Value<'js>) -> rquickjs::Result<Vec<(String, String)>> {
    if let Ok(headers) = rquickjs::Class::<llrt_fetch::headers::Headers>::from_value(&value) {
        let headers = headers.try_borrow()?;
        return Ok(headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect());
    }
    let array = rquickjs::Array::from_value(value)?;
    let mut out = Vec::with_capacity(array.len());
    for pair in array.iter::<rquickjs::Array>() {
        let pair = pair?;
        out.push((pair.get::<String>(0)?, pair.get::<String>(1)?));
    }
    Ok(out)
}

/// A failure caused by what the Worker produced (never a gateway fault).
fn worker_fault(msg: impl std::fmt::Display) -> WorkerError {
    WorkerError::new(ErrorKind::Exception, msg.to_string())
}

/// An HTTP field name: a `token` (RFC 9110), as the `http` crate parses one.
fn valid_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// An HTTP field value as the Fetch standard allows it: no NUL, CR or LF.
fn valid_header_value(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

/// Reads what the bootstrap's `dispatch` produced. Everything in it derives from the Worker's
/// Response, so a value of the wrong shape is the Worker's fault (`exception`), and the checks
/// the Response constructor makes are repeated here so nothing invalid reaches the ingress.
fn read_response<'js>(_ctx: &Ctx<'js>, out: &Object<'js>) -> Result<HttpResponse, WorkerError> {
    let unreadable =
        |e: rquickjs::Error| worker_fault(format!("the Worker's Response could not be read: {e}"));
    let status: u16 = out.get("status").map_err(unreadable)?;
    if !(200..=599).contains(&status) {
        return Err(worker_fault(format!(
            "the Worker's Response has status {status}; a response status must be in the range 200 to 599"
        )));
    }
    let headers = read_headers(out.get("headers").map_err(unreadable)?).map_err(unreadable)?;
    for (name, value) in &headers {
        if !valid_header_name(name) || !valid_header_value(value) {
            return Err(worker_fault(format!(
                "the Worker's Response has an invalid header {name:?}"
            )));
        }
    }
    let body: Option<TypedArray<u8>> = out.get("body").map_err(unreadable)?;
    // The body leaves the isolate: its copy is not charged to the isolate's account.
    let body = memory::untracked(|| {
        body.and_then(|b| b.as_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default()
    });
    Ok(HttpResponse {
        status,
        headers,
        body,
        streamed: false,
    })
}

/// Describes a JS failure for the caller; out-of-memory becomes a memory-limit error.
fn js_error(err: &CaughtError<'_>) -> WorkerError {
    let message = describe_caught(err);
    if message.contains("out of memory") {
        return WorkerError::new(ErrorKind::MemoryLimit, message);
    }
    match err {
        CaughtError::Error(e) => internal(e),
        _ => WorkerError::new(ErrorKind::Exception, message),
    }
}

/// Like [`js_error`], but a `SyntaxError` while compiling/linking is a syntax error.
fn compile_error(err: &CaughtError<'_>) -> WorkerError {
    let e = js_error(err);
    if e.kind == ErrorKind::Exception && e.message.starts_with("SyntaxError") {
        return WorkerError::new(ErrorKind::Syntax, e.message);
    }
    e
}

fn describe_caught(err: &CaughtError<'_>) -> String {
    match err {
        CaughtError::Exception(ex) => {
            let name: Option<String> = ex.get("name").ok();
            let message = ex.message().unwrap_or_default();
            let mut out = match name {
                Some(n) if !n.is_empty() => format!("{n}: {message}"),
                _ => message,
            };
            if let Some(stack) = ex.stack() {
                let stack = stack.trim_end();
                if !stack.is_empty() {
                    out.push('\n');
                    out.push_str(stack);
                }
            }
            out
        }
        CaughtError::Value(v) => format!("Uncaught {}", display_value(v)),
        CaughtError::Error(e) => e.to_string(),
    }
}

fn display_value(v: &Value<'_>) -> String {
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return s;
    }
    v.ctx()
        .json_stringify(v.clone())
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| format!("{:?}", v.type_of()))
}

/// What `llrt_buffer::init` defines but `Buffer`: Blob (with its `instanceof`), File, atob and
/// btoa, as that init defines them. `Buffer`, a class with ~50 native methods (~15 KB of every
/// isolate's heap), is made when a Worker first reads it (`host.buffer`).
fn blob_file_and_base64(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let globals = ctx.globals();
    if let Some(constructor) = rquickjs::Class::<llrt_buffer::Blob>::create_constructor(ctx)? {
        constructor.prop(
            rquickjs::atom::PredefinedAtom::SymbolHasInstance,
            Func::from(llrt_buffer::Blob::has_instance),
        )?;
        globals.set("Blob", constructor)?;
    }
    rquickjs::Class::<llrt_buffer::File>::define(&globals)?;
    globals.set("atob", Func::from(llrt_buffer::atob))?;
    globals.set("btoa", Func::from(llrt_buffer::btoa))?;
    Ok(())
}

/// Initialises the Web APIs and the Worker API on a fresh context; returns the internal entry
/// points (never reachable from user code).
fn install<'js>(
    ctx: &Ctx<'js>,
    state: Rc<HostState>,
) -> rquickjs::Result<Persistent<Object<'static>>> {
    // The intrinsics LLRT's modules use, read before any of them runs.
    <llrt_utils::primordials::BasePrimordials as llrt_utils::primordials::Primordial>::init(ctx)?;
    // URL and URLSearchParams (llrt_url), FormData, `performance` (llrt_perf_hooks), and
    // llrt_events' and llrt_abort's classes (Event, EventTarget, CustomEvent, AbortController,
    // AbortSignal) are made when a Worker first reaches one of them (`host.classes`).
    llrt_exceptions::init(ctx)?;
    blob_file_and_base64(ctx)?;
    let globals = ctx.globals();
    // llrt_util's TextEncoder; the TextDecoder is ours: every WHATWG encoding and streaming
    // decode.
    rquickjs::Class::<llrt_util::text_encoder::TextEncoder>::define(&globals)?;
    rquickjs::Class::<text::TextDecoder>::define(&globals)?;
    // Request/Response/Headers from LLRT's fetch module, without its fetch (ours goes through
    // the gateway's egress pipeline).
    rquickjs::Class::<llrt_fetch::request::Request>::define(&globals)?;
    rquickjs::Class::<llrt_fetch::response::Response>::define(&globals)?;
    rquickjs::Class::<llrt_fetch::headers::Headers>::define(&globals)?;
    install_console(ctx, &state)?;

    let host = Object::new(ctx.clone())?;
    let sleep_state = state.clone();
    host.set(
        "sleep",
        Func::from(Async(move |ctx: Ctx<'js>, ms: f64| {
            // A timer set by work an ended invocation left behind never fires: that work stops
            // at its next timer instead of running on later invocations' turns.
            let live = sleep_state.budget.current().is_some();
            async move {
                if !live {
                    return Err(Exception::throw_message(
                        &ctx,
                        "the request that set this timer has ended",
                    ));
                }
                tokio::time::sleep(Duration::from_secs_f64((ms / 1000.0).max(0.0))).await;
                Ok(())
            }
        })),
    )?;
    host.set(
        "randomBytes",
        Func::from(
            |ctx: Ctx<'js>, n: usize| -> rquickjs::Result<TypedArray<'js, u8>> {
                let mut buf = vec![0u8; n.min(65536)];
                getrandom::getrandom(&mut buf)
                    .map_err(|_| Exception::throw_internal(&ctx, "no randomness available"))?;
                TypedArray::new(ctx, buf)
            },
        ),
    )?;
    let reserve_state = state.clone();
    host.set(
        "reserve",
        Func::from(move |ctx: Ctx<'js>, bytes: f64| -> rquickjs::Result<()> {
            if reserve_state.budget.reserve(bytes) {
                return Ok(());
            }
            Err(Exception::throw_range(
                &ctx,
                &format!(
                    "memory limit: {bytes} more bytes do not fit in the Worker's memory budget"
                ),
            ))
        }),
    )?;
    let parts_state = state.clone();
    host.set(
        "module",
        Func::from(
            move |ctx: Ctx<'js>, name: String| -> rquickjs::Result<Value<'js>> {
                // The bytecode, and the export the bootstrap wants.
                let (name, bytes, export) = match name.as_str() {
                    "streams" => ("streams", STREAMS_BYTECODE, "default"),
                    "intl" => ("intl", INTL_BYTECODE, "default"),
                    "lazy" => ("lazy", LAZY_BYTECODE, "default"),
                    "guards" => ("guards", GUARDS_BYTECODE, "default"),
                    "events" => ("events", EVENTS_BYTECODE, "default"),
                    "outbound" => ("outbound", OUTBOUND_BYTECODE, "default"),
                    "forms" => ("forms", FORMS_BYTECODE, "default"),
                    "bodies" => ("bodies", BODIES_BYTECODE, "default"),
                    "apis" => ("apis", APIS_BYTECODE, "default"),
                    "urlpattern" => ("urlpattern", URLPATTERN_BYTECODE, "URLPattern"),
                    _ => return Err(Exception::throw_internal(&ctx, "unknown lazy module")),
                };
                parts_state.parts.borrow_mut().push(name);
                // SAFETY: the bytes are QuickJS bytecode written by build.rs with the same
                // rquickjs-sys (QuickJS) version this crate links, from our own sources; 'static.
                let module = unsafe { Module::load(ctx.clone(), bytes)? };
                let (module, promise) = module.eval()?;
                promise.finish::<()>()?;
                module.get(export)
            },
        ),
    )?;
    // A group of native globals, when a Worker first reaches one of them (the bootstrap's lazy
    // globals, which read back what the group defined and put those globals back as they were).
    let classes_state = state.clone();
    host.set(
        "classes",
        Func::from(
            move |ctx: Ctx<'js>, group: String| -> rquickjs::Result<()> {
                let (name, init): (&'static str, fn(&Ctx<'js>) -> rquickjs::Result<()>) =
                    match group.as_str() {
                        "url" => ("url", llrt_url::init),
                        "formdata" => ("formdata", |ctx| {
                            rquickjs::Class::<llrt_fetch::form_data::FormData>::define(
                                &ctx.globals(),
                            )
                        }),
                        "performance" => ("performance", llrt_perf_hooks::init),
                        "eventclasses" => ("eventclasses", |ctx| {
                            llrt_events::init(ctx)?;
                            llrt_abort::init(ctx)
                        }),
                        _ => return Err(Exception::throw_internal(&ctx, "unknown class group")),
                    };
                classes_state.parts.borrow_mut().push(name);
                init(&ctx)
            },
        ),
    )?;
    // llrt_buffer's init, on the first use of `Buffer` (the bootstrap's lazy global): it makes
    // the Buffer class and also Blob, File, atob and btoa again, which the bootstrap puts back.
    let buffer_state = state.clone();
    host.set(
        "buffer",
        Func::from(move |ctx: Ctx<'js>| -> rquickjs::Result<Value<'js>> {
            buffer_state.parts.borrow_mut().push("buffer");
            llrt_buffer::init(&ctx)?;
            // The class binding LLRT's init declared (whatever the global property now holds).
            ctx.eval("Buffer")
        }),
    )?;
    host.set("maxBodyBytes", crate::wire::MAX_BODY_BYTES as f64)?;
    // llrt_crypto's init: defines Crypto/SubtleCrypto/CryptoKey and a global `crypto`; the
    // bootstrap keeps `subtle` and the two classes and puts those globals back as they were.
    host.set(
        "subtle",
        Func::from(|ctx: Ctx<'js>| llrt_crypto::init(&ctx)),
    )?;
    let live_codecs = Rc::new(Cell::new(0usize));
    host.set(
        "codec",
        Func::from(
            move |ctx: Ctx<'js>,
                  format: String,
                  compress: bool|
                  -> rquickjs::Result<rquickjs::Class<'js, codec::Codec>> {
                let codec = codec::Codec::new(&ctx, &format, compress, live_codecs.clone())?;
                rquickjs::Class::instance(ctx, codec)
            },
        ),
    )?;
    let abort_state = state.clone();
    host.set(
        "abortFetch",
        Func::from(move |id: f64| {
            let trigger = abort_state.aborts.borrow_mut().remove(&(id as u64));
            if let Some(t) = trigger {
                let _ = t.send(());
            }
        }),
    )?;
    let read_state = state.clone();
    host.set(
        "readFetchBody",
        Func::from(Async(move |ctx: Ctx<'js>, id: f64| {
            let id = id as u64;
            let state = read_state.clone();
            let stream = state.bodies.borrow().get(&id).map(|b| b.stream.clone());
            async move {
                let Some(stream) = stream else {
                    return Err(Exception::throw_type(
                        &ctx,
                        "fetch(): the response body is gone (cancelled, or the request that made the fetch has ended)",
                    ));
                };
                let next = stream.lock().await.next().await;
                match next {
                    Some(Ok(mut bytes)) => {
                        memory::adopt(&mut bytes);
                        Ok(TypedArray::<u8>::new(ctx.clone(), bytes)?.into_value())
                    }
                    None => {
                        state.bodies.borrow_mut().remove(&id);
                        Ok(Value::new_undefined(ctx.clone()))
                    }
                    Some(Err(e)) => {
                        state.bodies.borrow_mut().remove(&id);
                        Err(Exception::throw_type(
                            &ctx,
                            &format!("fetch(): the response body broke off: {e}"),
                        ))
                    }
                }
            }
        })),
    )?;
    let cancel_state = state.clone();
    host.set(
        "cancelFetchBody",
        Func::from(move |id: f64| {
            cancel_state.bodies.borrow_mut().remove(&(id as u64));
        }),
    )?;
    let api_state = state.clone();
    host.set(
        "api",
        Func::from(Async(
            move |ctx: Ctx<'js>, api: String, tool: String, args: String, client: bool| {
                let state = api_state.clone();
                let prepared = prepare_api(&state, api, tool, args, client);
                async move {
                    let (run, invoker, call, left) = match prepared {
                        Ok(p) => p,
                        Err(failure) => return api_outcome(&ctx, Err(*failure)),
                    };
                    let reserved = left > 0 && !client;
                    let answer = state.egress.api(invoker, call, left).await;
                    match answer {
                        ApiAnswer::Done(json) => api_outcome(&ctx, Ok(json)),
                        ApiAnswer::Failed { failure, charged } => {
                            if reserved && !charged {
                                refund_subrequest(&state, run);
                            }
                            api_outcome(&ctx, Err(failure))
                        }
                        ApiAnswer::SubrequestLimit => {
                            state.budget.trip_run(ErrorKind::SubrequestLimit, run);
                            Err(Exception::throw_type(&ctx, SUBREQUESTS_SPENT))
                        }
                    }
                }
            },
        )),
    )?;
    let fetch_state = state;
    host.set(
        "fetch",
        Func::from(Async(
            move |ctx: Ctx<'js>,
                  method: String,
                  url: String,
                  headers: Value<'js>,
                  body: Value<'js>,
                  redirect: String,
                  abort_id: f64| {
                let state = fetch_state.clone();
                let prepared = prepare_fetch(&state, method, url, headers, body, redirect);
                // A fetch() with a signal can be aborted: the trigger drops the egress future.
                let abort_id = abort_id as u64;
                let aborted = (abort_id != 0).then(|| {
                    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                    state.aborts.borrow_mut().insert(abort_id, tx);
                    rx
                });
                async move {
                    let refuse = |ctx: &Ctx<'js>, r: FetchRefusal| match r {
                        FetchRefusal::TypeError(msg) => Exception::throw_type(ctx, &msg),
                        FetchRefusal::Internal(msg) => Exception::throw_internal(ctx, &msg),
                    };
                    let (run, invoker, request, left) = prepared.map_err(|r| {
                        state.aborts.borrow_mut().remove(&abort_id);
                        refuse(&ctx, r)
                    })?;
                    let reserved = left > 0;
                    let sent = state.egress.fetch(invoker, request, left);
                    let (fetched, rest) = match aborted {
                        None => sent.await,
                        Some(rx) => {
                            tokio::select! {
                                f = sent => {
                                    state.aborts.borrow_mut().remove(&abort_id);
                                    f
                                }
                                // Aborted (a dropped trigger is not an abort: the isolate is
                                // going away and the fetch with it).
                                Ok(()) = rx => {
                                    return Err(Exception::throw_message(&ctx, "fetch(): aborted"));
                                }
                            }
                        }
                    };
                    match fetched {
                        Fetched::Sent(resp) => {
                            if resp.hops > 0 {
                                charge_subrequests(&state, run, resp.hops)
                                    .map_err(|r| refuse(&ctx, r))?;
                            }
                            let body = rest.map(|stream| {
                                let id = state.next_body.get();
                                state.next_body.set(id + 1);
                                let stream = Rc::new(tokio::sync::Mutex::new(stream));
                                state
                                    .bodies
                                    .borrow_mut()
                                    .insert(id, FetchBody { run, stream });
                                id
                            });
                            response_object(&ctx, resp, body)
                        }
                        Fetched::Answered(resp) => {
                            if reserved {
                                refund_subrequest(&state, run);
                            }
                            response_object(&ctx, resp, None)
                        }
                        Fetched::Rejected {
                            message,
                            charged,
                            detail,
                        } => {
                            if reserved && !charged {
                                refund_subrequest(&state, run);
                            }
                            Err(throw_detailed(&ctx, &message, detail.as_deref()))
                        }
                        Fetched::SubrequestLimit { redirecting } => {
                            state.budget.trip_run(ErrorKind::SubrequestLimit, run);
                            Err(Exception::throw_type(
                                &ctx,
                                if redirecting {
                                    "subrequest limit exceeded while following redirects"
                                } else {
                                    SUBREQUESTS_SPENT
                                },
                            ))
                        }
                    }
                }
            },
        )),
    )?;

    // SAFETY: the bytes are QuickJS bytecode written by build.rs with the same rquickjs-sys
    // (QuickJS) version this crate links, from our own bootstrap.js; they are 'static.
    let module = unsafe { Module::load(ctx.clone(), BOOTSTRAP_BYTECODE)? };
    let (module, promise) = module.eval()?;
    promise.finish::<()>()?;
    let install: Function = module.get("install")?;
    let entry: Object = install.call((host,))?;
    Ok(Persistent::save(ctx, entry))
}

enum FetchRefusal {
    TypeError(String),
    Internal(String),
}

const SUBREQUESTS_SPENT: &str =
    "subrequest limit exceeded: this invocation may not make more outbound requests";

/// The isolate-side steps of an outbound request: network disabled, the request read from JS
/// (identity from host state: `run`, the invocation whose code calls; its subrequests are charged
/// to it even when the response arrives while another invocation's code runs), and one
/// subrequest reserved —
/// returned as `left`, the budget
/// *including* this request (0: spent; the egress still authorizes it, see [`EgressPort`]).
/// Reserving before the egress runs keeps concurrent `fetch()`es of one invocation within the
/// budget; a request the egress answers or refuses without sending gets its subrequest back.
fn prepare_fetch(
    state: &HostState,
    method: String,
    url: String,
    headers: Value<'_>,
    body: Value<'_>,
    redirect: String,
) -> Result<(RunId, Invoker, EgressRequest, u32), FetchRefusal> {
    if state.outbound.get() == Outbound::Disabled || !state.egress.enabled() {
        return Err(FetchRefusal::TypeError(NETWORK_DISABLED.to_string()));
    }
    let run = state.budget.current().ok_or_else(|| {
        FetchRefusal::TypeError("fetch(): the request that made this call has ended".into())
    })?;
    let invoker = state
        .with_run(run, |s| s.invoker.clone())
        .ok_or_else(|| FetchRefusal::Internal("fetch() outside of a request".into()))?;
    let headers = read_headers(headers)
        .map_err(|e| FetchRefusal::TypeError(format!("fetch(): invalid request headers: {e}")))?;
    let body = if body.is_null() || body.is_undefined() {
        Vec::new()
    } else {
        TypedArray::<u8>::from_value(body)
            .ok()
            .and_then(|b| b.as_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default()
    };
    let request = EgressRequest {
        method,
        url,
        headers,
        body,
        redirect,
        budget: 0,
    };
    let left = state
        .with_run(run, |s| {
            let left = s.limits.subrequests.saturating_sub(s.subrequests);
            if left > 0 {
                s.subrequests += 1;
            }
            left
        })
        .unwrap_or(0);
    Ok((run, invoker, request, left))
}

/// Longest tool name an API call may carry (upstream names are bounded lower still).
const MAX_TOOL_NAME_BYTES: usize = 1024;

/// The isolate-side steps of an API call: identity from host state (the invocation whose code
/// calls), the argument size bounded, one subrequest reserved as for `fetch()`. A client-side
/// tool call (`client`) must be one the invocation declares and reserves nothing.
fn prepare_api(
    state: &HostState,
    api: String,
    tool: String,
    args: String,
    client: bool,
) -> Result<(RunId, Invoker, ApiCall, u32), Box<crate::egress::ApiFailure>> {
    use crate::egress::ApiFailure;
    let run = state.budget.current().ok_or_else(|| {
        Box::new(ApiFailure::new(
            crate::egress::ApiErrorCode::ApiUnavailable,
            "the request that made this call has ended",
        ))
    })?;
    let invoker = state.with_run(run, |s| s.invoker.clone()).ok_or_else(|| {
        Box::new(ApiFailure::new(
            crate::egress::ApiErrorCode::ApiUnavailable,
            "API call outside of a request",
        ))
    })?;
    if client {
        crate::api::ClientTools::check(&invoker.tools, &api, &tool).map_err(Box::new)?;
    } else if !invoker.apis.contains(&api) {
        return Err(Box::new(ApiFailure::new(
            crate::egress::ApiErrorCode::ApiNotFound,
            format!("env.{api} is not an API of this tenant"),
        )));
    }
    if tool.len() > MAX_TOOL_NAME_BYTES {
        return Err(Box::new(ApiFailure::new(
            crate::egress::ApiErrorCode::ToolNotFound,
            format!("env.{api} has no tool with a {}-byte name", tool.len()),
        )));
    }
    crate::egress::check_api_args(&args).map_err(Box::new)?;
    let left = state
        .with_run(run, |s| {
            let left = s.limits.subrequests.saturating_sub(s.subrequests);
            if left > 0 && !client {
                s.subrequests += 1;
            }
            left
        })
        .unwrap_or(0);
    let call = ApiCall {
        api,
        tool,
        args,
        client,
    };
    Ok((run, invoker, call, left))
}

/// Throws a `TypeError` with `message` and, for a denial, the properties the code can act on:
/// `code`, `rule`, `reason`, `hint`.
fn throw_detailed(
    ctx: &Ctx<'_>,
    message: &str,
    detail: Option<&crate::egress::ApiFailure>,
) -> rquickjs::Error {
    let thrown = Exception::throw_type(ctx, message);
    let Some(detail) = detail else {
        return thrown;
    };
    let error = ctx.catch();
    if let Some(object) = error.as_object() {
        let _ = object.set("code", detail.code.as_str());
        for (key, value) in [
            ("rule", &detail.rule),
            ("reason", &detail.reason),
            ("hint", &detail.hint),
        ] {
            if let Some(value) = value {
                let _ = object.set(key, value.as_str());
            }
        }
    }
    ctx.throw(error)
}

/// The Worker's `env` with a binding for each tenant API (the same object while they are the
/// same).
fn with_apis<'js>(
    ctx: &Ctx<'js>,
    entry: &Object<'js>,
    env: Value<'js>,
    apis: Vec<String>,
) -> Result<Value<'js>, WorkerError> {
    if apis.is_empty() {
        return Ok(env);
    }
    let with: Function = entry.get("withApis").map_err(internal)?;
    with.call((env, apis)).catch(ctx).map_err(|e| js_error(&e))
}

/// What `host.api` resolves to: `{ value: <JSON text> }`, or `{ error: {code, message, …} }`
/// which the bootstrap turns into a thrown `ApiError`.
fn api_outcome<'js>(
    ctx: &Ctx<'js>,
    outcome: Result<String, crate::egress::ApiFailure>,
) -> rquickjs::Result<Object<'js>> {
    let out = Object::new(ctx.clone())?;
    out.set_prototype(None)?;
    match outcome {
        Ok(json) => out.set("value", json)?,
        Err(f) => {
            let error = Object::new(ctx.clone())?;
            error.set_prototype(None)?;
            error.set("code", f.code.as_str())?;
            error.set("message", f.message)?;
            error.set("rule", f.rule)?;
            error.set("reason", f.reason)?;
            error.set("hint", f.hint)?;
            error.set("status", f.status)?;
            out.set("error", error)?;
        }
    }
    Ok(out)
}

/// Gives back a subrequest reserved by [`prepare_fetch`] that was not spent.
fn refund_subrequest(state: &HostState, run: RunId) {
    state.with_run(run, |s| s.subrequests = s.subrequests.saturating_sub(1));
}

/// Charges `n` subrequests to `run`; returns how many remain, or trips the limit.
fn charge_subrequests(state: &HostState, run: RunId, n: u32) -> Result<u32, FetchRefusal> {
    let remaining = state
        .with_run(run, |s| {
            s.subrequests = s.subrequests.saturating_add(n);
            s.limits.subrequests.checked_sub(s.subrequests)
        })
        .flatten();
    remaining.ok_or_else(|| {
        state.budget.trip_run(ErrorKind::SubrequestLimit, run);
        FetchRefusal::TypeError(SUBREQUESTS_SPENT.into())
    })
}

/// The host's answer to a `fetch()`: status, headers, the body bytes that came with the head,
/// and `stream`, the id of the rest of a streamed body (`readFetchBody`), when there is one.
fn response_object<'js>(
    ctx: &Ctx<'js>,
    mut resp: EgressResponse,
    stream: Option<u64>,
) -> rquickjs::Result<Object<'js>> {
    memory::adopt(&mut resp.body);
    let out = Object::new(ctx.clone())?;
    out.set("status", resp.status)?;
    let headers =
        header_array(ctx, &resp.headers).map_err(|e| Exception::throw_internal(ctx, &e.message))?;
    out.set("headers", headers)?;
    out.set("body", TypedArray::<u8>::new(ctx.clone(), resp.body)?)?;
    out.set("url", resp.url)?;
    out.set("redirected", resp.hops > 0)?;
    if let Some(id) = stream {
        out.set("stream", id)?;
    }
    Ok(out)
}

fn install_console<'js>(ctx: &Ctx<'js>, state: &Rc<HostState>) -> rquickjs::Result<()> {
    let console = Object::new(ctx.clone())?;
    for level in ["log", "info", "debug", "warn", "error", "trace"] {
        let state = state.clone();
        console.set(
            level,
            Func::from(
                move |ctx: Ctx<'js>, args: Rest<Value<'js>>| -> rquickjs::Result<()> {
                    let mut message = String::new();
                    let mut options = llrt_logging::FormatOptions::new(&ctx, false, false)?;
                    llrt_logging::build_formatted_string(&mut message, &ctx, args, &mut options)?;
                    if state
                        .with_invocation(|s| s.push_log(level, message.clone()))
                        .is_none()
                    {
                        tracing::debug!(level, message, "console output outside of an invocation");
                    }
                    Ok(())
                },
            ),
        )?;
    }
    ctx.globals().set("console", console)?;
    Ok(())
}

#[cfg(test)]
mod tests;
