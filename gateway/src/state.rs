//! Shared gateway state. What a config reload may change (policy, admission gates) lives in one
//! [`Snapshot`] swapped atomically; a request keeps the snapshot it started with.

use crate::admission::TenantGate;
use crate::store::WorkerStore;
use arc_swap::ArcSwap;
use isogate_policy::Policy;
use isogate_pool::Pool;
use std::collections::HashMap;
use std::sync::Arc;

/// The reloadable part of the state.
pub struct Snapshot {
    /// Tenants and their keys and limits.
    pub policy: Policy,
    /// Admission gate per tenant name.
    pub gates: HashMap<String, Arc<TenantGate>>,
}

impl Snapshot {
    /// Builds a snapshot with a fresh gate per tenant.
    pub fn new(policy: Policy) -> Snapshot {
        let gates = policy
            .tenants()
            .iter()
            .map(|t| {
                (
                    t.name.as_str().to_string(),
                    Arc::new(TenantGate::new(&t.limits)),
                )
            })
            .collect();
        Snapshot { policy, gates }
    }
}

/// Everything the listeners share.
pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    /// The isolate pool.
    pub pool: Arc<Pool>,
    /// Stored WorkerCode.
    pub store: Arc<WorkerStore>,
}

impl AppState {
    /// Builds the state.
    pub fn new(policy: Policy, pool: Arc<Pool>, store: Arc<WorkerStore>) -> AppState {
        AppState {
            snapshot: ArcSwap::from_pointee(Snapshot::new(policy)),
            pool,
            store,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
