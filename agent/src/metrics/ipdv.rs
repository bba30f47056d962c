//! Inter-packet delay variation (RFC 5481), per direction, as quantiles of its magnitude.
//!
//! RFC 5481 section 4.1: `IPDV(i) = D(i) − D(i−1)` for packets with consecutive sequence numbers,
//! where D is the one-way delay. Only pairs where both probes came back count (a lost neighbour
//! leaves the pair undefined, unlike the RFC 3550 jitter which bridges losses). The constant clock
//! offset in our cross-clock transits cancels in the difference; clock skew does not, but over one
//! 20 ms step it is negligible.

use super::clock::ms;
use super::stats::p50_p95;
use super::transit::{Transit, Transits};
use callwatch_proto::report::{IpdvUpDown, Quantiles};

/// |IPDV| in ms over adjacent received pairs of one direction; `None` if there is no such pair.
fn abs_ipdv(per_probe: &[Option<Transit>], transit: fn(&Transit) -> i64) -> Option<Quantiles> {
    let magnitudes = per_probe
        .windows(2)
        .filter_map(|w| match (&w[0], &w[1]) {
            (Some(a), Some(b)) => Some(ms(
                (i128::from(transit(b)) - i128::from(transit(a))).abs() as f64
            )),
            _ => None,
        })
        .collect();
    p50_p95(magnitudes)
}

pub(super) fn ipdv_ms(transits: &Transits) -> Option<IpdvUpDown> {
    Some(IpdvUpDown {
        up: abs_ipdv(&transits.per_probe, |t| t.up_us)?,
        down: abs_ipdv(&transits.per_probe, |t| t.down_us)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(up_us: i64) -> Option<Transit> {
        Some(Transit {
            rtt_us: 0,
            up_us,
            down_us: -up_us,
        })
    }

    #[test]
    fn only_adjacent_pairs_count() {
        // Pairs (0,1): 1000, (1,2): 3000; probe 3 lost breaks (2,3) and (3,4); (4,5): 500.
        let per_probe = vec![t(0), t(1_000), t(-2_000), None, t(9_000), t(9_500)];
        let q = abs_ipdv(&per_probe, |t| t.up_us).unwrap();
        // |IPDV| = {0.5, 1, 3} ms: p50 = 1, p95 at rank 1.9 → 1 + 0.9·2 = 2.8
        assert_eq!(q.p50, 1.0);
        assert!((q.p95 - 2.8).abs() < 1e-12);
        let down = abs_ipdv(&per_probe, |t| t.down_us).unwrap();
        assert_eq!(down, q);
    }

    #[test]
    fn both_directions_from_the_transits() {
        // Up 0, 1, −2 ms and down 0, 0.5, 0.5 ms: |IPDV| up {1, 3} → p50 = 2, p95 = 1 + 0.95·2;
        // down {0.5, 0} → p50 = 0.25, p95 = 0.95·0.5.
        let per_probe = [(0, 0), (1_000, 500), (-2_000, 500)]
            .iter()
            .map(|&(up_us, down_us)| {
                Some(Transit {
                    rtt_us: 0,
                    up_us,
                    down_us,
                })
            })
            .collect();
        let transits = Transits {
            per_probe,
            up_origin: 0,
            down_origin: 0,
        };
        let q = ipdv_ms(&transits).unwrap();
        assert_eq!(q.up.p50, 2.0);
        assert!((q.up.p95 - 2.9).abs() < 1e-12);
        assert_eq!(q.down.p50, 0.25);
        assert!((q.down.p95 - 0.475).abs() < 1e-12);
        assert!(ipdv_ms(&Transits::default()).is_none());
    }

    #[test]
    fn no_adjacent_pair_gives_none() {
        assert!(abs_ipdv(&[t(0), None, t(5)], |t| t.up_us).is_none());
        assert!(abs_ipdv(&[], |t| t.up_us).is_none());
    }
}
