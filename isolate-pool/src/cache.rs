//! The pool-wide index of cached Workers: which (tenant, id) lives on which isolate thread,
//! in LRU order, with a global bound, a per-tenant bound and an idle TTL.
//!
//! The isolates themselves live on their threads; this index only decides. Every eviction it
//! decides is returned to the caller, who tells the owning thread to drop the isolate.

use crate::api::CodeDigest;
use lru::LruCache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identity of a cached Worker. A Worker is never shared across tenants: the tenant is part of
/// the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    /// Tenant name.
    pub tenant: Arc<str>,
    /// Worker id within the tenant.
    pub id: Arc<str>,
}

impl WorkerKey {
    /// Builds a key.
    pub fn new(tenant: &str, id: &str) -> Self {
        WorkerKey {
            tenant: Arc::from(tenant),
            id: Arc::from(id),
        }
    }
}

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Pushed out by the global or the tenant's bound.
    Lru,
    /// Idle longer than the TTL.
    Ttl,
    /// Removed on request, or its isolate was discarded after a limit breach.
    Removed,
}

/// One eviction the owner of `thread` must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The Worker.
    pub key: WorkerKey,
    /// The isolate thread that holds it.
    pub thread: usize,
    /// Why.
    pub reason: EvictReason,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    thread: usize,
    digest: CodeDigest,
    last_used: Instant,
}

/// Result of [`CacheIndex::acquire`].
#[derive(Debug)]
pub struct Acquired {
    /// The thread that holds (or will hold) the Worker.
    pub thread: usize,
    /// Whether the Worker was cached with the same code.
    pub hit: bool,
    /// Entries pushed out to make room.
    pub evicted: Vec<Eviction>,
}

/// LRU + TTL + per-tenant index of cached Workers.
pub struct CacheIndex {
    lru: LruCache<WorkerKey, Entry>,
    per_tenant: HashMap<Arc<str>, usize>,
}

impl CacheIndex {
    /// An index holding at most `capacity` Workers.
    pub fn new(capacity: usize) -> Self {
        let cap =
            std::num::NonZeroUsize::new(capacity.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        CacheIndex {
            lru: LruCache::new(cap),
            per_tenant: HashMap::new(),
        }
    }

    /// Number of cached Workers.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Number of cached Workers of `tenant`.
    pub fn tenant_len(&self, tenant: &str) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Ids cached for `tenant`, most recently used first.
    pub fn ids(&self, tenant: &str) -> Vec<String> {
        self.lru
            .iter()
            .filter(|(k, _)| &*k.tenant == tenant)
            .map(|(k, _)| k.id.to_string())
            .collect()
    }

    /// Whether `key` is cached.
    pub fn contains(&self, key: &WorkerKey) -> bool {
        self.lru.contains(key)
    }

    /// Marks `key` used now. A hit needs the same code digest; otherwise the entry is
    /// (re)inserted on `new_thread`, evicting the tenant's least recently used Worker when the
    /// tenant is at `tenant_cap`, and the globally least recently used one when full.
    pub fn acquire(
        &mut self,
        key: &WorkerKey,
        digest: CodeDigest,
        tenant_cap: usize,
        new_thread: usize,
        now: Instant,
    ) -> Acquired {
        if let Some(entry) = self.lru.get_mut(key) {
            entry.last_used = now;
            if entry.digest == digest {
                return Acquired {
                    thread: entry.thread,
                    hit: true,
                    evicted: Vec::new(),
                };
            }
            entry.digest = digest;
            return Acquired {
                thread: entry.thread,
                hit: false,
                evicted: Vec::new(),
            };
        }
        let mut evicted = Vec::new();
        if self.tenant_len(&key.tenant) >= tenant_cap.max(1) {
            let victim = self
                .lru
                .iter()
                .rev()
                .find(|(k, _)| k.tenant == key.tenant)
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                if let Some(e) = self.remove_entry(&victim) {
                    evicted.push(Eviction {
                        key: victim,
                        thread: e.thread,
                        reason: EvictReason::Lru,
                    });
                }
            }
        }
        let entry = Entry {
            thread: new_thread,
            digest,
            last_used: now,
        };
        *self.per_tenant.entry(key.tenant.clone()).or_insert(0) += 1;
        if let Some((old_key, old)) = self.lru.push(key.clone(), entry) {
            // `push` only returns another key when the cache was full.
            if &old_key != key {
                self.decrement(&old_key.tenant);
                evicted.push(Eviction {
                    key: old_key,
                    thread: old.thread,
                    reason: EvictReason::Lru,
                });
            }
        }
        Acquired {
            thread: new_thread,
            hit: false,
            evicted,
        }
    }

    fn decrement(&mut self, tenant: &Arc<str>) {
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    fn remove_entry(&mut self, key: &WorkerKey) -> Option<Entry> {
        let e = self.lru.pop(key)?;
        self.decrement(&key.tenant);
        Some(e)
    }

    /// Removes `key`; returns the thread that held it.
    pub fn remove(&mut self, key: &WorkerKey) -> Option<usize> {
        self.remove_entry(key).map(|e| e.thread)
    }

    /// Removes `key` only if it still holds `digest` (a newer insert is left alone).
    pub fn remove_if(&mut self, key: &WorkerKey, digest: CodeDigest) -> bool {
        match self.lru.peek(key) {
            Some(e) if e.digest == digest => self.remove_entry(key).is_some(),
            _ => false,
        }
    }

    /// Removes every Worker of `tenant`.
    pub fn remove_tenant(&mut self, tenant: &str) -> Vec<Eviction> {
        let keys: Vec<WorkerKey> = self
            .lru
            .iter()
            .filter(|(k, _)| &*k.tenant == tenant)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let e = self.remove_entry(&key)?;
                Some(Eviction {
                    key,
                    thread: e.thread,
                    reason: EvictReason::Removed,
                })
            })
            .collect()
    }

    /// Removes every Worker idle for longer than `ttl`.
    pub fn expire(&mut self, ttl: Duration, now: Instant) -> Vec<Eviction> {
        let mut out = Vec::new();
        while let Some((key, entry)) = self.lru.peek_lru() {
            if now.saturating_duration_since(entry.last_used) <= ttl {
                break;
            }
            let key = key.clone();
            if let Some(e) = self.remove_entry(&key) {
                out.push(Eviction {
                    key,
                    thread: e.thread,
                    reason: EvictReason::Ttl,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: CodeDigest = CodeDigest([1; 32]);
    const D2: CodeDigest = CodeDigest([2; 32]);

    fn key(t: &str, id: &str) -> WorkerKey {
        WorkerKey::new(t, id)
    }

    #[test]
    fn hit_requires_same_code() {
        let mut idx = CacheIndex::new(10);
        let now = Instant::now();
        assert!(!idx.acquire(&key("a", "1"), D1, 10, 0, now).hit);
        assert!(idx.acquire(&key("a", "1"), D1, 10, 1, now).hit);
        let changed = idx.acquire(&key("a", "1"), D2, 10, 1, now);
        assert!(!changed.hit);
        assert_eq!(
            changed.thread, 0,
            "an entry stays on the thread that holds it"
        );
    }

    #[test]
    fn global_bound_evicts_least_recently_used() {
        let mut idx = CacheIndex::new(2);
        let now = Instant::now();
        idx.acquire(&key("a", "1"), D1, 10, 0, now);
        idx.acquire(&key("b", "1"), D1, 10, 1, now);
        idx.acquire(&key("a", "1"), D1, 10, 0, now); // a/1 becomes most recent
        let r = idx.acquire(&key("c", "1"), D1, 10, 2, now);
        assert_eq!(r.evicted.len(), 1);
        assert_eq!(r.evicted[0].key, key("b", "1"));
        assert_eq!(r.evicted[0].thread, 1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.tenant_len("b"), 0);
    }

    #[test]
    fn tenant_bound_evicts_only_that_tenants_workers() {
        let mut idx = CacheIndex::new(100);
        let now = Instant::now();
        idx.acquire(&key("a", "1"), D1, 2, 0, now);
        idx.acquire(&key("b", "1"), D1, 2, 0, now);
        idx.acquire(&key("a", "2"), D1, 2, 0, now);
        let r = idx.acquire(&key("a", "3"), D1, 2, 0, now);
        assert_eq!(r.evicted.len(), 1);
        assert_eq!(r.evicted[0].key, key("a", "1"));
        assert_eq!(idx.tenant_len("a"), 2);
        assert!(idx.contains(&key("b", "1")));
        assert_eq!(idx.ids("a"), vec!["3".to_string(), "2".to_string()]);
    }

    #[test]
    fn ttl_expires_idle_entries_only() {
        let mut idx = CacheIndex::new(100);
        let t0 = Instant::now();
        idx.acquire(&key("a", "old"), D1, 10, 0, t0);
        idx.acquire(&key("a", "new"), D1, 10, 0, t0 + Duration::from_secs(50));
        let gone = idx.expire(Duration::from_secs(30), t0 + Duration::from_secs(60));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, key("a", "old"));
        assert_eq!(gone[0].reason, EvictReason::Ttl);
        assert!(idx.contains(&key("a", "new")));
    }

    #[test]
    fn remove_if_respects_newer_code_and_tenant_removal() {
        let mut idx = CacheIndex::new(100);
        let now = Instant::now();
        idx.acquire(&key("a", "1"), D2, 10, 0, now);
        assert!(!idx.remove_if(&key("a", "1"), D1));
        assert!(idx.remove_if(&key("a", "1"), D2));
        idx.acquire(&key("a", "1"), D1, 10, 0, now);
        idx.acquire(&key("a", "2"), D1, 10, 1, now);
        idx.acquire(&key("b", "1"), D1, 10, 1, now);
        assert_eq!(idx.remove_tenant("a").len(), 2);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.tenant_len("a"), 0);
    }
}
