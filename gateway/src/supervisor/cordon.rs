//! Cordoning: which worker process a tenant runs in.
//!
//! Policy (documented in README "Isolation"):
//! - every tenant has a **home** worker chosen by a stable hash of its name, so one worker's
//!   crash affects only the tenants that hash to it, and a tenant's cached Workers stay in one
//!   process;
//! - a worker lost while running a tenant's invocation counts against that tenant (a watchdog
//!   kill counts only against the tenant whose invocation overran; a crash, a filter kill or an
//!   abort counts against every tenant that had an invocation in flight, since any of them may
//!   have caused it);
//! - a tenant with `kills` such losses within `window` is **quarantined**: its invocations run in
//!   a dedicated quarantine worker, shared only with other quarantined tenants, until it has had
//!   no loss for `hold`.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// The cordoning thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CordonSettings {
    /// Worker losses that quarantine a tenant...
    pub kills: usize,
    /// ...within this window.
    pub window: Duration,
    /// A quarantined tenant returns home after this long without a loss.
    pub hold: Duration,
}

/// The tenant's home worker among `processes` (stable for a given name and count).
pub fn home(tenant: &str, processes: usize) -> usize {
    // SipHash with fixed keys: stable across runs of one build, independent of the tenant
    // list, not chosen by an attacker (tenant names come from the operator's config).
    let mut h = std::hash::DefaultHasher::new();
    tenant.hash(&mut h);
    (h.finish() % processes.max(1) as u64) as usize
}

/// Loss history and quarantine state per tenant.
#[derive(Debug)]
pub struct Cordon {
    settings: CordonSettings,
    losses: HashMap<String, VecDeque<Instant>>,
    quarantined: HashMap<String, Instant>,
}

impl Cordon {
    /// No tenant quarantined.
    pub fn new(settings: CordonSettings) -> Cordon {
        Cordon {
            settings,
            losses: HashMap::new(),
            quarantined: HashMap::new(),
        }
    }

    /// Records a worker lost while `tenants` had invocations on it; returns the tenants this
    /// newly quarantines.
    pub fn worker_lost(&mut self, tenants: &[String], now: Instant) -> Vec<String> {
        let mut newly = Vec::new();
        for t in tenants {
            let history = self.losses.entry(t.clone()).or_default();
            history.push_back(now);
            while history
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) > self.settings.window)
            {
                history.pop_front();
            }
            if history.len() >= self.settings.kills.max(1) {
                if self.quarantined.insert(t.clone(), now).is_none() {
                    newly.push(t.clone());
                }
            } else if let Some(since) = self.quarantined.get_mut(t) {
                *since = now;
            }
        }
        self.expire(now);
        newly
    }

    fn expire(&mut self, now: Instant) {
        let hold = self.settings.hold;
        let window = self.settings.window;
        self.quarantined.retain(|t, since| {
            let last = self
                .losses
                .get(t)
                .and_then(|h| h.back().copied())
                .unwrap_or(*since);
            now.saturating_duration_since(last.max(*since)) < hold
        });
        self.losses.retain(|_, h| {
            h.back()
                .is_some_and(|at| now.saturating_duration_since(*at) <= window.max(hold))
        });
    }

    /// Whether `tenant` runs in the quarantine worker now.
    pub fn is_quarantined(&mut self, tenant: &str, now: Instant) -> bool {
        if self.quarantined.is_empty() {
            return false;
        }
        self.expire(now);
        self.quarantined.contains_key(tenant)
    }

    /// Whether any tenant is quarantined now.
    pub fn any_quarantined(&mut self, now: Instant) -> bool {
        self.expire(now);
        !self.quarantined.is_empty()
    }

    /// How many tenants are quarantined now.
    pub fn quarantined_count(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.quarantined.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cordon() -> Cordon {
        Cordon::new(CordonSettings {
            kills: 3,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(300),
        })
    }

    #[test]
    fn home_is_stable_and_spreads_tenants() {
        assert_eq!(home("acme", 4), home("acme", 4));
        let homes: std::collections::HashSet<usize> =
            (0..64).map(|i| home(&format!("t{i}"), 4)).collect();
        assert_eq!(homes.len(), 4);
        assert_eq!(home("x", 1), 0);
    }

    #[test]
    fn repeated_losses_in_the_window_quarantine_then_calm_releases() {
        let mut c = cordon();
        let t0 = Instant::now();
        let a = vec!["a".to_string()];
        assert!(c.worker_lost(&a, t0).is_empty());
        assert!(c.worker_lost(&a, t0 + Duration::from_secs(1)).is_empty());
        assert!(!c.is_quarantined("a", t0 + Duration::from_secs(1)));
        assert_eq!(c.worker_lost(&a, t0 + Duration::from_secs(2)), a);
        assert!(c.is_quarantined("a", t0 + Duration::from_secs(3)));
        assert!(!c.is_quarantined("b", t0 + Duration::from_secs(3)));
        assert_eq!(c.quarantined_count(t0 + Duration::from_secs(3)), 1);
        // Still quarantined before `hold` has passed since the last loss...
        assert!(c.is_quarantined("a", t0 + Duration::from_secs(290)));
        // ...and released after it.
        assert!(!c.is_quarantined("a", t0 + Duration::from_secs(303)));
        assert!(!c.any_quarantined(t0 + Duration::from_secs(303)));
    }

    #[test]
    fn losses_outside_the_window_do_not_add_up() {
        let mut c = cordon();
        let t0 = Instant::now();
        let a = vec!["a".to_string()];
        for i in 0..5 {
            assert!(c
                .worker_lost(&a, t0 + Duration::from_secs(61 * i))
                .is_empty());
        }
        assert!(!c.is_quarantined("a", t0 + Duration::from_secs(305)));
    }
}
