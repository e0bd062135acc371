//! Egress rate limits (GCRA, `governor`): one limiter per rule that sets `rate_limit` and one per
//! tenant. Limits are per gateway replica.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use isogate_policy::{EgressPolicy, RateLimit};
use std::num::NonZeroU32;
use std::time::Duration;

fn limiter(limit: &RateLimit) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(limit.per_second)?;
    let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// A tenant's egress limiters.
pub struct TenantLimiters {
    tenant: Option<DefaultDirectRateLimiter>,
    rules: Vec<Option<DefaultDirectRateLimiter>>,
    /// Only read on refusal, to say how long to wait (creating a clock calibrates it, which is
    /// far too slow for every check).
    clock: DefaultClock,
}

impl TenantLimiters {
    /// Limiters for a tenant's egress policy.
    pub fn new(policy: &EgressPolicy) -> TenantLimiters {
        TenantLimiters {
            tenant: policy.rate_limit.as_ref().and_then(limiter),
            rules: policy
                .rules
                .iter()
                .map(|r| r.rate_limit.as_ref().and_then(limiter))
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one cell from the rule's and the tenant's limiter; on refusal, how long to wait.
    pub fn check(&self, rule: Option<usize>) -> Result<(), Duration> {
        if let Some(Some(l)) = rule.and_then(|i| self.rules.get(i)) {
            l.check().map_err(|n| n.wait_time_from(self.clock.now()))?;
        }
        if let Some(l) = &self.tenant {
            l.check().map_err(|n| n.wait_time_from(self.clock.now()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isogate_policy::EgressPolicy;

    #[test]
    fn burst_then_refusal_with_a_wait_time() {
        let policy = EgressPolicy {
            rate_limit: Some(RateLimit {
                per_second: 1,
                burst: 3,
            }),
            ..EgressPolicy::default()
        };
        let l = TenantLimiters::new(&policy);
        for _ in 0..3 {
            assert!(l.check(None).is_ok());
        }
        let wait = l.check(None).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
}
