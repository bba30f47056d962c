//! RFC 3550 interarrival jitter, per direction.
//!
//! RFC 3550 section 6.4.1: for consecutive packets i, j, `D(i,j) = (Rj − Sj) − (Ri − Si)` is the
//! change in transit time, and the running estimate is `J += (|D| − J)/16`, starting from 0.
//! Here "consecutive" means consecutive *received* probes in sequence order, the transit is the
//! cross-clock one-way transit of the direction (its constant clock offset cancels in D), and `S`
//! is the actual send time, so the agent's own timer error is excluded (it is reported under
//! `timer`). Computed in µs rather than RTP timestamp units; reported in ms.

use super::clock::ms;
use super::stats::{mean, quantile, sorted};
use super::transit::Transits;
use callwatch_proto::report::UpDown;

/// The RFC 3550 estimator's value after each packet but the first, over a sequence of transit
/// times (µs); empty with fewer than two.
pub(super) fn rfc3550_series_us(transits: impl IntoIterator<Item = i64>) -> Vec<f64> {
    let mut it = transits.into_iter();
    let Some(mut prev) = it.next() else {
        return Vec::new();
    };
    let mut j = 0.0;
    let mut out = Vec::new();
    for t in it {
        let d = (i128::from(t) - i128::from(prev)) as f64;
        j += (d.abs() - j) / 16.0;
        out.push(j);
        prev = t;
    }
    out
}

/// The estimator's last value; `None` with fewer than two transits.
#[cfg(test)]
pub(super) fn rfc3550_us(transits: impl IntoIterator<Item = i64>) -> Option<f64> {
    rfc3550_series_us(transits).last().copied()
}

/// The running RFC 3550 estimate of a call summarised: its mean and 95th percentile over the
/// call, and its final value (what an RTP receiver reports: the last ~16 packets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct JitterSummary {
    pub mean: UpDown,
    pub p95: UpDown,
    pub last: UpDown,
}

/// Jitter of both directions in ms; `None` until two replies came back.
pub(super) fn jitter_summary_ms(transits: &Transits) -> Option<JitterSummary> {
    let up = rfc3550_series_us(transits.received().map(|t| t.up_us));
    let down = rfc3550_series_us(transits.received().map(|t| t.down_us));
    let p95 = |v: &[f64]| quantile(&sorted(v.to_vec()), 0.95);
    Some(JitterSummary {
        last: UpDown {
            up: ms(*up.last()?),
            down: ms(*down.last()?),
        },
        mean: UpDown {
            up: ms(mean(&up)?),
            down: ms(mean(&down)?),
        },
        p95: UpDown {
            up: ms(p95(&up)?),
            down: ms(p95(&down)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_sequence() {
        // Transits 100, 120, 110, 150 µs → D = 20, −10, 40.
        // J1 = 20/16 = 1.25
        // J2 = 1.25 + (10 − 1.25)/16 = 1.796875
        // J3 = 1.796875 + (40 − 1.796875)/16 = 4.1845703125
        assert_eq!(rfc3550_us([100, 120, 110, 150]), Some(4.1845703125));
    }

    #[test]
    fn constant_offset_cancels_and_one_packet_is_not_enough() {
        let shifted = [100, 120, 110, 150].map(|t| t - 7_000_000_000);
        assert_eq!(rfc3550_us(shifted), Some(4.1845703125));
        assert_eq!(
            rfc3550_series_us([100, 120, 110, 150]),
            vec![1.25, 1.796875, 4.1845703125]
        );
        assert_eq!(rfc3550_us([5]), None);
        assert_eq!(rfc3550_us([]), None);
        assert_eq!(
            rfc3550_us([i64::MIN, i64::MAX]).map(f64::is_finite),
            Some(true)
        );
    }
}
