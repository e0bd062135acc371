//! Panics inside the engine: a Rust panic in a host function (ours or LLRT's) must never take an
//! isolate thread down, never flood the log, and never leave a half-unwound isolate in service.
//!
//! rquickjs catches a panic at the JS→Rust callback boundary, stores it in the runtime and throws
//! an exception into JS; the panic is resumed the next time Rust sees an exception from that
//! runtime, which can be much later (or never, if the JS swallows the exception). So:
//! - a process-wide panic hook, installed once, counts panics on threads that are inside an
//!   isolate poll (thread-local) and writes one structured `tracing` line instead of the default
//!   message + backtrace; panics anywhere else keep the previous hook's behaviour;
//! - [`Guarded`] wraps every future that runs JS: it polls it under `catch_unwind`, and if a panic
//!   was resumed *or merely counted* during the poll, it drops the future and ends the invocation
//!   with an `internal` error. The isolate's host state is marked so it is never reused.

use crate::api::{ErrorKind, WorkerError};
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    /// Depth of engine polls on this thread (a poll can nest through `block_on`-free awaits only
    /// in tests, but a counter is as cheap as a flag).
    static IN_ENGINE: Cell<u32> = const { Cell::new(0) };
    /// Panics seen by the hook on this thread while inside an engine poll.
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Message of the invocation error a panic turns into.
pub(crate) const PANIC_MESSAGE: &str =
    "the isolate failed inside a host function (an engine fault); it was discarded";

/// Installs the panic hook once per process.
pub(super) fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = IN_ENGINE.with(|d| d.get() > 0);
            if !inside {
                previous(info);
                return;
            }
            PANICS.with(|p| p.set(p.get() + 1));
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            // One line, no backtrace: a tenant can trigger this at will.
            tracing::error!(
                thread = thread.name().unwrap_or("?"),
                location = %location,
                panic = %message,
                "host function panicked inside an isolate; the invocation fails and the isolate is discarded"
            );
        }));
    });
}

fn panics_seen() -> u64 {
    PANICS.with(|p| p.get())
}

/// Marks this thread as running engine code while alive.
struct Scope;

impl Scope {
    fn enter() -> Scope {
        IN_ENGINE.with(|d| d.set(d.get() + 1));
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        IN_ENGINE.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

pub(super) fn panic_error() -> WorkerError {
    WorkerError::new(ErrorKind::Internal, PANIC_MESSAGE)
}

/// A future that runs JS, polled under `catch_unwind`; see the module docs.
pub(super) struct Guarded<F> {
    inner: Option<Pin<Box<F>>>,
    flag: Rc<PanicFlag>,
}

/// Set once a panic happened while the isolate ran; such an isolate is never reused.
#[derive(Default)]
pub(super) struct PanicFlag(Cell<bool>);

impl PanicFlag {
    pub(super) fn is_set(&self) -> bool {
        self.0.get()
    }
}

impl<F> Guarded<F> {
    pub(super) fn new(inner: F, flag: Rc<PanicFlag>) -> Self {
        Guarded {
            inner: Some(Box::pin(inner)),
            flag,
        }
    }
}

impl<T, F: Future<Output = Result<T, WorkerError>>> Future for Guarded<F> {
    type Output = Result<T, WorkerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.flag.is_set() {
            // The isolate already failed: run nothing more in it.
            self.inner = None;
            return Poll::Ready(Err(panic_error()));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(panic_error()));
        };
        let result = {
            let _scope = Scope::enter();
            let before = panics_seen();
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)));
            match out {
                Ok(p) if panics_seen() == before => Ok(p),
                _ => Err(()),
            }
        };
        match result {
            Ok(p) => p,
            Err(()) => {
                self.flag.0.set(true);
                // Drop the half-run future now (its drop runs engine code too).
                let _scope = Scope::enter();
                let inner = self.inner.take();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(inner)));
                Poll::Ready(Err(panic_error()))
            }
        }
    }
}
