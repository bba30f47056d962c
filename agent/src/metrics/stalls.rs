//! Stalls: stretches where the listener hears nothing, three or more consecutive missing frames.
//!
//! "Missing" is lost or discarded by the 60 ms reference buffer. One or two missing 20 ms frames
//! are bridged by packet-loss concealment; from three (60 ms) on, concealment runs out and the
//! sound audibly cuts out.

use super::clock::ms;
use super::gilbert::loss_runs;
use super::saturating_u32;
use callwatch_proto::report::Stalls;

/// Shortest run of missing frames counted as a stall.
const MIN_STALL_FRAMES: usize = 3;

/// Stall figures for a per-frame "missing" pattern; `None` when nothing was sent.
pub(super) fn stalls(missing: &[bool], interval_us: u64) -> Option<Stalls> {
    if missing.is_empty() {
        return None;
    }
    let (count, longest) = loss_runs(missing)
        .filter(|&n| n >= MIN_STALL_FRAMES)
        .fold((0usize, 0usize), |(c, m), n| (c + 1, m.max(n)));
    Some(Stalls {
        count: saturating_u32(count),
        longest_ms: ms(longest as f64 * interval_us as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_three_or_more() {
        // runs of 2 (ignored), 3 and 5
        let m: Vec<bool> = ".XX.XXX.XXXXX".chars().map(|c| c == 'X').collect();
        let s = stalls(&m, 20_000).unwrap();
        assert_eq!((s.count, s.longest_ms), (2, 100.0));
        let s = stalls(&[true, true, false], 20_000).unwrap();
        assert_eq!((s.count, s.longest_ms), (0, 0.0));
        assert!(stalls(&[], 20_000).is_none());
    }
}
