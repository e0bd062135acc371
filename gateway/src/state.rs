//! Shared gateway state. What a config reload may change (policy, admission gates) lives in one
//! [`Snapshot`] swapped atomically; a request keeps the snapshot it started with.

use crate::admission::TenantGate;
use crate::egress::TenantLimiters;
use crate::inflight::InflightBudget;
use crate::metrics::Metrics;
use crate::public::ClientLimiter;
use crate::store::Stored;
use crate::supervisor::Workers;
use crate::vault::Secrets;
use arc_swap::ArcSwap;
use isogate_policy::Policy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// The reloadable part of the state.
pub struct Snapshot {
    /// Tenants and their keys, limits and egress rules.
    pub policy: Policy,
    /// Admission gate per tenant name.
    pub gates: HashMap<String, Arc<TenantGate>>,
    /// Egress rate limiters per tenant name.
    pub limiters: HashMap<String, Arc<TenantLimiters>>,
    /// Credentials and their secret sources.
    pub secrets: Arc<Secrets>,
    /// Per-client rate limiters of the public routes, by (tenant, route name).
    pub clients: HashMap<(String, String), Arc<ClientLimiter>>,
}

impl Snapshot {
    /// The configured tenants' names.
    pub fn tenant_names(&self) -> Vec<String> {
        self.policy
            .tenants()
            .iter()
            .map(|t| t.name.as_str().to_string())
            .collect()
    }

    /// (tenant, API name) of every configured tenant API.
    pub fn apis(&self) -> Vec<(String, String)> {
        self.policy
            .tenants()
            .iter()
            .flat_map(|t| {
                t.apis
                    .iter()
                    .map(move |a| (t.name.as_str().to_string(), a.name.clone()))
            })
            .collect()
    }

    /// Builds a snapshot with a fresh gate and fresh egress rate limiters per tenant.
    pub fn new(policy: Policy, secrets: Arc<Secrets>) -> Snapshot {
        Snapshot::build(policy, secrets, None)
    }

    /// Builds the snapshot for a reloaded policy. A tenant whose limits did not change keeps its
    /// admission gate (so requests in flight still count against it), and one whose egress
    /// policy did not change keeps its rate limiters.
    pub fn rebuild(policy: Policy, secrets: Arc<Secrets>, previous: &Snapshot) -> Snapshot {
        Snapshot::build(policy, secrets, Some(previous))
    }

    fn build(policy: Policy, secrets: Arc<Secrets>, previous: Option<&Snapshot>) -> Snapshot {
        let mut gates = HashMap::new();
        let mut limiters = HashMap::new();
        for t in policy.tenants() {
            let name = t.name.as_str();
            let before = previous.and_then(|p| p.policy.tenant(name).map(|old| (p, old)));
            let gate = before
                .filter(|(_, old)| old.limits == t.limits)
                .and_then(|(p, _)| p.gates.get(name).cloned())
                .unwrap_or_else(|| Arc::new(TenantGate::new(&t.limits)));
            let limiter = before
                .filter(|(_, old)| old.egress == t.egress)
                .and_then(|(p, _)| p.limiters.get(name).cloned())
                .unwrap_or_else(|| Arc::new(TenantLimiters::new(&t.egress)));
            gates.insert(name.to_string(), gate);
            limiters.insert(name.to_string(), limiter);
        }
        let mut clients = HashMap::new();
        for route in policy.routes().routes() {
            let key = (route.tenant.as_str().to_string(), route.name.clone());
            // A route whose limit did not change keeps its clients' state.
            let limiter = previous
                .and_then(|p| p.clients.get(&key))
                .filter(|l| l.limit() == route.client_rate_limit)
                .cloned()
                .unwrap_or_else(|| Arc::new(ClientLimiter::new(route.client_rate_limit)));
            clients.insert(key, limiter);
        }
        Snapshot {
            policy,
            gates,
            limiters,
            secrets,
            clients,
        }
    }
}

/// Everything the listeners share.
pub struct AppState {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The isolate runner (worker processes, or in-process threads).
    pub pool: Arc<Workers>,
    /// Stored WorkerCode.
    pub store: Arc<Stored>,
    /// The metrics catalogue.
    pub metrics: Arc<Metrics>,
    /// Shutdown has begun: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// The grace period is over: new ingress requests are refused.
    pub refusing: AtomicBool,
    /// Ingress requests being handled now.
    pub in_flight: AtomicUsize,
    /// The budget for body bytes in flight (shared with egress).
    pub inflight: Arc<InflightBudget>,
    /// The tenant APIs (declarations, search).
    pub apis: Option<Arc<crate::apis::Apis>>,
    /// Execution receipts (shared with the egress pipeline and the APIs).
    pub receipts: Arc<crate::receipts::Receipts>,
    /// Streaming executions and their client-side tool calls (shared with the APIs' port).
    pub executions: Arc<crate::executions::Executions>,
    /// This replica's id among those sharing a Redis (empty without `shared.redis`).
    pub replica: String,
}

impl AppState {
    /// Builds the state over a snapshot shared with the egress pipeline.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        pool: Arc<Workers>,
        store: Arc<Stored>,
        metrics: Arc<Metrics>,
    ) -> AppState {
        metrics.routes_configured(&snapshot.load().clients.keys().cloned().collect::<Vec<_>>());
        metrics.apis_configured(&snapshot.load().apis());
        metrics.tenants_configured(&snapshot.load().tenant_names());
        let receipts: Arc<crate::receipts::Receipts> = Arc::default();
        AppState {
            snapshot,
            pool,
            store,
            metrics,
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            inflight: InflightBudget::unlimited(),
            apis: None,
            executions: crate::executions::Executions::new(receipts.clone(), None),
            receipts,
            replica: String::new(),
        }
    }

    /// Makes `snapshot` current; requests in flight keep the one they loaded. The public
    /// routes' metric series follow the configuration.
    pub fn swap(&self, snapshot: Snapshot) {
        self.metrics
            .routes_configured(&snapshot.clients.keys().cloned().collect::<Vec<_>>());
        self.metrics.apis_configured(&snapshot.apis());
        self.metrics.tenants_configured(&snapshot.tenant_names());
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
