//! What the pool reports about itself. The gateway implements [`PoolObserver`] with its metrics;
//! the pool knows nothing of Prometheus.

use std::time::Duration;

/// Why an isolate was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StartKind {
    /// For a `load()` or `execute` that found no warm isolate.
    Load,
    /// For a `get()` of a Worker that was not cached (or whose isolate was discarded).
    GetMiss,
    /// Ahead of time, to refill the warm pool.
    WarmRefill,
}

impl StartKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Load => "load",
            StartKind::GetMiss => "get_miss",
            StartKind::WarmRefill => "warm_refill",
        }
    }
}

/// A worker-cache event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CacheEvent {
    /// `get()` found the Worker cached with the same code.
    Hit,
    /// `get()` had to create the Worker.
    Miss,
    /// Evicted by the global or the tenant's bound.
    EvictLru,
    /// Evicted after being idle for the TTL.
    EvictTtl,
}

impl CacheEvent {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheEvent::Hit => "hit",
            CacheEvent::Miss => "miss",
            CacheEvent::EvictLru => "evict_lru",
            CacheEvent::EvictTtl => "evict_ttl",
        }
    }
}

/// Receives the pool's events. Every method has a no-op default.
pub trait PoolObserver: Send + Sync + 'static {
    /// An isolate was started, taking `took`.
    fn isolate_started(&self, _kind: StartKind, _took: Duration) {}
    /// A warm isolate (started earlier, reported as `WarmRefill`) was taken into service for a
    /// `load()`/`execute` (`Load`) or for a `get()` that had to create its Worker (`GetMiss`).
    /// Together with `isolate_started` this counts every isolate put into service once.
    fn isolate_taken(&self, _kind: StartKind) {}
    /// The number of warm (code-free) isolates changed.
    fn warm_isolates(&self, _count: usize) {}
    /// A worker-cache event for `tenant`.
    fn cache_event(&self, _tenant: &str, _event: CacheEvent) {}
    /// `tenant` now has `count` cached Workers.
    fn cached_workers(&self, _tenant: &str, _count: usize) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl PoolObserver for NoopObserver {}
