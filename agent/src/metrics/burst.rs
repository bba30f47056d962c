//! Burst loss of the round trip: loss runs, RFC 3611 densities and the Gilbert model in one figure.
//!
//! The pattern is "reply missing" per probe in sequence order: it cannot tell upstream from
//! downstream loss, which is what a relayed call through the reflector would suffer.

use super::burstgap::Counters;
use super::gilbert::{loss_runs, Gilbert};
use super::saturating_u32;
use callwatch_proto::report::Burst;

/// Burst figures for a per-probe "lost" pattern; `None` when nothing was sent.
pub(super) fn burst(lost: &[bool]) -> Option<Burst> {
    if lost.is_empty() {
        return None;
    }
    let (count, total, max_len) = loss_runs(lost).fold((0usize, 0usize, 0usize), |(c, t, m), n| {
        (c + 1, t + n, m.max(n))
    });
    let rfc3611 = Counters::count(lost);
    let gilbert = Gilbert::fit(lost);
    Some(Burst {
        count: saturating_u32(count),
        mean_len: if count == 0 {
            0.0
        } else {
            total as f64 / count as f64
        },
        max_len: saturating_u32(max_len),
        gap_density: rfc3611.gap_density(),
        burst_density: rfc3611.burst_density(),
        gilbert_p: gilbert.p,
        gilbert_q: gilbert.q,
        burst_ratio: gilbert.burst_ratio(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_known_pattern() {
        // R L L R L R R L L L → runs 2, 1, 3
        let lost: Vec<bool> = "RLLRLRRLLL".chars().map(|c| c == 'L').collect();
        let b = burst(&lost).unwrap();
        assert_eq!((b.count, b.mean_len, b.max_len), (3, 2.0, 3));
        // 3 runs, 4 received, 6 lost: p = 3/5, q = 3/6.
        assert_eq!((b.gilbert_p, b.gilbert_q), (0.6, 0.5));
    }

    #[test]
    fn no_loss_and_nothing_sent() {
        let b = burst(&[false; 10]).unwrap();
        assert_eq!(
            (b.count, b.mean_len, b.max_len, b.burst_ratio),
            (0, 0.0, 0, 1.0)
        );
        assert!(burst(&[]).is_none());
    }
}
