//! Per-invocation accounting that the interrupt handler enforces: CPU time of each invocation
//! (not wall time), its wall-clock deadline, the isolate's memory account (QuickJS heap + native
//! bytes, [`super::memory`]) and limits tripped by host calls.
//!
//! Several invocations of one cached Worker run in one isolate at once, interleaved at their
//! await points. Each has a *run* id, which is also its QuickJS async context: the patched QuickJS
//! carries it from where a promise reaction or job was made to where it runs
//! (`vendor/rquickjs-sys/SOURCE.md`) and reports every change to [`Budget::switch_to`]. So an
//! invocation's CPU time is the thread's CPU clock summed over the stretches in which *its* code
//! ran, and a host call knows whose it is ([`Budget::current`]).
//!
//! A breach by one invocation trips the whole isolate: it is discarded once every invocation on
//! it has ended; the one that breached gets its limit error, the others
//! [`ErrorKind::IsolateDiscarded`] ([`Budget::outcome`]).

use super::memory::{self, AccountId};
use super::HostState;
use crate::api::{ErrorKind, Limits};
use cpu_time::ThreadTime;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// An invocation's id within its isolate, and its QuickJS async context (0: none).
pub(super) type RunId = u64;

struct Run {
    invocation: u64,
    cpu_limit: Duration,
    cpu_used: Duration,
    wall_deadline: Instant,
}

/// The breach that condemned the isolate, and whose it was.
#[derive(Clone, Copy)]
struct Trip {
    kind: ErrorKind,
    run: RunId,
}

pub(super) struct Budget {
    account: AccountId,
    runs: RefCell<HashMap<RunId, Run>>,
    next_run: Cell<RunId>,
    /// The async context whose code runs now (the runtime's, kept in step by `switch_to`).
    current: Cell<RunId>,
    /// Thread CPU clock when `current` started running within the poll in progress.
    since: Cell<Option<Duration>>,
    tripped: Cell<Option<Trip>>,
    /// Woken when the isolate trips, so that invocations waiting on I/O end at once.
    discarded: tokio::sync::Notify,
    /// The tasks of invocations whose futures wait on the runtime, by run (see [`Metered`]).
    parked: RefCell<HashMap<RunId, Waker>>,
}

fn thread_cpu() -> Duration {
    ThreadTime::now().as_duration()
}

impl Budget {
    pub(super) fn new(account: AccountId) -> Budget {
        Budget {
            account,
            runs: RefCell::new(HashMap::new()),
            next_run: Cell::new(1),
            current: Cell::new(0),
            since: Cell::new(None),
            tripped: Cell::new(None),
            discarded: tokio::sync::Notify::new(),
            parked: RefCell::new(HashMap::new()),
        }
    }

    /// The isolate's memory account.
    pub(super) fn account(&self) -> AccountId {
        self.account
    }

    /// Starts accounting for an invocation and returns its run id. The memory limit is the
    /// isolate's, set by the invocation that finds the isolate idle.
    pub(super) fn start(&self, invocation: u64, limits: Limits, now: Instant) -> RunId {
        let run = self.next_run.get();
        self.next_run.set(run + 1);
        let mut runs = self.runs.borrow_mut();
        if runs.is_empty() {
            self.account
                .reset(limits.memory_mb.saturating_mul(1024 * 1024));
        }
        runs.insert(
            run,
            Run {
                invocation,
                cpu_limit: Duration::from_millis(limits.cpu_ms),
                cpu_used: Duration::ZERO,
                wall_deadline: now + Duration::from_millis(limits.wall_ms),
            },
        );
        run
    }

    /// Stops accounting for `run`; returns the CPU seconds it used.
    pub(super) fn stop(&self, run: RunId) -> f64 {
        self.observe_memory(run);
        self.runs
            .borrow_mut()
            .remove(&run)
            .map_or(0.0, |r| r.cpu_used.as_secs_f64())
    }

    pub(super) fn used_seconds(&self, run: RunId) -> f64 {
        self.runs
            .borrow()
            .get(&run)
            .map_or(0.0, |r| r.cpu_used.as_secs_f64())
    }

    /// The invocation whose code runs now: `None` outside invocations, and for work left behind
    /// by one that has ended.
    pub(super) fn current(&self) -> Option<RunId> {
        let run = self.current.get();
        self.runs.borrow().contains_key(&run).then_some(run)
    }

    /// Trips `kind`, charged to the invocation whose code runs now.
    pub(super) fn trip(&self, kind: ErrorKind) {
        self.trip_run(kind, self.current.get());
    }

    /// Trips `kind`, charged to `run`: the isolate is condemned.
    pub(super) fn trip_run(&self, kind: ErrorKind, run: RunId) {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(Trip { kind, run }));
            self.discarded.notify_waiters();
        }
    }

    /// Whether a limit was breached on this isolate (it must not be reused).
    pub(super) fn tripped(&self) -> bool {
        self.observe_memory(self.current.get());
        self.tripped.get().is_some()
    }

    /// How the isolate's trip ends `run`: with its own limit, or discarded for another's breach.
    pub(super) fn outcome(&self, run: RunId) -> Option<ErrorKind> {
        self.observe_memory(run);
        let trip = self.tripped.get()?;
        Some(if trip.run == run {
            trip.kind
        } else {
            ErrorKind::IsolateDiscarded
        })
    }

    /// Resolves once the isolate has tripped.
    pub(super) async fn discarded(&self) {
        loop {
            // Created before the check, so a trip in between still wakes it.
            let woken = self.discarded.notified();
            if self.tripped() {
                return;
            }
            woken.await;
        }
    }

    /// A breached memory account trips `MemoryLimit` (the isolate is then discarded), charged
    /// to the invocation whose code runs, else to `asking`'s.
    fn observe_memory(&self, asking: RunId) {
        if self.tripped.get().is_some() || !self.account.breached() {
            return;
        }
        let runs = self.runs.borrow();
        if runs.is_empty() {
            return;
        }
        let current = self.current.get();
        let run = if runs.contains_key(&current) {
            current
        } else {
            asking
        };
        drop(runs);
        self.trip_run(ErrorKind::MemoryLimit, run);
    }

    /// Checks that `bytes` more fit in the isolate's memory budget before a native allocation
    /// of that size; if not, breaches the account and trips `MemoryLimit`.
    pub(super) fn reserve(&self, bytes: f64) -> bool {
        if bytes <= self.account.remaining() as f64 {
            return true;
        }
        self.account.breach();
        self.trip(ErrorKind::MemoryLimit);
        false
    }

    /// While a poll runs: charges the CPU since the last stretch began to `current`, restarts
    /// the clock and returns its reading.
    fn charge_current(&self) -> Option<Duration> {
        let since = self.since.get()?;
        let now = thread_cpu();
        self.since.set(Some(now));
        let run = self.current.get();
        // `try_`: this runs inside the runtime's hook, where a panic would abort the process
        // (no caller holds the map while JS runs, so it is always free).
        let over = self.runs.try_borrow_mut().is_ok_and(|mut runs| {
            runs.get_mut(&run).is_some_and(|r| {
                r.cpu_used += now.saturating_sub(since);
                r.cpu_used > r.cpu_limit
            })
        });
        if over {
            self.trip_run(ErrorKind::CpuLimit, run);
        }
        Some(now)
    }

    /// Tells the activity record (read by the watchdog) whose code runs from `now` on.
    fn publish(&self, now: Duration) {
        let Ok(runs) = self.runs.try_borrow() else {
            return;
        };
        match runs.get(&self.current.get()) {
            Some(r) => crate::activity::poll_started(r.invocation, r.cpu_used, now),
            None => crate::activity::poll_ended(),
        }
    }

    /// Called (through the runtime's async context hook) whenever the context changes: the CPU
    /// since the last change goes to the context that had it.
    pub(super) fn switch_to(&self, to: RunId) {
        let now = self.charge_current();
        self.current.set(to);
        if let Some(now) = now {
            self.publish(now);
        }
    }

    /// A poll begins: the clock starts (unless a poll is already running).
    fn begin_poll(&self) -> bool {
        if self.since.get().is_some() {
            return false;
        }
        let now = thread_cpu();
        self.since.set(Some(now));
        self.publish(now);
        true
    }

    fn end_poll(&self) {
        if self.charge_current().is_some() {
            self.since.set(None);
            crate::activity::poll_ended();
        }
    }

    /// Called by QuickJS's interrupt handler while JS runs: `true` stops the JS.
    pub(super) fn should_interrupt(&self) -> bool {
        let run = self.current.get();
        if run == 0 {
            // The bootstrap, outside any invocation.
            return false;
        }
        self.observe_memory(run);
        if self.tripped.get().is_some() {
            return true;
        }
        let runs = self.runs.borrow();
        let Some(r) = runs.get(&run) else {
            // Work an ended invocation left behind (a timer, a dangling promise) does not run
            // on another invocation's time.
            return true;
        };
        let used = r.cpu_used
            + self
                .since
                .get()
                .map_or(Duration::ZERO, |s| thread_cpu().saturating_sub(s));
        let kind = if used > r.cpu_limit {
            ErrorKind::CpuLimit
        } else if Instant::now() >= r.wall_deadline {
            ErrorKind::WallLimit
        } else {
            return false;
        };
        drop(runs);
        self.trip_run(kind, run);
        true
    }
}

/// Wraps an invocation's future: each poll runs in the invocation's async context, its CPU time
/// is charged to the invocations whose code ran, and its allocations to the isolate's memory
/// account.
///
/// It also keeps the runtime driven while several invocations wait on it: rquickjs wakes only
/// the task that polled the runtime last when a host future it spawned (a `fetch()`, a timer)
/// makes progress, whichever invocation that future belongs to. When that task's invocation
/// ends, the wake-up would be lost and the others would wait until their wall limit. So a
/// future that finishes (or is dropped) wakes the tasks of the other waiting invocations, and the
/// next to poll takes the runtime's wake-ups over.
pub(super) struct Metered<F> {
    inner: Pin<Box<F>>,
    state: Rc<HostState>,
    run: RunId,
    finished: bool,
}

impl<F> Metered<F> {
    pub(super) fn new(inner: F, state: Rc<HostState>, run: RunId) -> Self {
        Metered {
            inner: Box::pin(inner),
            state,
            run,
            finished: false,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // The context first: outside a poll, switching it reads no clock.
        let outer = self.state.contexts.entered();
        self.state.contexts.enter(self.run);
        let owner = self.state.budget.begin_poll();
        let _account = memory::enter(self.state.budget.account());
        let out = self.inner.as_mut().poll(cx);
        if owner {
            self.state.budget.end_poll();
        }
        self.state.contexts.enter(outer);
        match out {
            Poll::Pending => self.state.budget.park(self.run, cx.waker()),
            Poll::Ready(_) => {
                self.finished = true;
                self.state.budget.unpark(self.run);
            }
        }
        out
    }
}

impl<F> Drop for Metered<F> {
    fn drop(&mut self) {
        if !self.finished {
            self.state.budget.unpark(self.run);
        }
    }
}

impl Budget {
    /// `run`'s task waits on the runtime.
    fn park(&self, run: RunId, waker: &Waker) {
        let mut parked = self.parked.borrow_mut();
        match parked.get_mut(&run) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                parked.insert(run, waker.clone());
            }
        }
    }

    /// `run`'s task no longer waits on the runtime: the others' tasks are woken, so that one of
    /// them polls the runtime (and receives its wake-ups) from now on.
    fn unpark(&self, run: RunId) {
        let others: Vec<Waker> = {
            let mut parked = self.parked.borrow_mut();
            parked.remove(&run);
            parked.values().cloned().collect()
        };
        for waker in others {
            waker.wake();
        }
    }
}
