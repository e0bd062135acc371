//! Per-tenant admission: at most `max_concurrency` invocations of a tenant run at once; up to
//! `max_queue` more wait (each at most `queue_timeout_ms`); the rest are refused with 429 and
//! `Retry-After`. Each tenant has its own gate, so one tenant's flood cannot take another
//! tenant's slots.

use crate::error::ApiError;
use isogate_policy::TenantLimits;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One tenant's gate.
pub struct TenantGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

impl TenantGate {
    /// A gate for these limits.
    pub fn new(limits: &TenantLimits) -> TenantGate {
        TenantGate {
            slots: Arc::new(Semaphore::new(limits.max_concurrency.max(1) as usize)),
            waiting: AtomicUsize::new(0),
            max_queue: limits.max_queue as usize,
            queue_timeout: Duration::from_millis(limits.queue_timeout_ms),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn retry_after(&self) -> u64 {
        self.queue_timeout.as_secs().max(1)
    }

    /// Waits for a slot; the permit frees it when dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyRequests {
                retry_after_s: self.retry_after(),
                message: format!(
                    "tenant concurrency limit reached and {} requests already waiting",
                    self.max_queue
                ),
            });
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::TooManyRequests {
                retry_after_s: self.retry_after(),
                message: format!(
                    "tenant concurrency limit reached; no slot freed within {} ms",
                    self.queue_timeout.as_millis()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: u32, queue: u32, timeout_ms: u64) -> TenantLimits {
        TenantLimits {
            cpu_ms: 1,
            memory_mb: 1,
            wall_ms: 1,
            subrequests: 1,
            max_concurrent_requests: 32,
            max_concurrency: concurrency,
            max_cached_workers: 1,
            max_body_bytes: 1,
            max_queue: queue,
            queue_timeout_ms: timeout_ms,
        }
    }

    #[tokio::test]
    async fn queue_full_is_refused_at_once() {
        let gate = Arc::new(TenantGate::new(&limits(1, 0, 1000)));
        let _held = gate.admit().await.unwrap();
        let e = gate.admit().await.unwrap_err();
        assert_eq!(e.status(), 429);
        assert!(e.headers().iter().any(|(k, _)| *k == "retry-after"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_times_out_then_a_freed_slot_is_taken() {
        let gate = Arc::new(TenantGate::new(&limits(1, 1, 50)));
        let held = gate.admit().await.unwrap();
        assert_eq!(gate.admit().await.unwrap_err().status(), 429);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(gate.queue_depth(), 1);
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(gate.queue_depth(), 0);
    }
}
