//! How well the agent kept its send schedule: lateness of each send against the schedule.
//!
//! Early sends (clock quirks) count as on time: the figure is about the agent being too busy to
//! send when it should, which inflates jitter without the network being at fault.

use super::clock::elapsed_us;
use super::stats::{mean, quantile, sorted};
use super::{saturating_u32, ProbeRecord};
use callwatch_proto::report::TimerStats;

/// `None` when nothing was sent.
pub(super) fn timer(probes: &[ProbeRecord], interval_us: u64) -> Option<TimerStats> {
    let errors_us: Vec<u64> = probes
        .iter()
        .map(|p| elapsed_us(p.scheduled_us, p.sent_us).max(0).unsigned_abs())
        .collect();
    // error > interval/2, compared as 2·error > interval so an odd interval is not rounded.
    let late_sends = errors_us
        .iter()
        .filter(|&&e| 2 * u128::from(e) > u128::from(interval_us))
        .count();
    let errors = sorted(errors_us.iter().map(|&e| e as f64).collect());
    Some(TimerStats {
        mean_error_us: mean(&errors)?,
        p99_error_us: quantile(&errors, 0.99)?,
        late_sends: saturating_u32(late_sends),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_late_by(i: u32, error: i64) -> ProbeRecord {
        let scheduled = 1_000_000 + u64::from(i) * 20_000;
        ProbeRecord {
            seq: i,
            scheduled_us: scheduled,
            sent_us: scheduled.wrapping_add_signed(error),
            len: 100,
            reply: None,
        }
    }

    #[test]
    fn errors_by_hand() {
        let probes: Vec<ProbeRecord> = [0, 100, -50, 15_000, 5_000]
            .iter()
            .enumerate()
            .map(|(i, &e)| sent_late_by(i as u32, e))
            .collect();
        let t = timer(&probes, 20_000).unwrap();
        // Errors 0, 100, 0 (early), 15000, 5000 → mean 4020; sorted 0 0 100 5000 15000,
        // p99 at rank 3.96 → 5000 + 0.96·10000 = 14600; late (> 10 ms): one.
        assert_eq!(t.mean_error_us, 4020.0);
        assert!((t.p99_error_us - 14_600.0).abs() < 1e-9);
        assert_eq!(t.late_sends, 1);
        assert!(timer(&[], 20_000).is_none());
    }

    #[test]
    fn late_means_more_than_half_an_interval() {
        // At 20 ms, exactly 10 ms behind schedule is not late; 10.001 ms and 15 ms are.
        let probes: Vec<ProbeRecord> = [10_000, 10_001, 15_000]
            .iter()
            .enumerate()
            .map(|(i, &e)| sent_late_by(i as u32, e))
            .collect();
        assert_eq!(timer(&probes, 20_000).unwrap().late_sends, 2);
    }
}
