//! What each isolate thread is running right now, readable from another thread.
//!
//! QuickJS can only be interrupted between bytecodes: a Worker stuck inside one native builtin
//! (a huge `indexOf`, `JSON.parse`, `sort`) never reaches the interrupt handler, so its own
//! budget cannot stop it. The thread is still observable from outside: each isolate thread
//! publishes which invocation it is polling, how much CPU that invocation had used before the
//! poll and the thread's CPU clock at the poll's start. A watchdog on another thread (the worker
//! process's heartbeat, read by the gateway's supervisor) adds the CPU the thread spent since
//! and sees an overrun while it happens.
#![allow(unsafe_code)] // reading another thread's CPU clock (an OS API); each block has a `// SAFETY:` line

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One isolate thread's published state.
pub struct ThreadActivity {
    clock: libc::clockid_t,
    current: Mutex<Option<Poll>>,
}

#[derive(Clone, Copy)]
struct Poll {
    invocation: u64,
    used_before: Duration,
    started_at: Duration,
}

/// An invocation being polled, as seen from outside its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// The invocation id ([`crate::Invoker::invocation`]).
    pub invocation: u64,
    /// CPU time the invocation has used, including the poll in progress.
    pub cpu: Duration,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<ThreadActivity>>> = const { RefCell::new(None) };
}

fn read_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; `clock` came from pthread_getcpuclockid for a
    // thread that is still alive (its `ThreadActivity` is dropped only after the thread ends,
    // and readers hold it through the pool, which joins its threads before dropping it) or
    // from CLOCK_THREAD_CPUTIME_ID. A failure leaves zero, which only under-reports.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl ThreadActivity {
    /// Registers the calling thread (an isolate thread) and returns its record.
    pub fn register() -> Arc<ThreadActivity> {
        let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
        // SAFETY: pthread_self() is the calling thread; `clock` is a valid out-pointer. On
        // failure `clock` keeps CLOCK_THREAD_CPUTIME_ID, which is only right on this thread, so
        // the record then reports no CPU from outside (see `running`).
        let ok = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
        let activity = Arc::new(ThreadActivity {
            clock: if ok { clock } else { -1 },
            current: Mutex::new(None),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(activity.clone()));
        activity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Poll>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The invocation this thread is polling now, with its CPU time so far.
    pub fn running(&self) -> Option<Running> {
        let poll = (*self.lock())?;
        let now = if self.clock == -1 {
            poll.started_at
        } else {
            read_clock(self.clock)
        };
        Some(Running {
            invocation: poll.invocation,
            cpu: poll.used_before + now.saturating_sub(poll.started_at),
        })
    }
}

/// Called by the engine when a poll of `invocation` begins on this thread, with the thread CPU
/// clock at that moment. Threads that did not register publish nothing.
pub(crate) fn poll_started(invocation: u64, used_before: Duration, started_at: Duration) {
    CURRENT.with(|c| {
        if let Some(a) = c.borrow().as_ref() {
            *a.lock() = Some(Poll {
                invocation,
                used_before,
                started_at,
            });
        }
    });
}

/// Called by the engine when that poll ends.
pub(crate) fn poll_ended() {
    CURRENT.with(|c| {
        if let Some(a) = c.borrow().as_ref() {
            *a.lock() = None;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_thread_sees_cpu_of_a_poll_in_progress() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let a = ThreadActivity::register();
            let start = cpu_time::ThreadTime::now().as_duration();
            poll_started(7, Duration::from_millis(5), start);
            tx.send(a).unwrap();
            // Burn CPU until told to stop, like a native call that never yields.
            let mut x = 0u64;
            while stop_rx.try_recv().is_err() {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
            poll_ended();
            x
        });
        let a = rx.recv().unwrap();
        let first = a.running().unwrap();
        assert_eq!(first.invocation, 7);
        assert!(first.cpu >= Duration::from_millis(5));
        let mut later = first;
        while later.cpu < first.cpu + Duration::from_millis(20) {
            later = a.running().unwrap();
        }
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(a.running(), None);
    }
}
