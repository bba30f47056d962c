//! One-way delay without synchronised clocks: queueing delay per direction and the clock offset.
//!
//! With `o_up = d_up + θ` and `o_down = d_down − θ` (θ = reflector clock minus agent clock),
//! `o − min(o)` is free of θ: it is the delay above the smallest seen on that direction, i.e. the
//! queueing delay, reported with reference `"relative-to-path-minimum"`. The offset estimate
//! `θ̂ = (min o_up − min o_down)/2` assumes the two minimum delays are equal, so its error is at
//! most half the minimum round trip (a path can be at worst fully asymmetric).
//!
//! Clock skew is not removed: over a call test of a minute, 50 ppm of skew adds up to 3 ms of
//! drift, which shows as a slope in the queueing figures. A lower-envelope fit would remove it.

use super::clock::{elapsed_us, ms};
use super::stats::summarize;
use super::transit::Transits;
use callwatch_proto::report::OneWayDelay;

pub(super) const REFERENCE: &str = "relative-to-path-minimum";

pub(super) fn one_way_delay_ms(transits: &Transits) -> Option<OneWayDelay> {
    let min_up = transits.received().map(|t| t.up_us).min()?;
    let min_down = transits.received().map(|t| t.down_us).min()?;
    let above = |v: i64, min: i64| ms((i128::from(v) - i128::from(min)) as f64);
    let up = summarize(
        transits
            .received()
            .map(|t| above(t.up_us, min_up))
            .collect(),
    )?;
    let down = summarize(
        transits
            .received()
            .map(|t| above(t.down_us, min_down))
            .collect(),
    )?;

    // Back to raw (wrapping) transits for θ̂. Their sum min o_up + min o_down is small (at most
    // the minimum round trip), so it is taken as a signed interval; θ̂ = min o_up − sum/2 then
    // needs no halving of a wrapped quantity.
    let raw_min_up = transits.up_origin.wrapping_add(min_up as u64);
    let raw_min_down = transits.down_origin.wrapping_add(min_down as u64);
    let sum = elapsed_us(raw_min_down.wrapping_neg(), raw_min_up);
    let theta_floor = elapsed_us(sum.div_euclid(2) as u64, raw_min_up);
    let theta_us = theta_floor as f64 - sum.rem_euclid(2) as f64 / 2.0;

    let min_rtt = transits.min_rtt_us()?;
    Some(OneWayDelay {
        up,
        down,
        reference: REFERENCE.to_string(),
        clock_offset_ms: ms(theta_us),
        clock_offset_error_ms: ms(min_rtt as f64 / 2.0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ProbeRecord, ReplyRecord};
    use super::*;

    /// Probes 20 ms apart with the given one-way delays (ms), 100 µs of hold, and the reflector
    /// clock at `reflector_base` when the agent's reads 0.
    fn record(delays_ms: &[(u64, u64)], reflector_base: u64) -> Vec<ProbeRecord> {
        delays_ms
            .iter()
            .enumerate()
            .map(|(i, &(up, down))| {
                let sent = 1_000_000 + 20_000 * i as u64;
                let rx = reflector_base.wrapping_add(sent + up * 1000);
                let tx = rx.wrapping_add(100);
                ProbeRecord {
                    seq: i as u32,
                    scheduled_us: sent,
                    sent_us: sent,
                    len: 160,
                    reply: Some(ReplyRecord {
                        reflector_rx_us: rx,
                        reflector_tx_us: tx,
                        received_us: sent + up * 1000 + 100 + down * 1000,
                    }),
                }
            })
            .collect()
    }

    #[test]
    fn queueing_delay_and_offset() {
        let probes = record(&[(10, 20), (12, 21), (15, 25)], 1_000_000);
        let owd = one_way_delay_ms(&Transits::of(&probes)).unwrap();
        assert_eq!((owd.up.min, owd.up.median, owd.up.max), (0.0, 2.0, 5.0));
        assert_eq!(
            (owd.down.min, owd.down.median, owd.down.max),
            (0.0, 1.0, 5.0)
        );
        // θ = 1000 ms; min o_up = 10 + θ, min o_down = 20 − θ → θ̂ = θ − 5 ms.
        assert_eq!(owd.clock_offset_ms, 995.0);
        // min RTT = 30 ms → ±15 ms; the true error (5 ms) is inside it.
        assert_eq!(owd.clock_offset_error_ms, 15.0);
        assert_eq!(owd.reference, REFERENCE);
    }

    #[test]
    fn reflector_clock_behind_and_wrapping() {
        // Reflector clock 1.015 s behind the agent's: its counter wraps between probes 0 and 1.
        let base = 0u64.wrapping_sub(1_015_000);
        let probes = record(&[(10, 20), (12, 21), (15, 25)], base);
        let owd = one_way_delay_ms(&Transits::of(&probes)).unwrap();
        assert_eq!((owd.up.max, owd.down.max), (5.0, 5.0));
        assert_eq!(owd.clock_offset_ms, -1020.0);
        assert_eq!(owd.clock_offset_error_ms, 15.0);
    }

    #[test]
    fn odd_sum_keeps_the_half_microsecond() {
        // up 10.001 ms, down 20 ms: θ̂ = θ + (10_001 − 20_000)/2 µs = θ − 4999.5 µs.
        let mut probes = record(&[(10, 20)], 1_000_000);
        if let Some(r) = probes[0].reply.as_mut() {
            r.reflector_rx_us += 1;
        }
        let owd = one_way_delay_ms(&Transits::of(&probes)).unwrap();
        assert!((owd.clock_offset_ms - (1000.0 - 4.9995)).abs() < 1e-9);
    }

    #[test]
    fn nothing_received_gives_none() {
        let mut probes = record(&[(10, 20)], 0);
        probes[0].reply = None;
        assert!(one_way_delay_ms(&Transits::of(&probes)).is_none());
    }
}
