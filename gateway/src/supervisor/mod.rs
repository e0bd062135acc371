//! The second wall: Workers run in confined worker processes, and this supervisor runs them.
//!
//! The gateway process keeps everything that matters (policy, credentials, vaults, sockets);
//! each worker process (`isogate __worker`, see `isogate_pool::worker`) holds only isolates,
//! confined by seccomp, Landlock, rlimits and `no_new_privs`, and talks to the gateway over one
//! inherited socket pair ([`isogate_pool::wire`]). The supervisor:
//!
//! - **spawns** `processes` workers (plus a quarantine worker on demand) with an empty
//!   environment, restarts a dead one with backoff, and answers the invocations that were in
//!   flight on it with `worker_crashed` (the overrunning one with its limit);
//! - **routes** each tenant to a worker by a stable hash, so a crash affects a bounded set of
//!   tenants (cordons); a tenant whose invocations kill workers repeatedly is moved to the
//!   quarantine worker until it has been calm for a while ([`cordon`]);
//! - runs each worker's **egress** calls through the gateway's pipeline, under the tenant the
//!   gateway dispatched that invocation for (never one the worker names);
//! - is the **watchdog**: an invocation still running `grace` past its `cpu_ms` (from the
//!   worker's heartbeats, which read the isolate thread's CPU clock even inside one native
//!   call) or past its `wall_ms` gets its worker SIGKILLed; a worker whose heartbeats stop is
//!   killed too.

pub mod cordon;
mod process;

use crate::metrics::Metrics;
use cordon::Cordon;
use isogate_pool::wire::{Answer, Query, QueryAnswer, ToWorker, WorkerSettings};
use isogate_pool::{
    BodySink, EgressPort, HttpRequest, HttpResponse, Invocation, Invoker, Limits, Pool, PoolError,
    SealedCode, WorkerCode,
};
use isogate_pool::{ErrorKind, WorkerError};
use process::{Pending, Process, Reply};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

pub use isogate_pool::Hold;

/// Every `cause` label of `isogate_worker_restarts_total`.
pub const RESTART_CAUSES: &[&str] = process::ExitCause::LABELS;

/// Supervisor settings (from the `pool:` section).
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Worker processes tenants are spread over (the quarantine worker comes on top).
    pub processes: usize,
    /// Per-process settings; `index` is filled in per worker.
    pub worker: WorkerSettings,
    /// How long past its `cpu_ms`/`wall_ms` an invocation may run before its worker is killed.
    pub grace: Duration,
    /// A worker whose last heartbeat is older than this is killed as hung.
    pub heartbeat_timeout: Duration,
    /// How long a request waits for its worker to be (re)started.
    pub start_timeout: Duration,
    /// The cordoning policy.
    pub cordon: cordon::CordonSettings,
}

/// The isolate runner the gateway uses: in-process threads (weaker, `pool.isolation: thread`)
/// or confined worker processes (the default).
pub enum Workers {
    /// `pool.isolation: thread`.
    Threads(Arc<Pool>),
    /// `pool.isolation: process`.
    Processes(Arc<Supervisor>),
}

impl Workers {
    /// `load()`. A streamed response body goes to `body` (see [`isogate_pool::Reply::with_body`]).
    pub async fn load(
        &self,
        invoker: Invoker,
        code: Arc<WorkerCode>,
        request: HttpRequest,
        limits: Limits,
        hold: Hold,
        body: BodySink,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        match self {
            Workers::Threads(p) => {
                Pool::call(|r| {
                    p.submit_load(invoker, code, request, limits, hold, r.with_body(body))
                })
                .await
            }
            Workers::Processes(s) => s.load(invoker, code, request, limits, hold, body).await,
        }
    }

    /// `get(id)`. A streamed response body goes to `body`.
    #[allow(clippy::too_many_arguments)]
    pub async fn get(
        &self,
        invoker: Invoker,
        code: SealedCode,
        request: HttpRequest,
        limits: Limits,
        tenant_cap: usize,
        hold: Hold,
        body: BodySink,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        match self {
            Workers::Threads(p) => {
                Pool::call(|r| {
                    p.submit_get(
                        invoker,
                        code,
                        request,
                        limits,
                        tenant_cap,
                        hold,
                        r.with_body(body),
                    )
                })
                .await
            }
            Workers::Processes(s) => {
                s.get(invoker, code, request, limits, tenant_cap, hold, body)
                    .await
            }
        }
    }

    /// Code Mode.
    pub async fn execute(
        &self,
        invoker: Invoker,
        source: String,
        env: serde_json::Value,
        limits: Limits,
        hold: Hold,
    ) -> Result<Invocation<serde_json::Value>, PoolError> {
        match self {
            Workers::Threads(p) => p.execute(invoker, source, env, limits, hold).await,
            Workers::Processes(s) => s.execute(invoker, source, env, limits, hold).await,
        }
    }

    /// Drops a cached Worker; how many were cached (0 or 1).
    pub async fn evict(&self, tenant: &str, id: &str) -> usize {
        match self {
            Workers::Threads(p) => usize::from(p.evict(tenant, id)),
            Workers::Processes(s) => s.evict(tenant, Some(id)).await,
        }
    }

    /// Drops all of a tenant's cached Workers: how many, where known at once (`None`: worker
    /// processes drop them in the background).
    pub fn evict_tenant(&self, tenant: &str) -> Option<usize> {
        match self {
            Workers::Threads(p) => Some(p.evict_tenant(tenant)),
            Workers::Processes(s) => {
                let (s, tenant) = (s.clone(), tenant.to_string());
                s.runtime
                    .clone()
                    .spawn(async move { s.evict(&tenant, None).await });
                None
            }
        }
    }

    /// Ids of the tenant's Workers that are warm (cached) now.
    pub async fn cached_ids(&self, tenant: &str) -> Vec<String> {
        match self {
            Workers::Threads(p) => p.cached_ids(tenant),
            Workers::Processes(s) => s.cached_ids(tenant).await,
        }
    }

    /// Warm isolates ready (across processes).
    pub fn warm_isolates(&self) -> usize {
        match self {
            Workers::Threads(p) => p.warm_isolates(),
            Workers::Processes(s) => s.warm_isolates(),
        }
    }

    /// Test-only: sends a confinement probe to the worker process that runs `tenant`; the pid
    /// of that process. `None` in thread mode (there is no worker process to probe).
    pub async fn probe(
        &self,
        tenant: &str,
        probe: isogate_pool::wire::Probe,
    ) -> Option<Result<u32, PoolError>> {
        match self {
            Workers::Threads(_) => None,
            Workers::Processes(s) => Some(s.probe(tenant, probe).await),
        }
    }

    /// Ready to serve: warm pool filled (and, with processes, every worker up).
    pub fn is_ready(&self) -> bool {
        match self {
            Workers::Threads(p) => p.is_ready(),
            Workers::Processes(s) => s.is_ready(),
        }
    }
}

/// One worker position: the current process (if alive) and its restart history.
struct Slot {
    index: usize,
    current: watch::Sender<Option<Arc<Process>>>,
}

/// The supervisor of the worker processes.
pub struct Supervisor {
    settings: SupervisorSettings,
    slots: Vec<Slot>,
    egress: Arc<dyn EgressPort>,
    metrics: Arc<Metrics>,
    cordon: Mutex<Cordon>,
    next_id: AtomicU64,
    runtime: tokio::runtime::Handle,
    quarantine_running: AtomicBool,
    me: Weak<Supervisor>,
}

impl Supervisor {
    /// Starts the workers (asynchronously) and the watchdog on `runtime`.
    pub fn start(
        settings: SupervisorSettings,
        egress: Arc<dyn EgressPort>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Supervisor> {
        let count = settings.processes.max(1) + 1; // + the quarantine worker
        let slots = (0..count)
            .map(|index| Slot {
                index,
                current: watch::channel(None).0,
            })
            .collect();
        let sup = Arc::new_cyclic(|me| Supervisor {
            cordon: Mutex::new(Cordon::new(settings.cordon.clone())),
            settings,
            slots,
            egress,
            metrics,
            next_id: AtomicU64::new(1),
            runtime: runtime.clone(),
            quarantine_running: AtomicBool::new(false),
            me: me.clone(),
        });
        sup.metrics.worker_processes.set(0);
        for index in 0..sup.settings.processes.max(1) {
            runtime.spawn(sup.clone().keep_alive(index));
        }
        runtime.spawn(sup.clone().watchdog());
        sup
    }

    fn quarantine_slot(&self) -> usize {
        self.slots.len() - 1
    }

    /// Spawns, watches and restarts the worker in slot `index`, forever.
    async fn keep_alive(self: Arc<Self>, index: usize) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let mut worker = self.settings.worker.clone();
            worker.index = index;
            match Process::spawn(worker, self.egress.clone(), self.metrics.clone()).await {
                Ok((process, exited)) => {
                    self.metrics.worker_processes.inc();
                    self.slots[index]
                        .current
                        .send_replace(Some(process.clone()));
                    let cause = exited.await.unwrap_or(process::ExitCause::Crashed);
                    self.slots[index].current.send_replace(None);
                    self.metrics.worker_processes.dec();
                    self.metrics
                        .worker_restarts
                        .with_label_values(&[cause.as_str()])
                        .inc();
                    let lost = process.fail_all(&cause);
                    let tenants = self
                        .cordon
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .worker_lost(&lost.blamed, Instant::now());
                    for t in tenants {
                        tracing::warn!(
                            tenant = %t,
                            worker = index,
                            "cordon: tenant moved to the quarantine worker after repeated worker kills"
                        );
                    }
                    self.report_cordon();
                    tracing::warn!(
                        worker = index,
                        pid = process.pid,
                        cause = cause.as_str(),
                        detail = %cause,
                        requeued = lost.unstarted.len(),
                        "worker process ended; restarting"
                    );
                    // Cordon decisions first, so a requeued invocation of a tenant that was
                    // just quarantined goes to the quarantine worker.
                    self.redispatch(lost.unstarted);
                }
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a worker process");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(50);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if index == self.quarantine_slot() && !self.quarantine_needed() {
                self.quarantine_running.store(false, Ordering::SeqCst);
                return;
            }
        }
    }

    fn quarantine_needed(&self) -> bool {
        self.cordon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .any_quarantined(Instant::now())
    }

    fn report_cordon(&self) {
        let n = self
            .cordon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quarantined_count(Instant::now());
        self.metrics.cordoned_tenants.set(n as i64);
    }

    /// The slot `tenant` runs in: its quarantine, or its stable home.
    fn slot_for(&self, tenant: &str) -> usize {
        let quarantined = self
            .cordon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_quarantined(tenant, Instant::now());
        if quarantined {
            let q = self.quarantine_slot();
            if !self.quarantine_running.swap(true, Ordering::SeqCst) {
                if let Some(me) = self.me.upgrade() {
                    self.runtime.spawn(me.keep_alive(q));
                }
            }
            return q;
        }
        cordon::home(tenant, self.settings.processes.max(1))
    }

    /// Waits (bounded) for the worker in `slot` to be running.
    async fn process(&self, slot: usize) -> Result<Arc<Process>, PoolError> {
        let mut rx = self.slots[slot].current.subscribe();
        let wait = async {
            rx.wait_for(|p| p.as_ref().is_some_and(|p| p.is_alive()))
                .await
                .ok()
                .and_then(|p| p.clone())
        };
        tokio::time::timeout(self.settings.start_timeout, wait)
            .await
            .ok()
            .flatten()
            .ok_or(PoolError::Unavailable)
    }

    /// Sends an invocation to the worker its tenant runs in (waiting, bounded, for one).
    async fn call(&self, id: u64, pending: Pending) -> Result<(), PoolError> {
        let process = self.process(self.slot_for(pending.tenant())).await?;
        process.dispatch(id, pending)
    }

    /// Invocations a lost worker never started go to the worker their tenant runs in now.
    fn redispatch(&self, unstarted: Vec<(u64, Pending)>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        for (id, pending) in unstarted {
            let me = me.clone();
            self.runtime.spawn(async move {
                let slot = me.slot_for(pending.tenant());
                match me.process(slot).await {
                    Ok(p) => {
                        if let Err(e) = p.dispatch(id, pending) {
                            tracing::warn!(error = %e, "supervisor: could not re-dispatch an invocation");
                        }
                    }
                    Err(_) => pending.fail(WorkerError::new(
                        ErrorKind::WorkerCrashed,
                        "the worker process for this invocation ended and none replaced it in time; retry",
                    )),
                }
            });
        }
    }

    fn fresh(&self, mut invoker: Invoker) -> Invoker {
        invoker.invocation = self.next_id.fetch_add(1, Ordering::Relaxed);
        invoker
    }

    /// Gives `invoker` a fresh invocation id, sends the message `make` builds for it to the
    /// tenant's worker and waits for the answer. `code`: a `get()`'s code, sent on request.
    #[allow(clippy::too_many_arguments)]
    async fn invoke(
        &self,
        invoker: Invoker,
        limits: Limits,
        hold: Hold,
        json: bool,
        code: Option<Arc<WorkerCode>>,
        body: Option<BodySink>,
        make: impl FnOnce(u64, Invoker) -> ToWorker,
    ) -> Result<Answer, PoolError> {
        let invoker = self.fresh(invoker);
        let id = invoker.invocation;
        let (tx, rx) = oneshot::channel();
        let reply = if json {
            Reply::Json(tx)
        } else {
            Reply::Http(tx)
        };
        let message = make(id, invoker.clone());
        let mut pending = Pending::new(invoker, limits, reply, hold, message, code);
        pending.body = body;
        self.call(id, pending).await?;
        rx.await.unwrap_or(Err(PoolError::Unavailable))
    }

    /// `load()` in a worker process.
    pub async fn load(
        &self,
        invoker: Invoker,
        code: Arc<WorkerCode>,
        request: HttpRequest,
        limits: Limits,
        hold: Hold,
        body: BodySink,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        let answer = self.invoke(
            invoker,
            limits,
            hold,
            false,
            None,
            Some(body),
            |id, invoker| ToWorker::Load {
                id,
                invoker,
                code,
                request,
                limits,
            },
        );
        http_answer(answer.await)
    }

    /// `get()` in a worker process; the code crosses the wire only when the worker lacks it.
    #[allow(clippy::too_many_arguments)]
    pub async fn get(
        &self,
        invoker: Invoker,
        code: SealedCode,
        request: HttpRequest,
        limits: Limits,
        tenant_cap: usize,
        hold: Hold,
        body: BodySink,
    ) -> Result<Invocation<HttpResponse>, PoolError> {
        let digest = code.digest();
        let code = Some(code.code().clone());
        let answer = self.invoke(
            invoker,
            limits,
            hold,
            false,
            code,
            Some(body),
            |id, invoker| ToWorker::Get {
                id,
                invoker,
                digest,
                code: None,
                request,
                limits,
                tenant_cap,
            },
        );
        http_answer(answer.await)
    }

    /// Code Mode in a worker process.
    pub async fn execute(
        &self,
        invoker: Invoker,
        source: String,
        env: serde_json::Value,
        limits: Limits,
        hold: Hold,
    ) -> Result<Invocation<serde_json::Value>, PoolError> {
        let answer = self.invoke(invoker, limits, hold, true, None, None, |id, invoker| {
            ToWorker::Execute {
                id,
                invoker,
                source,
                env,
                limits,
            }
        });
        match answer.await? {
            Answer::Json(inv) => Ok(inv),
            Answer::Http(_) => Err(PoolError::Unavailable),
        }
    }

    fn live(&self) -> Vec<Arc<Process>> {
        self.slots
            .iter()
            .filter_map(|s| s.current.borrow().clone())
            .filter(|p| p.is_alive())
            .collect()
    }

    /// Evicts one or all of a tenant's cached Workers in every worker; how many were cached.
    pub async fn evict(&self, tenant: &str, worker_id: Option<&str>) -> usize {
        let mut evicted = 0;
        for p in self.live() {
            let query = Query::Evict {
                tenant: tenant.to_string(),
                worker_id: worker_id.map(str::to_string),
            };
            if let Some(QueryAnswer::Evicted(n)) = p.query(query).await {
                evicted += n;
            }
        }
        evicted
    }

    /// Ids of `tenant`'s Workers that the workers hold warm.
    pub async fn cached_ids(&self, tenant: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for p in self.live() {
            let query = Query::CachedIds {
                tenant: tenant.to_string(),
            };
            if let Some(QueryAnswer::Ids(found)) = p.query(query).await {
                ids.extend(found);
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Warm isolates across the workers (from their heartbeats).
    pub fn warm_isolates(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.current.borrow().as_ref().map(|p| p.warm()))
            .sum()
    }

    /// Every regular worker is up, confined and has filled its warm pool once.
    pub fn is_ready(&self) -> bool {
        self.slots[..self.settings.processes.max(1)]
            .iter()
            .all(|s| {
                s.current
                    .borrow()
                    .as_ref()
                    .is_some_and(|p| p.is_alive() && p.is_ready())
            })
    }

    /// Test-only: sends a confinement probe to the worker that runs `tenant`.
    pub async fn probe(
        &self,
        tenant: &str,
        probe: isogate_pool::wire::Probe,
    ) -> Result<u32, PoolError> {
        let process = self.process(self.slot_for(tenant)).await?;
        process.send(ToWorker::Probe(probe))?;
        Ok(process.pid)
    }

    /// The watchdog: kills workers whose invocations overran their limits by `grace`, or whose
    /// heartbeats stopped.
    async fn watchdog(self: Arc<Self>) {
        let period = (self.settings.worker.heartbeat / 2).max(Duration::from_millis(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_cordon_report = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            // Quarantines end by time, not by an event: keep the gauge true.
            if now.duration_since(last_cordon_report) >= Duration::from_secs(1) {
                last_cordon_report = now;
                self.report_cordon();
            }
            for slot in &self.slots {
                let current = slot.current.borrow().clone();
                if let Some(p) = current {
                    if let Some(kill) =
                        p.overrun(now, self.settings.grace, self.settings.heartbeat_timeout)
                    {
                        tracing::warn!(
                            worker = slot.index,
                            pid = p.pid,
                            reason = kill.label(),
                            "watchdog: killing worker process"
                        );
                        p.kill(kill);
                    }
                }
            }
        }
    }
}

fn http_answer(answer: Result<Answer, PoolError>) -> Result<Invocation<HttpResponse>, PoolError> {
    match answer? {
        Answer::Http(inv) => Ok(inv),
        Answer::Json(_) => Err(PoolError::Unavailable),
    }
}
