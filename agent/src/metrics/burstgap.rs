//! RFC 3611 burst and gap densities (Gmin = 16), by the algorithm of its Appendix A.2.
//!
//! RFC 3611 section 4.7.2 splits a stream into bursts (stretches with a high proportion of loss,
//! delimited by losses and containing no run of Gmin or more received packets) and gaps (the
//! rest). Appendix A.2 estimates them online with a four-state Markov model: 1 = received in a
//! gap, 2 = received in a burst, 3 = lost in a burst, 4 = isolated loss in a gap, counting the
//! transitions c11, c13, c14, c22, c23, c33 (c31 = c13 and c32 = c23 follow from them).
//!
//! Per loss, with `pkt` packets received since the previous loss and `lost` losses in the current
//! burst: if `pkt ≥ Gmin` the loss follows a gap, so c11 += pkt, and the loss is c14 (isolated,
//! when the previous burst held a single loss) or c13 (a new burst); `lost` restarts at 1.
//! Otherwise `lost` grows and the loss is c33 (right after another loss) or c23 with
//! c22 += pkt − 1 (after a few received packets inside the burst).
//!
//! Then `gap_density = c14/(c11 + c14)`, `p32 = c32/(c31 + c32 + c33)`,
//! `p23 = 1 − c22/(c22 + c23)` (1 when there were no c22/c23 transitions) and
//! `burst_density = p23/(p23 + p32)`. RFC 3611 scales both to 0..255; we report fractions 0..=1.
//!
//! End of stream: the RFC's algorithm runs for a live call and counts a received run only when
//! the next loss arrives. Our stream has ended, and packets after the last loss are in a gap by
//! the section 4.7.2 definitions (a burst ends with a lost packet), so they are added to c11.

/// RFC 3611 minimum gap length, its recommended default (section 4.7.2).
pub(super) const GMIN: u64 = 16;

/// Appendix A.2 transition counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub c11: u64,
    pub c13: u64,
    pub c14: u64,
    pub c22: u64,
    pub c23: u64,
    pub c33: u64,
}

impl Counters {
    /// Runs the Appendix A.2 algorithm over a per-probe "lost" pattern in sequence order.
    pub(super) fn count(lost_pattern: &[bool]) -> Counters {
        let mut c = Counters::default();
        let mut pkt: u64 = 0;
        let mut lost: u64 = 0;
        for &is_lost in lost_pattern {
            if !is_lost {
                pkt += 1;
                continue;
            }
            if pkt >= GMIN {
                if lost == 1 {
                    c.c14 += 1;
                } else {
                    c.c13 += 1;
                }
                lost = 1;
                c.c11 += pkt;
            } else {
                lost += 1;
                if pkt == 0 {
                    c.c33 += 1;
                } else {
                    c.c23 += 1;
                    c.c22 += pkt - 1;
                }
            }
            pkt = 0;
        }
        c.c11 += pkt;
        c
    }

    /// Fraction of gap packets that were lost; 0 with no gap packets.
    pub(super) fn gap_density(&self) -> f64 {
        ratio(self.c14, self.c11 + self.c14)
    }

    /// Fraction of burst packets that were lost (steady state of states 2 and 3); 0 with no burst.
    pub(super) fn burst_density(&self) -> f64 {
        let (c31, c32) = (self.c13, self.c23);
        if c31 + c32 + self.c33 == 0 {
            return 0.0;
        }
        let p32 = ratio(c32, c31 + c32 + self.c33);
        // 1 when there were no c22/c23 transitions: `ratio` gives 0 then.
        let p23 = 1.0 - ratio(self.c22, self.c22 + self.c23);
        if p23 + p32 > 0.0 {
            (p23 / (p23 + p32)).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(runs: &[(char, usize)]) -> Vec<bool> {
        runs.iter().flat_map(|&(c, n)| vec![c == 'L'; n]).collect()
    }

    #[test]
    fn hand_worked_pattern() {
        // 20 R, L, 20 R, L, 3 R, L, L, 20 R, L, 20 R  (Gmin = 16)
        //   L after 20 R, lost = 0 → c13 = 1, c11 = 20, lost = 1
        //   L after 20 R, lost = 1 → c14 = 1, c11 = 40
        //   L after  3 R           → lost = 2, c23 = 1, c22 = 2
        //   L after  0 R           → lost = 3, c33 = 1
        //   L after 20 R, lost = 3 → c13 = 2, c11 = 60, lost = 1
        //   end: trailing 20 R     → c11 = 80
        let p = pattern(&[
            ('R', 20),
            ('L', 1),
            ('R', 20),
            ('L', 1),
            ('R', 3),
            ('L', 2),
            ('R', 20),
            ('L', 1),
            ('R', 20),
        ]);
        let c = Counters::count(&p);
        assert_eq!(
            c,
            Counters {
                c11: 80,
                c13: 2,
                c14: 1,
                c22: 2,
                c23: 1,
                c33: 1
            }
        );
        // gap: 1/81. burst: p32 = 1/(2+1+1) = 1/4, p23 = 1 − 2/3 = 1/3 → (1/3)/(7/12) = 4/7.
        assert!((c.gap_density() - 1.0 / 81.0).abs() < 1e-12);
        assert!((c.burst_density() - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn single_losses_after_gaps_and_a_burst_with_long_inner_gaps() {
        // 20 R, L, 20 R: the loss follows a gap with no burst before it (lost = 0), so it opens
        // a burst: c13 = 1, c11 = 40, nothing else. Gap density 0/40; the burst is that one lost
        // packet: p32 = 0/1, p23 = 1 (no c22/c23) → burst density 1/(1 + 0) = 1.
        let p = pattern(&[('R', 20), ('L', 1), ('R', 20)]);
        let c = Counters::count(&p);
        assert_eq!(
            c,
            Counters {
                c11: 40,
                c13: 1,
                ..Counters::default()
            }
        );
        assert_eq!((c.gap_density(), c.burst_density()), (0.0, 1.0));
        // L, 10 R, L, 10 R, L (every gap shorter than Gmin, so one burst): c33 = 1 (the first
        // loss, after 0 received), then twice c23 = +1 with c22 += 9: c22 = 18, c23 = 2.
        // p32 = 2/(0 + 2 + 1) = 2/3, p23 = 1 − 18/20 = 1/10 → density (1/10)/(1/10 + 2/3) = 3/23.
        let p = pattern(&[('L', 1), ('R', 10), ('L', 1), ('R', 10), ('L', 1)]);
        let c = Counters::count(&p);
        assert_eq!((c.c33, c.c23, c.c22, c.c13, c.c11), (1, 2, 18, 0, 0));
        assert!((c.burst_density() - 3.0 / 23.0).abs() < 1e-12);
        assert_eq!(c.gap_density(), 0.0);
    }

    #[test]
    fn no_loss_and_all_loss() {
        let c = Counters::count(&[false; 40]);
        assert_eq!((c.c11, c.gap_density(), c.burst_density()), (40, 0.0, 0.0));
        // Every loss follows a loss (or the start): all c33, p32 = 0, p23 = 1 → density 1.
        let c = Counters::count(&[true; 10]);
        assert_eq!((c.c33, c.gap_density(), c.burst_density()), (10, 0.0, 1.0));
        assert_eq!(Counters::count(&[]), Counters::default());
    }
}
