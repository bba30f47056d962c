//! RFC 3550 interarrival jitter, per direction.
//!
//! RFC 3550 section 6.4.1: for consecutive packets i, j, `D(i,j) = (Rj − Sj) − (Ri − Si)` is the
//! change in transit time, and the running estimate is `J += (|D| − J)/16`, starting from 0.
//! Here "consecutive" means consecutive *received* probes in sequence order, the transit is the
//! cross-clock one-way transit of the direction (its constant clock offset cancels in D), and `S`
//! is the actual send time, so the agent's own timer error is excluded (it is reported under
//! `timer`). Computed in µs rather than RTP timestamp units; reported in ms.

use super::clock::ms;
use super::transit::Transits;
use callwatch_proto::report::UpDown;

/// The RFC 3550 estimator over a sequence of transit times (µs); `None` with fewer than two.
pub(super) fn rfc3550_us(transits: impl IntoIterator<Item = i64>) -> Option<f64> {
    let mut it = transits.into_iter();
    let mut prev = it.next()?;
    let mut j: Option<f64> = None;
    for t in it {
        let d = (i128::from(t) - i128::from(prev)) as f64;
        let acc = j.unwrap_or(0.0);
        j = Some(acc + (d.abs() - acc) / 16.0);
        prev = t;
    }
    j
}

/// Jitter of both directions in ms; `None` until two replies came back.
pub(super) fn jitter_ms(transits: &Transits) -> Option<UpDown> {
    Some(UpDown {
        up: ms(rfc3550_us(transits.received().map(|t| t.up_us))?),
        down: ms(rfc3550_us(transits.received().map(|t| t.down_us))?),
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
        assert_eq!(rfc3550_us([5]), None);
        assert_eq!(rfc3550_us([]), None);
        assert_eq!(
            rfc3550_us([i64::MIN, i64::MAX]).map(f64::is_finite),
            Some(true)
        );
    }
}
