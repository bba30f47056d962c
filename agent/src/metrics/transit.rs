//! Per-probe delays: the round-trip time and the two one-way transits of every reply.
//!
//! The round trip is measured on the agent's clock alone, minus the reflector's hold time on the
//! reflector's clock alone, so it needs no clock synchronisation. The one-way transits cross
//! clocks (`o_up = reflector_rx − sent`, `o_down = received − reflector_tx`) and so include the
//! unknown offset θ between them (`o_up = d_up + θ`, `o_down = d_down − θ`); they are expressed
//! relative to the first reply's, which keeps the arithmetic small and wrap-safe, and θ cancels in
//! every difference taken from them.

use super::clock::elapsed_us;
use super::ProbeRecord;

/// What one reply tells about the path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Transit {
    /// Round trip with the reflector's hold time removed, µs; never negative.
    pub rtt_us: i64,
    /// Upstream transit relative to the first reply's upstream transit, µs.
    pub up_us: i64,
    /// Downstream transit relative to the first reply's downstream transit, µs.
    pub down_us: i64,
}

/// The transits of a whole stream, indexed like its probes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Transits {
    pub per_probe: Vec<Option<Transit>>,
    /// Raw wrapping cross-clock transits of the first reply: the origin of `up_us` / `down_us`.
    pub up_origin: u64,
    pub down_origin: u64,
}

impl Transits {
    pub(super) fn of(probes: &[ProbeRecord]) -> Transits {
        let first = probes.iter().find_map(|p| p.reply.map(|r| (p, r)));
        let (up_origin, down_origin) = first.map_or((0, 0), |(p, r)| {
            (
                r.reflector_rx_us.wrapping_sub(p.sent_us),
                r.received_us.wrapping_sub(r.reflector_tx_us),
            )
        });
        let per_probe = probes
            .iter()
            .map(|p| {
                p.reply.map(|r| {
                    let elapsed = elapsed_us(p.sent_us, r.received_us);
                    // A hold time below zero is a reflector clock fault, not a negative delay.
                    let hold = elapsed_us(r.reflector_rx_us, r.reflector_tx_us).max(0);
                    Transit {
                        // Negative only if the agent's clock stepped back or the reflector
                        // claims to have held the probe longer than the whole round trip:
                        // clamp, since no real round trip is shorter than zero.
                        rtt_us: elapsed.saturating_sub(hold).max(0),
                        up_us: elapsed_us(up_origin, r.reflector_rx_us.wrapping_sub(p.sent_us)),
                        down_us: elapsed_us(
                            down_origin,
                            r.received_us.wrapping_sub(r.reflector_tx_us),
                        ),
                    }
                })
            })
            .collect();
        Transits {
            per_probe,
            up_origin,
            down_origin,
        }
    }

    /// Replies in sequence order.
    pub(super) fn received(&self) -> impl Iterator<Item = &Transit> + '_ {
        self.per_probe.iter().flatten()
    }

    /// Round-trip time per probe, `None` where no reply came back.
    pub(super) fn rtt_us(&self) -> Vec<Option<i64>> {
        self.per_probe.iter().map(|t| t.map(|t| t.rtt_us)).collect()
    }

    /// Smallest round trip seen, µs.
    pub(super) fn min_rtt_us(&self) -> Option<i64> {
        self.received().map(|t| t.rtt_us).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplyRecord;
    use super::*;

    fn probe(seq: u32, sent: u64, rx: u64, tx: u64, received: u64) -> ProbeRecord {
        ProbeRecord {
            seq,
            scheduled_us: sent,
            sent_us: sent,
            len: 100,
            reply: Some(ReplyRecord {
                reflector_rx_us: rx,
                reflector_tx_us: tx,
                received_us: received,
            }),
        }
    }

    #[test]
    fn hold_time_is_removed_and_offset_cancels() {
        // Reflector clock 5 s ahead; up 10 ms, hold 1 ms, down 20 ms; then up 12, down 25.
        let theta = 5_000_000;
        let p0 = probe(0, 1_000, 1_000 + 10_000 + theta, 12_000 + theta, 32_000);
        let p1 = probe(1, 21_000, 21_000 + 12_000 + theta, 34_000 + theta, 59_000);
        let t = Transits::of(&[p0, p1]);
        let a = t.per_probe[0].unwrap();
        let b = t.per_probe[1].unwrap();
        assert_eq!(a.rtt_us, 30_000);
        assert_eq!(b.rtt_us, 37_000);
        assert_eq!((a.up_us, a.down_us), (0, 0));
        assert_eq!((b.up_us, b.down_us), (2_000, 5_000));
    }

    #[test]
    fn reflector_clock_wrapping_mid_test_changes_nothing() {
        let base = u64::MAX - 15_000; // wraps between the two receptions
        let p0 = probe(
            0,
            1_000,
            base.wrapping_add(11_000),
            base.wrapping_add(12_000),
            32_000,
        );
        let p1 = probe(
            1,
            21_000,
            base.wrapping_add(33_000),
            base.wrapping_add(34_000),
            59_000,
        );
        let t = Transits::of(&[p0, p1]);
        let b = t.per_probe[1].unwrap();
        assert_eq!((b.rtt_us, b.up_us, b.down_us), (37_000, 2_000, 5_000));
    }

    #[test]
    fn impossible_round_trips_clamp_to_zero() {
        // Received before sent (agent clock stepped back), and a hold longer than the trip.
        let t = Transits::of(&[probe(0, 50_000, 7, 9, 40_000), probe(1, 0, 0, 99_999, 10)]);
        assert_eq!(t.per_probe[0].unwrap().rtt_us, 0);
        assert_eq!(t.per_probe[1].unwrap().rtt_us, 0);
    }
}
