//! Exponential backoff with full jitter for retrying uploads.
//!
//! After the `n`th failure in a row the next try waits a time drawn uniformly from
//! `[0, min(cap, base × 2ⁿ⁻¹)]` ("full jitter"): agents that lost the collector together do not
//! come back together, and a long outage costs at most one try per `cap`.

use rand::Rng;
use std::time::Duration;

/// Default first ceiling: 5 s.
pub const DEFAULT_BASE: Duration = Duration::from_secs(5);
/// Default longest wait: 15 minutes.
pub const DEFAULT_CAP: Duration = Duration::from_secs(15 * 60);

/// Retry timing for one kind of operation; plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// A backoff whose first ceiling is `base` and whose waits never exceed `cap`
    /// (`base` is lowered to `cap` if larger; a zero `base` is taken as 1 ms).
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_millis(1)).min(cap);
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the wait after the next failure (without recording one).
    pub fn ceiling_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(40);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// Records a failure and returns how long to wait before trying again.
    pub fn fail(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling_after(self.failures);
        let u: f64 = rng.gen();
        ceiling.mul_f64(u)
    }

    /// Records a failure that retrying soon cannot mend (the collector shows another certificate
    /// than the pinned one): the wait is drawn from the upper half of the cap, `[cap/2, cap]`.
    pub fn fail_long(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let u: f64 = rng.gen();
        self.cap.mul_f64(0.5 + 0.5 * u)
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_from_base_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(900));
        let ceilings: Vec<u64> = (1..=10).map(|n| b.ceiling_after(n).as_secs()).collect();
        assert_eq!(ceilings, vec![5, 10, 20, 40, 80, 160, 320, 640, 900, 900]);
        assert_eq!(b.ceiling_after(u32::MAX), Duration::from_secs(900));
    }

    #[test]
    fn waits_are_jittered_over_the_whole_range_and_never_exceed_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(900));
        for _ in 0..12 {
            b.fail(&mut rng);
        }
        // At the cap: 2000 draws must spread over [0, 900 s], low and high quarters both hit.
        let waits: Vec<Duration> = (0..2000).map(|_| b.fail(&mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(900)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(225)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(675)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 1900, "jitter, not a fixed wait");
    }

    #[test]
    fn waits_grow_with_failures_and_reset_on_success() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(900));
        let mut first = Duration::ZERO;
        for n in 1..=8u32 {
            let w = b.fail(&mut rng);
            assert_eq!(b.failures(), n);
            assert!(w <= Duration::from_secs(5) * (1 << (n - 1)), "{n}: {w:?}");
            if n == 1 {
                first = w;
            }
        }
        assert!(first <= Duration::from_secs(5));
        // Mean of many draws after 8 failures is about half of 640 s, far above the first.
        let mut probe = b.clone();
        let mean: f64 = (0..1000)
            .map(|_| {
                let mut p = probe.clone();
                p.fail(&mut rng).as_secs_f64()
            })
            .sum::<f64>()
            / 1000.0;
        assert!((400.0..500.0).contains(&mean), "mean {mean}");
        probe.succeed();
        assert_eq!(probe.failures(), 0);
        assert!(probe.fail(&mut rng) <= Duration::from_secs(5));
        // A base above the cap is lowered to it.
        let b = Backoff::new(Duration::from_secs(60), Duration::from_secs(2));
        assert_eq!(b.ceiling_after(1), Duration::from_secs(2));
    }

    #[test]
    fn a_failure_retrying_cannot_mend_waits_in_the_upper_half_of_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(900));
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=200 {
            let w = b.fail_long(&mut rng);
            assert!((450.0..=900.0).contains(&w.as_secs_f64()), "{w:?}");
            assert_eq!(b.failures(), n);
        }
        b.succeed();
        assert!(
            b.fail(&mut rng) <= Duration::from_secs(5),
            "a success starts over"
        );
    }
}
