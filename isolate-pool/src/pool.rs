//! The warm pool: isolate threads, their bounded job queues, warm isolates and cached Workers.
//!
//! Each of `threads` OS threads runs a single-threaded tokio runtime and owns its isolates; no
//! isolate ever moves between threads. Jobs reach a thread through a bounded queue. `load()` and
//! `execute` go to the next thread round-robin and take one of its warm isolates; `get()` goes to
//! the thread that holds the Worker (decided by the shared [`CacheIndex`]).

use crate::activity::{Running, ThreadActivity};
use crate::api::{
    BodySink, CodeDigest, ErrorKind, HttpRequest, HttpResponse, Invocation, InvocationStats,
    Invoker, Limits, LogEntry, SealedCode, WorkerCode, WorkerError,
};
use crate::cache::{CacheIndex, EvictReason, Eviction, WorkerKey};
use crate::egress::EgressPort;
use crate::engine::Isolate;
use crate::observe::{CacheEvent, PoolObserver, StartKind};
use futures::future::LocalBoxFuture;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Pool settings (from the `pool:` section of the config).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Isolate threads.
    pub threads: usize,
    /// Code-free isolates kept ready across all threads.
    pub warm_isolates: usize,
    /// Cached Workers across all tenants.
    pub max_cached_workers: usize,
    /// A cached Worker idle this long is dropped.
    pub idle_ttl: Duration,
    /// Jobs that may wait in each thread's queue.
    pub queue_capacity: usize,
}

/// Why the pool could not take a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PoolError {
    /// The chosen thread's queue is full.
    #[error("the isolate pool is overloaded; retry shortly")]
    Overloaded,
    /// The pool is shutting down or a thread is gone.
    #[error("the isolate pool is not running")]
    Unavailable,
}

/// Where a job's answer goes: a callback, called exactly once — on the isolate thread that ran
/// the job, or on the submitting thread when the pool refused it. A job dropped unanswered (its
/// thread panicked or shut down) answers an `internal` error. A worker process answers from the
/// isolate thread straight onto its channel, without waking another thread.
///
/// A reply may also take a streamed response body ([`Reply::with_body`]): a Worker that returns
/// a streamed Response is then answered with its head (`HttpResponse::streamed`) and the body
/// goes to the sink part by part; without one, the pool reads the stream whole first.
pub struct Reply<T>(Option<Answering<T>>, Option<BodySink>);

type Answering<T> = Box<dyn FnOnce(Result<Invocation<T>, PoolError>) + Send>;

impl<T> Reply<T> {
    /// A reply that calls `answer`.
    pub fn new(answer: impl FnOnce(Result<Invocation<T>, PoolError>) + Send + 'static) -> Self {
        Reply(Some(Box::new(answer)), None)
    }

    /// This reply, taking a streamed response body through `sink`.
    pub fn with_body(mut self, sink: BodySink) -> Self {
        self.1 = Some(sink);
        self
    }

    fn take_body(&mut self) -> Option<BodySink> {
        self.1.take()
    }

    pub(crate) fn send(mut self, invocation: Invocation<T>) {
        if let Some(f) = self.0.take() {
            f(Ok(invocation));
        }
    }

    fn refuse(mut self, error: PoolError) {
        if let Some(f) = self.0.take() {
            f(Err(error));
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Ok(lost()));
        }
    }
}

/// Something the caller keeps alive until an invocation's work has ended entirely — after the
/// response, `ctx.waitUntil` work may still run — e.g. the tenant's admission permit. The job
/// owns it and drops it when the invocation is over (or when the job is refused or dropped), so
/// a concurrency slot is never freed while the tenant's code still runs.
pub struct Hold {
    #[allow(dead_code)]
    value: Option<Box<dyn std::any::Any + Send>>,
    start: Option<Box<dyn FnOnce() + Send>>,
}

/// A [`Hold`] released either when the answer goes out with no work pending, or when the job
/// ends (after `ctx.waitUntil` work), whichever comes first.
#[derive(Clone)]
struct HeldUntil(Rc<RefCell<Option<Hold>>>);

impl HeldUntil {
    fn new(hold: Hold) -> HeldUntil {
        HeldUntil(Rc::new(RefCell::new(Some(hold))))
    }

    /// Releases the hold now unless the invocation still has work pending.
    fn release_unless(&self, pending: bool) {
        if !pending {
            drop(self.0.borrow_mut().take());
        }
    }
}

impl Hold {
    /// Keeps `value` alive until the invocation ends.
    pub fn new<T: Send + 'static>(value: T) -> Hold {
        Hold {
            value: Some(Box::new(value)),
            start: None,
        }
    }

    /// Like [`Hold::new`], and calls `started` when an isolate thread takes the job off its
    /// queue (before any of the Worker's code runs): until then the job may be retried
    /// elsewhere without running twice.
    pub fn with_start<T: Send + 'static>(
        value: T,
        started: impl FnOnce() + Send + 'static,
    ) -> Hold {
        Hold {
            value: Some(Box::new(value)),
            start: Some(Box::new(started)),
        }
    }

    /// Holds nothing.
    pub fn none() -> Hold {
        Hold {
            value: None,
            start: None,
        }
    }

    pub(crate) fn started(&mut self) {
        if let Some(f) = self.start.take() {
            f();
        }
    }
}

enum Job {
    Load {
        code: Arc<WorkerCode>,
        request: HttpRequest,
        invoker: Invoker,
        limits: Limits,
        reply: Reply<HttpResponse>,
        hold: Hold,
    },
    Get {
        key: WorkerKey,
        code: SealedCode,
        request: HttpRequest,
        invoker: Invoker,
        limits: Limits,
        reply: Reply<HttpResponse>,
        hold: Hold,
    },
    Execute {
        source: String,
        env: serde_json::Value,
        invoker: Invoker,
        limits: Limits,
        reply: Reply<serde_json::Value>,
        hold: Hold,
    },
    Evict {
        key: WorkerKey,
    },
    /// Runs a task of the pool's user on the thread (see [`Pool::spawn_on`]).
    Spawn(ThreadTask),
}

/// A task to run on an isolate thread: made there, so it may hold the thread's own resources.
pub type ThreadTask = Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>;

impl Job {
    /// Answers a job the pool could not queue with `error` (its hold goes with it).
    fn refuse(self, error: PoolError) {
        match self {
            Job::Load { reply, .. } | Job::Get { reply, .. } => reply.refuse(error),
            Job::Execute { reply, .. } => reply.refuse(error),
            Job::Evict { .. } | Job::Spawn(_) => {}
        }
    }
}

struct Shared {
    index: Mutex<CacheIndex>,
    observer: Arc<dyn PoolObserver>,
    warm_total: AtomicUsize,
    warm_target: usize,
    ready: AtomicBool,
    idle_ttl: Duration,
    activity: Mutex<Vec<Arc<ThreadActivity>>>,
}

impl Shared {
    fn index(&self) -> MutexGuard<'_, CacheIndex> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than losing the pool, so recover the guard.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warm_changed(&self, delta: isize) {
        let n = if delta >= 0 {
            self.warm_total.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
        } else {
            self.warm_total
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed)
                .saturating_sub(delta.unsigned_abs())
        };
        if n >= self.warm_target {
            self.ready.store(true, Ordering::Relaxed);
        }
        self.observer.warm_isolates(n);
    }
}

/// Handle to the isolate pool. Cheap to share behind an `Arc`.
pub struct Pool {
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    next: AtomicUsize,
    janitor: Option<(std_mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Pool {
    /// Starts the isolate threads and begins warming isolates.
    pub fn start(
        settings: PoolSettings,
        egress: Arc<dyn EgressPort>,
        observer: Arc<dyn PoolObserver>,
    ) -> std::io::Result<Pool> {
        let threads = settings.threads.max(1);
        let shared = Arc::new(Shared {
            index: Mutex::new(CacheIndex::new(settings.max_cached_workers)),
            observer,
            warm_total: AtomicUsize::new(0),
            warm_target: settings.warm_isolates,
            ready: AtomicBool::new(settings.warm_isolates == 0),
            idle_ttl: settings.idle_ttl,
            activity: Mutex::new(Vec::new()),
        });
        let per_thread = settings.warm_isolates.div_ceil(threads);
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
            let shared = shared.clone();
            let egress = egress.clone();
            let handle = std::thread::Builder::new()
                .name(format!("isogate-isolate-{i}"))
                .stack_size(8 * 1024 * 1024)
                .spawn(move || thread_main(i, rx, shared, egress, per_thread))?;
            senders.push(tx);
            handles.push(handle);
        }
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        let janitor_shared = shared.clone();
        let janitor_senders = senders.clone();
        let janitor = std::thread::Builder::new()
            .name("isogate-pool-janitor".into())
            .spawn(move || janitor_main(stop_rx, janitor_shared, janitor_senders))?;
        Ok(Pool {
            senders,
            threads: handles,
            shared,
            next: AtomicUsize::new(0),
            janitor: Some((stop_tx, janitor)),
        })
    }

    /// Whether the warm pool has reached its target once (readiness).
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// The invocations the isolate threads are polling right now, with their CPU time so far
    /// (including a native call in progress that the engine cannot interrupt).
    pub fn running(&self) -> Vec<Running> {
        let threads = self
            .shared
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        threads.iter().filter_map(|a| a.running()).collect()
    }

    /// Code-free isolates ready now.
    pub fn warm_isolates(&self) -> usize {
        self.shared.warm_total.load(Ordering::Relaxed)
    }

    /// The thread for a job that may run anywhere: the submitting thread when it is one of
    /// this pool's isolate threads (a worker process's channel lane, read on its thread: the
    /// job is queued without waking another thread), else the next one round-robin.
    fn round_robin(&self) -> usize {
        let n = self.senders.len();
        match ON_THREAD.with(Cell::get) {
            Some((pool, thread)) if pool == Arc::as_ptr(&self.shared) as usize && thread < n => {
                thread
            }
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Runs the task `make` returns on isolate thread `thread` (`make` is called there), next to
    /// the thread's isolates: a worker process reads each channel lane this way. Fails if the
    /// thread is gone or its queue is full.
    pub fn spawn_on(&self, thread: usize, make: ThreadTask) -> Result<(), PoolError> {
        let tx = self.senders.get(thread).ok_or(PoolError::Unavailable)?;
        tx.try_send(Job::Spawn(make)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PoolError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => PoolError::Unavailable,
        })
    }

    fn submit(&self, thread: usize, job: Job) {
        if let Err(e) = self.senders[thread].try_send(job) {
            match e {
                mpsc::error::TrySendError::Full(job) => job.refuse(PoolError::Overloaded),
                mpsc::error::TrySendError::Closed(job) => job.refuse(PoolError::Unavailable),
            }
        }
    }

    /// Submits with `submit` and waits for the answer.
    /// Submits a job through `submit` and awaits its answer (the `submit_*` functions take the
    /// reply; e.g. `Pool::call(|r| pool.submit_get(…, r.with_body(sink)))`).
    pub async fn call<T: Send + 'static>(
        submit: impl FnOnce(Reply<T>),
    ) -> Result<Invocation<T>, PoolError> {
        let (tx, rx) = oneshot::channel();
        submit(Reply::new(move |answer| {
            let _ = tx.send(answer);
        }));
        // The reply always answers (a dropped one with `internal`); a lost channel is the same.
        rx.await.unwrap_or_else(|_| Ok(lost()))
    }

    /// `load()`: runs `code` once in a fresh isolate, then discards the isolate. `hold` is
    /// dropped when the invocation's work (including `ctx.waitUntil`) has ended.
    pub async fn load(
        &self,
        invoker: Invoker,
        code: Arc<WorkerCode>,
        request: HttpRequest,
        limits: Limits,
        hold: Hold,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        Self::call(|reply| self.submit_load(invoker, code, request, limits, hold, reply)).await
    }

    /// [`load`](Self::load), answering through `reply` instead of a future.
    pub fn submit_load(
        &self,
        invoker: Invoker,
        code: Arc<WorkerCode>,
        request: HttpRequest,
        limits: Limits,
        hold: Hold,
        reply: Reply<HttpResponse>,
    ) {
        self.submit(
            self.round_robin(),
            Job::Load {
                code,
                request,
                invoker,
                limits,
                reply,
                hold,
            },
        )
    }

    /// Code Mode: runs an async function once in a fresh isolate and returns its JSON result.
    /// `hold` is dropped when the invocation has ended.
    pub async fn execute(
        &self,
        invoker: Invoker,
        source: String,
        env: serde_json::Value,
        limits: Limits,
        hold: Hold,
    ) -> Result<Invocation<serde_json::Value>, PoolError> {
        Self::call(|reply| self.submit_execute(invoker, source, env, limits, hold, reply)).await
    }

    /// [`execute`](Self::execute), answering through `reply` instead of a future.
    pub fn submit_execute(
        &self,
        invoker: Invoker,
        source: String,
        env: serde_json::Value,
        limits: Limits,
        hold: Hold,
        reply: Reply<serde_json::Value>,
    ) {
        self.submit(
            self.round_robin(),
            Job::Execute {
                source,
                env,
                invoker,
                limits,
                reply,
                hold,
            },
        )
    }

    /// `get(id)`: dispatches to the cached Worker `invoker.worker_id` of `invoker.tenant`,
    /// creating it from `code` on a miss. `tenant_cap` bounds the tenant's cached Workers.
    /// `hold` is dropped when the invocation's work (including `ctx.waitUntil`) has ended.
    pub async fn get(
        &self,
        invoker: Invoker,
        code: SealedCode,
        request: HttpRequest,
        limits: Limits,
        tenant_cap: usize,
        hold: Hold,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        Self::call(|reply| self.submit_get(invoker, code, request, limits, tenant_cap, hold, reply))
            .await
    }

    /// [`get`](Self::get), answering through `reply` instead of a future.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_get(
        &self,
        invoker: Invoker,
        code: SealedCode,
        request: HttpRequest,
        limits: Limits,
        tenant_cap: usize,
        hold: Hold,
        reply: Reply<HttpResponse>,
    ) {
        let id = invoker.worker_id.clone().unwrap_or_default();
        let key = WorkerKey::new(&invoker.tenant, &id);
        let digest = code.digest();
        let home = self.home_thread(&key);
        let acquired = self
            .shared
            .index()
            .acquire(&key, digest, tenant_cap, home, Instant::now());
        let event = if acquired.hit {
            CacheEvent::Hit
        } else {
            CacheEvent::Miss
        };
        self.shared.observer.cache_event(&invoker.tenant, event);
        self.carry_out(acquired.evicted);
        self.report_tenant(&invoker.tenant);
        self.submit(
            acquired.thread,
            Job::Get {
                key,
                code,
                request,
                invoker,
                limits,
                reply,
                hold,
            },
        )
    }

    fn home_thread(&self, key: &WorkerKey) -> usize {
        home_thread(&key.tenant, &key.id, self.senders.len())
    }

    fn carry_out(&self, evictions: Vec<Eviction>) {
        carry_out(&self.shared, &self.senders, evictions);
    }

    fn report_tenant(&self, tenant: &str) {
        let n = self.shared.index().tenant_len(tenant);
        self.shared.observer.cached_workers(tenant, n);
    }

    /// Evicts the cached Worker `id` of `tenant` (if any).
    pub fn evict(&self, tenant: &str, id: &str) -> bool {
        let key = WorkerKey::new(tenant, id);
        let thread = self.shared.index().remove(&key);
        if let Some(thread) = thread {
            self.carry_out(vec![Eviction {
                key,
                thread,
                reason: EvictReason::Removed,
            }]);
            self.report_tenant(tenant);
        }
        thread.is_some()
    }

    /// Evicts every cached Worker of `tenant`.
    pub fn evict_tenant(&self, tenant: &str) -> usize {
        let gone = self.shared.index().remove_tenant(tenant);
        let n = gone.len();
        self.carry_out(gone);
        self.report_tenant(tenant);
        n
    }

    /// Ids of `tenant`'s Workers that are cached (warm) now.
    pub fn cached_ids(&self, tenant: &str) -> Vec<String> {
        self.shared.index().ids(tenant)
    }

    /// Total cached Workers.
    pub fn cached_total(&self) -> usize {
        self.shared.index().len()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.janitor.take() {
            drop(stop);
            let _ = handle.join();
        }
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn carry_out(shared: &Shared, senders: &[mpsc::Sender<Job>], evictions: Vec<Eviction>) {
    for ev in evictions {
        match ev.reason {
            EvictReason::Lru => shared
                .observer
                .cache_event(&ev.key.tenant, CacheEvent::EvictLru),
            EvictReason::Ttl => shared
                .observer
                .cache_event(&ev.key.tenant, CacheEvent::EvictTtl),
            EvictReason::Removed => {}
        }
        if let Some(tx) = senders.get(ev.thread) {
            // An eviction that cannot be queued (queue full) leaves an unindexed isolate on the
            // thread; the next eviction sweep of that thread's map catches it.
            let _ = tx.try_send(Job::Evict { key: ev.key });
        }
    }
}

fn janitor_main(
    stop: std_mpsc::Receiver<()>,
    shared: Arc<Shared>,
    senders: Vec<mpsc::Sender<Job>>,
) {
    let period = (shared.idle_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match stop.recv_timeout(period) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let expired = shared.index().expire(shared.idle_ttl, Instant::now());
        if expired.is_empty() {
            continue;
        }
        let mut tenants: Vec<Arc<str>> = expired.iter().map(|e| e.key.tenant.clone()).collect();
        tenants.sort();
        tenants.dedup();
        carry_out(&shared, &senders, expired);
        for t in tenants {
            let n = shared.index().tenant_len(&t);
            shared.observer.cached_workers(&t, n);
        }
    }
}

/// A cached Worker on its thread: one isolate, running up to `turns` invocations at once
/// (interleaved at their await points); a condemned isolate is replaced once its last
/// invocation has ended.
struct Slot {
    digest: CodeDigest,
    isolate: RefCell<Option<Rc<Isolate>>>,
    /// One isolate start at a time for this Worker.
    starting: tokio::sync::Mutex<()>,
    /// Invocations that may run in the isolate at once (`Limits::worker_concurrency`).
    turns: tokio::sync::Semaphore,
    /// How many turns there are (the semaphore's size).
    capacity: Cell<usize>,
}

impl Slot {
    /// Follows a changed `worker_concurrency` (a config reload): adds turns at once, takes
    /// away free ones (busy ones as later requests find them free).
    fn resize(&self, want: usize) {
        let have = self.capacity.get();
        if want > have {
            self.turns.add_permits(want - have);
            self.capacity.set(want);
        } else if want < have {
            let taken = self.turns.forget_permits(have - want);
            self.capacity.set(have - taken);
        }
    }

    /// The Worker's isolate if it may take another invocation.
    fn live(&self) -> Option<Rc<Isolate>> {
        self.isolate
            .borrow()
            .as_ref()
            .filter(|iso| iso.is_reusable())
            .cloned()
    }
}

struct ThreadState {
    index: usize,
    shared: Arc<Shared>,
    egress: Arc<dyn EgressPort>,
    warm: RefCell<VecDeque<Isolate>>,
    warm_target: usize,
    refill: Notify,
    cached: RefCell<HashMap<WorkerKey, Rc<Slot>>>,
}

impl ThreadState {
    async fn new_isolate(&self, kind: StartKind) -> Result<Isolate, WorkerError> {
        let started = Instant::now();
        let iso = Isolate::new(self.egress.clone()).await?;
        self.shared
            .observer
            .isolate_started(kind, started.elapsed());
        Ok(iso)
    }

    /// A warm isolate if one is ready, else a new one (a cold start on the request path).
    async fn take_isolate(&self, kind: StartKind) -> Result<(Isolate, bool), WorkerError> {
        let warm = self.warm.borrow_mut().pop_front();
        self.refill.notify_one();
        match warm {
            Some(iso) => {
                self.shared.warm_changed(-1);
                self.shared.observer.isolate_taken(kind);
                Ok((iso, false))
            }
            None => Ok((self.new_isolate(kind).await?, true)),
        }
    }

    /// [`take_isolate`](Self::take_isolate), answering `reply` with the error if it fails.
    async fn take_or_fail<T>(
        &self,
        kind: StartKind,
        reply: Reply<T>,
    ) -> Option<(Isolate, bool, Reply<T>)> {
        match self.take_isolate(kind).await {
            Ok((iso, cold)) => Some((iso, cold, reply)),
            Err(e) => {
                reply.send(Invocation::failed(e));
                None
            }
        }
    }

    async fn refill_loop(self: Rc<Self>) {
        loop {
            while self.warm.borrow().len() < self.warm_target {
                match self.new_isolate(StartKind::WarmRefill).await {
                    Ok(iso) => {
                        self.warm.borrow_mut().push_back(iso);
                        self.shared.warm_changed(1);
                    }
                    Err(e) => {
                        tracing::error!(thread = self.index, error = %e, "cannot start a warm isolate");
                        break;
                    }
                }
                // Let queued requests run between two isolate starts.
                tokio::task::yield_now().await;
            }
            self.refill.notified().await;
        }
    }
}

/// The answer of a job its thread dropped unanswered (it panicked or is shutting down).
fn lost<T>() -> Invocation<T> {
    Invocation::failed(WorkerError::new(
        ErrorKind::Internal,
        "the isolate running this request failed",
    ))
}

fn done<T>(
    outcome: Result<T, WorkerError>,
    logs: Vec<LogEntry>,
    cpu_seconds: f64,
    cold_start: bool,
) -> Invocation<T> {
    Invocation {
        outcome,
        logs,
        stats: InvocationStats {
            cpu_seconds,
            cold_start,
        },
    }
}

/// The isolate thread, of `threads`, that cached Worker `id` of `tenant` lives on. The same in
/// every process of one build (a fixed hash), so the gateway sends a `get()` down the channel
/// lane of that thread.
pub fn home_thread(tenant: &str, id: &str, threads: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut h);
    id.hash(&mut h);
    (h.finish() % threads.max(1) as u64) as usize
}

thread_local! {
    /// On an isolate thread: its pool (the address of the pool's shared state) and index.
    static ON_THREAD: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

fn thread_main(
    index: usize,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    egress: Arc<dyn EgressPort>,
    warm_target: usize,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(thread = index, error = %e, "cannot start isolate thread runtime");
            return;
        }
    };
    shared
        .activity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ThreadActivity::register());
    ON_THREAD.with(|t| t.set(Some((Arc::as_ptr(&shared) as usize, index))));
    let local = tokio::task::LocalSet::new();
    let state = Rc::new(ThreadState {
        index,
        shared,
        egress,
        warm: RefCell::new(VecDeque::new()),
        warm_target,
        refill: Notify::new(),
        cached: RefCell::new(HashMap::new()),
    });
    local.block_on(&rt, async move {
        let refill = tokio::task::spawn_local(state.clone().refill_loop());
        while let Some(job) = rx.recv().await {
            let state = state.clone();
            match job {
                Job::Evict { key } => {
                    state.cached.borrow_mut().remove(&key);
                }
                Job::Spawn(make) => {
                    tokio::task::spawn_local(make());
                }
                job => {
                    tokio::task::spawn_local(run_job(state, job));
                }
            }
        }
        refill.abort();
        let n = state.warm.borrow().len();
        state.warm.borrow_mut().clear();
        state.shared.warm_changed(-(n as isize));
        state.cached.borrow_mut().clear();
    });
}

async fn run_job(state: Rc<ThreadState>, job: Job) {
    match job {
        Job::Load {
            code,
            request,
            invoker,
            limits,
            reply,
            mut hold,
        } => {
            hold.started();
            let hold = HeldUntil::new(hold);
            let Some((iso, cold, reply)) = state.take_or_fail(StartKind::Load, reply).await else {
                return;
            };
            let held = hold.clone();
            let mut reply = reply;
            let sink = reply.take_body();
            iso.fetch(
                &code,
                request,
                invoker,
                limits,
                sink,
                |(outcome, logs), cpu, pending| {
                    held.release_unless(pending);
                    reply.send(done(outcome, logs, cpu, cold));
                },
            )
            .await;
            drop(hold);
            // load(): never reused.
            drop(iso);
        }
        Job::Execute {
            source,
            env,
            invoker,
            limits,
            reply,
            mut hold,
        } => {
            hold.started();
            let Some((iso, cold, reply)) = state.take_or_fail(StartKind::Load, reply).await else {
                return;
            };
            let (outcome, logs, cpu, _) = iso.execute(&source, &env, invoker, limits).await;
            // The invocation has ended: the hold goes before the answer, so a client's next
            // request never finds its own finished one still holding the tenant's slot.
            drop(hold);
            reply.send(done(outcome, logs, cpu, cold));
        }
        Job::Get {
            key,
            code,
            request,
            invoker,
            limits,
            reply,
            mut hold,
        } => {
            hold.started();
            run_get(state, key, code, request, invoker, limits, reply, hold).await
        }
        Job::Evict { .. } | Job::Spawn(_) => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_get(
    state: Rc<ThreadState>,
    key: WorkerKey,
    code: SealedCode,
    request: HttpRequest,
    invoker: Invoker,
    limits: Limits,
    reply: Reply<HttpResponse>,
    hold: Hold,
) {
    let hold = HeldUntil::new(hold);
    let digest = code.digest();
    let slot = {
        let mut cached = state.cached.borrow_mut();
        match cached.get(&key) {
            Some(slot) if slot.digest == digest => slot.clone(),
            _ => {
                let turns = limits.worker_concurrency.max(1) as usize;
                let slot = Rc::new(Slot {
                    digest,
                    isolate: RefCell::new(None),
                    starting: tokio::sync::Mutex::new(()),
                    turns: tokio::sync::Semaphore::new(turns),
                    capacity: Cell::new(turns),
                });
                cached.insert(key.clone(), slot.clone());
                slot
            }
        }
    };
    slot.resize(limits.worker_concurrency.max(1) as usize);
    // The semaphore is never closed.
    let Ok(_turn) = slot.turns.acquire().await else {
        return;
    };
    let mut cold = false;
    let iso = match slot.live() {
        Some(iso) => iso,
        None => {
            let _starting = slot.starting.lock().await;
            match slot.live() {
                Some(iso) => iso,
                None => match state.take_isolate(StartKind::GetMiss).await {
                    Ok((iso, _)) => {
                        let iso = Rc::new(iso);
                        *slot.isolate.borrow_mut() = Some(iso.clone());
                        cold = true;
                        iso
                    }
                    Err(e) => {
                        reply.send(Invocation::failed(e));
                        return;
                    }
                },
            }
        }
    };
    let mut reply = reply;
    let sink = reply.take_body();
    iso.fetch(
        code.code(),
        request,
        invoker,
        limits,
        sink,
        |(outcome, logs), cpu, pending| {
            hold.release_unless(pending);
            reply.send(done(outcome, logs, cpu, cold));
        },
    )
    .await;
    if !iso.is_reusable() {
        // A breached limit discards the isolate (the invocations still on it end with
        // `isolate_discarded`, and it is freed after the last); the next request recreates the
        // Worker.
        let ours = slot
            .isolate
            .borrow()
            .as_ref()
            .is_some_and(|live| Rc::ptr_eq(live, &iso));
        if ours {
            *slot.isolate.borrow_mut() = None;
            let mut cached = state.cached.borrow_mut();
            if cached.get(&key).is_some_and(|s| Rc::ptr_eq(s, &slot)) {
                cached.remove(&key);
            }
            drop(cached);
            let removed = state.shared.index().remove_if(&key, digest);
            if removed {
                let n = state.shared.index().tenant_len(&key.tenant);
                state.shared.observer.cached_workers(&key.tenant, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_turns_follow_a_changed_bound() {
        let slot = Slot {
            digest: CodeDigest([0; 32]),
            isolate: RefCell::new(None),
            starting: tokio::sync::Mutex::new(()),
            turns: tokio::sync::Semaphore::new(2),
            capacity: Cell::new(2),
        };
        slot.resize(5);
        assert_eq!(slot.turns.available_permits(), 5);
        // Lowered while three turns are busy: the two free ones go at once, the third when a
        // later request finds it free.
        let busy = slot.turns.try_acquire_many(3).unwrap();
        slot.resize(1);
        assert_eq!(slot.turns.available_permits(), 0);
        assert_eq!(slot.capacity.get(), 3);
        drop(busy);
        slot.resize(1);
        assert_eq!(slot.turns.available_permits(), 1);
        assert_eq!(slot.capacity.get(), 1);
    }

    fn invoker(worker_id: Option<&str>) -> Invoker {
        Invoker {
            tenant: "t".into(),
            worker_id: worker_id.map(Into::into),
            invocation: 0,
            apis: Vec::new(),
            trace: 0,
            tools: Vec::new(),
        }
    }

    fn hello() -> WorkerCode {
        serde_json::from_value(serde_json::json!({
            "mainModule": "w.js",
            "modules": {"w.js": "export default { fetch() { return new Response('hi'); } }"},
        }))
        .unwrap()
    }

    fn request() -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            url: "http://w/".into(),
            headers: vec![],
            body: vec![],
        }
    }

    const LIMITS: Limits = Limits {
        cpu_ms: 5_000,
        memory_mb: 64,
        wall_ms: 10_000,
        subrequests: 10,
        worker_concurrency: 32,
    };

    /// A reply that reports the isolate thread that answered it (replies are called there).
    fn on_thread<T>(tx: &std_mpsc::Sender<(String, bool)>) -> Reply<T> {
        let tx = tx.clone();
        Reply::new(move |answer: Result<Invocation<T>, PoolError>| {
            let ok = answer.is_ok_and(|inv| inv.outcome.is_ok());
            let name = std::thread::current().name().unwrap_or("?").to_string();
            let _ = tx.send((name, ok));
        })
    }

    fn load_hello(pool: &Pool, code: &Arc<WorkerCode>, tx: &std_mpsc::Sender<(String, bool)>) {
        let reply = on_thread(tx);
        pool.submit_load(
            invoker(None),
            code.clone(),
            request(),
            LIMITS,
            Hold::none(),
            reply,
        );
    }

    /// What a worker process's lanes rely on: a task spawned on an isolate thread runs there,
    /// a `load()` it submits runs on that same thread (no other thread woken), a `get()` runs on
    /// its Worker's [`home_thread`] whoever submits it, and a `load()` from outside the pool
    /// goes round-robin.
    #[test]
    fn jobs_stay_on_the_submitting_isolate_thread_and_gets_on_their_home() {
        let threads = 3;
        let pool = Arc::new(
            Pool::start(
                PoolSettings {
                    threads,
                    warm_isolates: 0,
                    max_cached_workers: 100,
                    idle_ttl: Duration::from_secs(3600),
                    queue_capacity: 64,
                },
                Arc::new(crate::DisabledEgress),
                Arc::new(crate::NoopObserver),
            )
            .unwrap(),
        );
        let code = Arc::new(hello());
        let (tx, rx) = std_mpsc::channel();
        for thread in 0..threads {
            let (pool, code, tx) = (pool.clone(), code.clone(), tx.clone());
            pool.clone()
                .spawn_on(
                    thread,
                    Box::new(move || {
                        Box::pin(async move {
                            for _ in 0..3 {
                                load_hello(&pool, &code, &tx);
                            }
                        })
                    }),
                )
                .unwrap();
            for _ in 0..3 {
                let (name, ok) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
                assert!(ok);
                assert_eq!(name, format!("isogate-isolate-{thread}"));
            }
        }
        assert!(pool
            .spawn_on(threads, Box::new(|| Box::pin(async {})))
            .is_err());

        for id in ["a", "b", "c", "d", "e", "f"] {
            let home = home_thread("t", id, threads);
            for _ in 0..2 {
                pool.submit_get(
                    invoker(Some(id)),
                    SealedCode::new(hello()),
                    request(),
                    LIMITS,
                    100,
                    Hold::none(),
                    on_thread(&tx),
                );
                let (name, ok) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
                assert!(ok);
                assert_eq!(name, format!("isogate-isolate-{home}"), "{id}");
            }
        }

        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..threads {
            load_hello(&pool, &code, &tx);
            seen.insert(rx.recv_timeout(Duration::from_secs(30)).unwrap().0);
        }
        assert_eq!(seen.len(), threads, "{seen:?}");
    }
}
