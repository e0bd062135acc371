//! Shared gateway state. What a config reload may change (policy, admission gates) lives in one
//! [`Snapshot`] swapped atomically; a request keeps the snapshot it started with.

use crate::admission::TenantGate;
use crate::egress::TenantLimiters;
use crate::metrics::Metrics;
use crate::store::WorkerStore;
use crate::vault::Secrets;
use arc_swap::ArcSwap;
use isogate_policy::Policy;
use isogate_pool::Pool;
use std::collections::HashMap;
use std::sync::Arc;

/// The reloadable part of the state.
pub struct Snapshot {
    /// Tenants and their keys, limits and egress rules.
    pub policy: Policy,
    /// Admission gate per tenant name.
    pub gates: HashMap<String, Arc<TenantGate>>,
    /// Egress rate limiters per tenant name.
    pub limiters: HashMap<String, TenantLimiters>,
    /// Credentials and their secret sources.
    pub secrets: Arc<Secrets>,
}

impl Snapshot {
    /// Builds a snapshot with a fresh gate and fresh egress rate limiters per tenant.
    pub fn new(policy: Policy, secrets: Arc<Secrets>) -> Snapshot {
        let mut gates = HashMap::new();
        let mut limiters = HashMap::new();
        for t in policy.tenants() {
            let name = t.name.as_str().to_string();
            gates.insert(name.clone(), Arc::new(TenantGate::new(&t.limits)));
            limiters.insert(name, TenantLimiters::new(&t.egress));
        }
        Snapshot {
            policy,
            gates,
            limiters,
            secrets,
        }
    }
}

/// Everything the listeners share.
pub struct AppState {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The isolate pool.
    pub pool: Arc<Pool>,
    /// Stored WorkerCode.
    pub store: Arc<WorkerStore>,
    /// The metrics catalogue.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Builds the state over a snapshot shared with the egress pipeline.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        pool: Arc<Pool>,
        store: Arc<WorkerStore>,
        metrics: Arc<Metrics>,
    ) -> AppState {
        AppState {
            snapshot,
            pool,
            store,
            metrics,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
