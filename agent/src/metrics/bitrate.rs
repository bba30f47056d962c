//! Bit rates offered and delivered per direction, in kbit/s of UDP payload.
//!
//! Only UDP payload is counted (no IP/UDP headers): the figure compares arms with equal packet
//! sizes and is what the probe sizes imitate. The duration is the nominal one,
//! `packets sent × interval`, so a stream that kept its schedule has offered rate = size/interval.
//! Upstream delivery uses the reflector's (clamped) count times the mean probe size, since we do
//! not know which probes it received.

use super::loss::Delivery;
use super::ProbeRecord;
use callwatch_proto::report::Bitrate;

/// `None` when the nominal duration is zero (nothing sent, or no interval).
pub(super) fn bitrate_kbps(
    probes: &[ProbeRecord],
    delivery: &Delivery,
    interval_us: u64,
) -> Option<Bitrate> {
    let duration_us = probes.len() as f64 * interval_us as f64;
    if duration_us <= 0.0 {
        return None;
    }
    // bits per µs × 1000 = kbit/s
    let kbps = |bytes: f64| bytes * 8.0 * 1000.0 / duration_us;
    let sent_bytes: u64 = probes.iter().map(|p| u64::from(p.len)).sum();
    let received_bytes: u64 = probes
        .iter()
        .filter(|p| p.reply.is_some())
        .map(|p| u64::from(p.len))
        .sum();
    let mean_len = sent_bytes as f64 / probes.len() as f64;
    Some(Bitrate {
        offered: kbps(sent_bytes as f64),
        // Without the reflector's count, what came back is what surely arrived: a lower bound.
        delivered_up: kbps(delivery.reflected.unwrap_or(delivery.received) as f64 * mean_len),
        delivered_down: kbps(received_bytes as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::super::ReplyRecord;
    use super::*;

    #[test]
    fn one_second_of_172_byte_probes() {
        // 50 × 172 B in 1 s = 68.8 kbit/s; 45 reflected → 61.92; 40 back → 55.04.
        let probes: Vec<ProbeRecord> = (0..50u32)
            .map(|i| ProbeRecord {
                seq: i,
                scheduled_us: u64::from(i) * 20_000,
                sent_us: u64::from(i) * 20_000,
                len: 172,
                reply: (i < 40).then_some(ReplyRecord {
                    reflector_rx_us: 0,
                    reflector_tx_us: 0,
                    received_us: 0,
                }),
            })
            .collect();
        let d = Delivery::new(50, 40, Some(45));
        let b = bitrate_kbps(&probes, &d, 20_000).unwrap();
        assert!((b.offered - 68.8).abs() < 1e-9);
        assert!((b.delivered_up - 61.92).abs() < 1e-9);
        assert!((b.delivered_down - 55.04).abs() < 1e-9);
        assert!(bitrate_kbps(&probes, &d, 0).is_none());
        assert!(bitrate_kbps(&[], &Delivery::new(0, 0, None), 20_000).is_none());
    }
}
