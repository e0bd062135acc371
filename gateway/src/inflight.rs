//! The gateway-wide budget for body bytes held in flight: Worker request and response bodies at
//! the ingress, outbound request bodies and upstream response bodies (raw and decoded) in
//! egress. Each tenant may hold at most its share of the budget, so one tenant cannot take the
//! whole process's memory. A request that would exceed it waits up to `wait` for bytes to be
//! released, then fails with [`InflightError`]. The gauge `isogate_inflight_bytes` shows the
//! budget in use.

use prometheus::IntGauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why bytes could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflightError {
    /// More than the tenant's share on its own: waiting cannot help.
    #[error("a body of {wanted} bytes exceeds this tenant's share of the gateway's in-flight memory budget ({share} bytes)")]
    TooLarge {
        /// Bytes the request would hold.
        wanted: usize,
        /// The tenant's share.
        share: usize,
    },
    /// The budget stayed full for the whole wait.
    #[error("the gateway's in-flight memory budget is exhausted ({in_use} of {limit} bytes held by requests in flight); retry shortly")]
    Exhausted {
        /// Bytes in use when the wait ended.
        in_use: usize,
        /// The budget.
        limit: usize,
    },
}

#[derive(Default)]
struct Held {
    total: usize,
    tenants: HashMap<String, usize>,
}

/// The budget (one per gateway).
pub struct InflightBudget {
    limit: usize,
    tenant_limit: usize,
    wait: Duration,
    held: Mutex<Held>,
    released: tokio::sync::Notify,
    gauge: Option<IntGauge>,
}

impl InflightBudget {
    /// A budget of `limit` bytes, each tenant holding at most `tenant_share_percent` of it;
    /// a reservation waits up to `wait`.
    pub fn new(
        limit: usize,
        tenant_share_percent: u8,
        wait: Duration,
        gauge: Option<IntGauge>,
    ) -> Arc<InflightBudget> {
        let share = usize::from(tenant_share_percent.clamp(1, 100));
        Arc::new(InflightBudget {
            limit,
            tenant_limit: (limit / 100).saturating_mul(share).max(1),
            wait,
            held: Mutex::new(Held::default()),
            released: tokio::sync::Notify::new(),
            gauge,
        })
    }

    /// An unlimited budget (tests, tools).
    pub fn unlimited() -> Arc<InflightBudget> {
        InflightBudget::new(usize::MAX, 100, Duration::ZERO, None)
    }

    /// An empty permit for `tenant`; grow it as bytes arrive. Dropping it releases its bytes.
    pub fn permit(self: &Arc<Self>, tenant: &str) -> InflightPermit {
        InflightPermit {
            budget: self.clone(),
            tenant: tenant.to_string(),
            bytes: 0,
        }
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.held.lock().map(|h| h.total).unwrap_or(0)
    }

    fn try_take(&self, tenant: &str, n: usize) -> Result<(), usize> {
        let Ok(mut held) = self.held.lock() else {
            return Err(0);
        };
        let mine = held.tenants.get(tenant).copied().unwrap_or(0);
        if held.total.saturating_add(n) > self.limit || mine.saturating_add(n) > self.tenant_limit {
            return Err(held.total);
        }
        held.total += n;
        *held.tenants.entry(tenant.to_string()).or_insert(0) += n;
        if let Some(g) = &self.gauge {
            g.set(held.total as i64);
        }
        Ok(())
    }

    fn give_back(&self, tenant: &str, n: usize) {
        if n == 0 {
            return;
        }
        if let Ok(mut held) = self.held.lock() {
            held.total = held.total.saturating_sub(n);
            if let Some(mine) = held.tenants.get_mut(tenant) {
                *mine = mine.saturating_sub(n);
                if *mine == 0 {
                    held.tenants.remove(tenant);
                }
            }
            if let Some(g) = &self.gauge {
                g.set(held.total as i64);
            }
        }
        self.released.notify_waiters();
    }
}

/// Bytes one request holds; released when dropped.
pub struct InflightPermit {
    budget: Arc<InflightBudget>,
    tenant: String,
    bytes: usize,
}

impl InflightPermit {
    /// Reserves `n` more bytes, waiting up to the budget's wait for room.
    pub async fn grow(&mut self, n: usize) -> Result<(), InflightError> {
        if n == 0 {
            return Ok(());
        }
        let wanted = self.bytes.saturating_add(n);
        if wanted > self.budget.tenant_limit {
            return Err(InflightError::TooLarge {
                wanted,
                share: self.budget.tenant_limit,
            });
        }
        let deadline = tokio::time::Instant::now() + self.budget.wait;
        loop {
            let released = self.budget.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.budget.try_take(&self.tenant, n) {
                Ok(()) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(in_use) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(InflightError::Exhausted {
                            in_use,
                            limit: self.budget.limit,
                        });
                    }
                }
            }
        }
    }

    /// Releases everything above `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.bytes {
            self.budget.give_back(&self.tenant, self.bytes - n);
            self.bytes = n;
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.budget.give_back(&self.tenant, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn shares_waits_and_release() {
        let b = InflightBudget::new(1000, 50, Duration::from_millis(100), None);
        let mut a = b.permit("a");
        assert!(matches!(
            a.grow(600).await,
            Err(InflightError::TooLarge { share: 500, .. })
        ));
        a.grow(500).await.unwrap();
        assert!(matches!(
            a.grow(1).await,
            Err(InflightError::TooLarge { .. })
        ));
        let mut c = b.permit("c");
        c.grow(400).await.unwrap();
        let mut d = b.permit("d");
        // Full: waits, then fails clearly.
        assert!(matches!(
            d.grow(200).await,
            Err(InflightError::Exhausted {
                in_use: 900,
                limit: 1000
            })
        ));
        // A release during the wait lets it through.
        let waiter = tokio::spawn(async move {
            let r = d.grow(200).await;
            (r, d)
        });
        tokio::task::yield_now().await;
        drop(a);
        let (r, d) = waiter.await.unwrap();
        r.unwrap();
        assert_eq!(b.in_use(), 600);
        drop((c, d));
        assert_eq!(b.in_use(), 0);
    }
}
