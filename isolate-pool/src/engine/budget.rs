//! Per-invocation accounting that the interrupt handler enforces: CPU time of the invocation
//! (not wall time), the wall-clock deadline, the isolate's memory account (QuickJS heap + native
//! bytes, [`super::memory`]) and limits tripped by host calls.
//!
//! An isolate thread interleaves many invocations, so CPU time is the thread's CPU clock summed
//! over the polls of *this* invocation's future ([`Metered`]); the interrupt handler adds the
//! time of the poll in progress.

use super::memory::{self, AccountId};
use super::HostState;
use crate::api::{ErrorKind, Limits};
use cpu_time::ThreadTime;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub(super) struct Budget {
    account: AccountId,
    active: Cell<bool>,
    invocation: Cell<u64>,
    cpu_limit: Cell<Duration>,
    cpu_used: Cell<Duration>,
    poll_started: Cell<Option<Duration>>,
    wall_deadline: Cell<Option<Instant>>,
    tripped: Cell<Option<ErrorKind>>,
}

fn thread_cpu() -> Duration {
    ThreadTime::now().as_duration()
}

impl Budget {
    pub(super) fn new(account: AccountId) -> Budget {
        Budget {
            account,
            active: Cell::new(false),
            invocation: Cell::new(0),
            cpu_limit: Cell::new(Duration::ZERO),
            cpu_used: Cell::new(Duration::ZERO),
            poll_started: Cell::new(None),
            wall_deadline: Cell::new(None),
            tripped: Cell::new(None),
        }
    }

    /// The isolate's memory account.
    pub(super) fn account(&self) -> AccountId {
        self.account
    }

    /// Starts accounting for an invocation.
    pub(super) fn start(&self, invocation: u64, limits: Limits, now: Instant) {
        self.invocation.set(invocation);
        self.account
            .reset(limits.memory_mb.saturating_mul(1024 * 1024));
        self.active.set(true);
        self.cpu_limit.set(Duration::from_millis(limits.cpu_ms));
        self.cpu_used.set(Duration::ZERO);
        self.poll_started.set(None);
        self.wall_deadline
            .set(Some(now + Duration::from_millis(limits.wall_ms)));
        self.tripped.set(None);
    }

    /// Stops accounting; returns the CPU seconds used.
    pub(super) fn stop(&self) -> f64 {
        self.observe_memory();
        self.active.set(false);
        self.wall_deadline.set(None);
        self.cpu_used.get().as_secs_f64()
    }

    pub(super) fn used_seconds(&self) -> f64 {
        self.cpu_used.get().as_secs_f64()
    }

    pub(super) fn trip(&self, kind: ErrorKind) {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(kind));
        }
    }

    pub(super) fn tripped(&self) -> Option<ErrorKind> {
        self.observe_memory();
        self.tripped.get()
    }

    /// A breached memory account trips `MemoryLimit` (the isolate is then discarded).
    fn observe_memory(&self) {
        if self.active.get() && self.account.breached() {
            self.trip(ErrorKind::MemoryLimit);
        }
    }

    /// Checks that `bytes` more fit in the invocation's memory budget before a native allocation
    /// of that size; if not, breaches the account and trips `MemoryLimit`.
    pub(super) fn reserve(&self, bytes: f64) -> bool {
        if bytes <= self.account.remaining() as f64 {
            return true;
        }
        self.account.breach();
        self.trip(ErrorKind::MemoryLimit);
        false
    }

    fn begin_poll(&self) -> bool {
        if self.poll_started.get().is_some() {
            return false;
        }
        let now = thread_cpu();
        self.poll_started.set(Some(now));
        crate::activity::poll_started(self.invocation.get(), self.cpu_used.get(), now);
        true
    }

    fn end_poll(&self) {
        if let Some(start) = self.poll_started.take() {
            crate::activity::poll_ended();
            let spent = thread_cpu().saturating_sub(start);
            self.cpu_used.set(self.cpu_used.get() + spent);
            if self.active.get() && self.cpu_used.get() > self.cpu_limit.get() {
                self.trip(ErrorKind::CpuLimit);
            }
        }
    }

    /// Called by QuickJS's interrupt handler while JS runs: `true` stops the JS.
    pub(super) fn should_interrupt(&self) -> bool {
        if !self.active.get() {
            return false;
        }
        self.observe_memory();
        if self.tripped.get().is_some() {
            return true;
        }
        if let Some(start) = self.poll_started.get() {
            let used = self.cpu_used.get() + thread_cpu().saturating_sub(start);
            if used > self.cpu_limit.get() {
                self.trip(ErrorKind::CpuLimit);
                return true;
            }
        }
        if let Some(deadline) = self.wall_deadline.get() {
            if Instant::now() >= deadline {
                self.trip(ErrorKind::WallLimit);
                return true;
            }
        }
        false
    }
}

/// Wraps an invocation's future and charges the CPU time of each of its polls to the isolate's
/// budget, and the allocations made during each poll to the isolate's memory account.
pub(super) struct Metered<F> {
    inner: Pin<Box<F>>,
    state: Rc<HostState>,
}

impl<F> Metered<F> {
    pub(super) fn new(inner: F, state: Rc<HostState>) -> Self {
        Metered {
            inner: Box::pin(inner),
            state,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let owner = self.state.budget.begin_poll();
        let _account = memory::enter(self.state.budget.account());
        let out = self.inner.as_mut().poll(cx);
        if owner {
            self.state.budget.end_poll();
        }
        out
    }
}
