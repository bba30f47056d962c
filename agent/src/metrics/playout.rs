//! Playout-buffer simulation: which frames a receiver would have had to play as silence.
//!
//! The model is the call a volunteer would have through the reflector: mouth → agent → reflector
//! → agent → ear, so a frame's network transit is its round-trip time (reflector hold removed)
//! and "sent" is the agent's actual send time. A frame is missing at playout if its reply never
//! came back or came back after its playout deadline. All fractions are of frames *sent*.
//!
//! Fixed buffer of B: `deadline_i = sent_i + min RTT + B`, so a frame is late when
//! `rtt_i − min RTT > B` (arriving exactly on the deadline still plays).
//!
//! Adaptive buffer: Ramjee, Kurose, Towsley, Schulzrinne, "Adaptive playout mechanisms for
//! packetized audio applications in wide-area networks" (INFOCOM 1994), algorithm 1. For every
//! received frame with delay n: `d̂ ← α·d̂ + (1−α)·n`, then `v̂ ← α·v̂ + (1−α)·|d̂ − n|`; the playout
//! delay `d̂ + 4·v̂` is fixed at the start of each talkspurt and held for all its frames. Our probe
//! stream is continuous, so every 1 s of frames (`1 s / interval`, 50 at 20 ms) is treated as a
//! talkspurt. Choices the paper leaves open, made here:
//! - the estimator is primed with the first reply (`d̂ = n₁, v̂ = 0`); with α this close to 1 it
//!   then takes tens of seconds to settle, as the original does;
//! - a talkspurt's playout delay is set when its first frame arrives, after that frame updated the
//!   estimate, and is never below that frame's own delay (a receiver cannot play a frame before
//!   it has it, and it anchors the talkspurt's schedule on that frame);
//! - frames are processed in sequence order rather than arrival order.
//!
//! `adaptive_delay_ms` is the mean playout delay over all frames of talkspurts that had one,
//! measured from send: total delay through network and buffer, comparable to `min RTT + B`.

use super::clock::ms;
use super::loss::fraction;
use callwatch_proto::report::JitterBuffer;

/// The buffer the stall and E-model figures assume: 60 ms, a common fixed jitter-buffer depth
/// for 20 ms voice frames (three frames).
pub(super) const REFERENCE_BUFFER_US: i64 = 60_000;
/// Ramjee et al. (1994) smoothing factor for algorithm 1.
const RAMJEE_ALPHA: f64 = 0.998_002;
/// Ramjee et al. (1994): playout delay is the mean estimate plus four variation estimates.
const RAMJEE_VARIATION_WEIGHT: f64 = 4.0;
/// Length of the pseudo-talkspurt over which the adaptive buffer holds its delay.
const TALKSPURT_US: u64 = 1_000_000;
/// Frames per talkspurt when the interval is 0 and cannot divide 1 s: what 20 ms framing gives.
const FALLBACK_FRAMES_PER_TALKSPURT: usize = 50;

/// Per frame: missing at playout behind a fixed buffer of `buffer_us` (lost, or late).
pub(super) fn missing_with_fixed_buffer(rtt_us: &[Option<i64>], buffer_us: i64) -> Vec<bool> {
    let min = rtt_us.iter().flatten().min().copied();
    rtt_us
        .iter()
        .map(|r| match (r, min) {
            (Some(r), Some(min)) => r.saturating_sub(min) > buffer_us,
            _ => true,
        })
        .collect()
}

/// What the adaptive buffer did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Adaptive {
    /// Frames lost or late.
    pub missing: usize,
    /// Mean playout delay over frames of talkspurts that had one, µs.
    pub mean_delay_us: Option<f64>,
}

/// Ramjee et al. algorithm 1 over per-frame round-trip times (see the module comment).
pub(super) fn adaptive(rtt_us: &[Option<i64>], frames_per_talkspurt: usize) -> Adaptive {
    let mut estimate: Option<(f64, f64)> = None;
    let mut missing = 0usize;
    let (mut delay_sum, mut delay_frames) = (0.0f64, 0usize);
    for talkspurt in rtt_us.chunks(frames_per_talkspurt.max(1)) {
        let mut playout: Option<f64> = None;
        for frame in talkspurt {
            let Some(n) = frame.map(|n| n as f64) else {
                missing += 1;
                continue;
            };
            let (d, v) = match estimate {
                None => (n, 0.0),
                Some((d, v)) => {
                    let d = RAMJEE_ALPHA * d + (1.0 - RAMJEE_ALPHA) * n;
                    (d, RAMJEE_ALPHA * v + (1.0 - RAMJEE_ALPHA) * (d - n).abs())
                }
            };
            estimate = Some((d, v));
            let p = *playout.get_or_insert((d + RAMJEE_VARIATION_WEIGHT * v).max(n));
            if n > p {
                missing += 1;
            }
        }
        if let Some(p) = playout {
            delay_sum += p * talkspurt.len() as f64;
            delay_frames += talkspurt.len();
        }
    }
    Adaptive {
        missing,
        mean_delay_us: (delay_frames > 0).then(|| delay_sum / delay_frames as f64),
    }
}

/// Frames in one pseudo-talkspurt of 1 s.
pub(super) fn frames_per_talkspurt(interval_us: u64) -> usize {
    match TALKSPURT_US.checked_div(interval_us) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
        None => FALLBACK_FRAMES_PER_TALKSPURT,
    }
}

/// Fraction of sent frames missing behind a fixed buffer of `buffer_us`.
pub(super) fn missing_fraction(rtt_us: &[Option<i64>], buffer_us: i64) -> f64 {
    let missing = missing_with_fixed_buffer(rtt_us, buffer_us);
    let count = missing.iter().filter(|&&m| m).count();
    fraction(count as u64, missing.len() as u64)
}

/// The `jitter_buffer` figures; `None` when no reply came back (no delay to buffer against).
pub(super) fn jitter_buffer(rtt_us: &[Option<i64>], interval_us: u64) -> Option<JitterBuffer> {
    let adaptive = adaptive(rtt_us, frames_per_talkspurt(interval_us));
    Some(JitterBuffer {
        fixed_40ms: missing_fraction(rtt_us, 40_000),
        fixed_60ms: missing_fraction(rtt_us, REFERENCE_BUFFER_US),
        fixed_100ms: missing_fraction(rtt_us, 100_000),
        adaptive: fraction(adaptive.missing as u64, rtt_us.len() as u64),
        adaptive_delay_ms: ms(adaptive.mean_delay_us?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buffers_on_a_hand_pattern() {
        // RTT 50, 50, 95, 115, lost, 200 ms; min 50 → excess 0, 0, 45, 65, –, 150.
        let rtt = [
            Some(50_000),
            Some(50_000),
            Some(95_000),
            Some(115_000),
            None,
            Some(200_000),
        ];
        assert_eq!(missing_fraction(&rtt, 40_000), 4.0 / 6.0);
        assert_eq!(missing_fraction(&rtt, 60_000), 3.0 / 6.0);
        assert_eq!(missing_fraction(&rtt, 100_000), 2.0 / 6.0);
        // Exactly on the deadline plays.
        assert_eq!(missing_fraction(&[Some(0), Some(60_000)], 60_000), 0.0);
    }

    #[test]
    fn adaptive_on_a_steady_path_discards_nothing() {
        let rtt = vec![Some(50_000); 120];
        let a = adaptive(&rtt, 50);
        assert_eq!(a.missing, 0);
        assert_eq!(a.mean_delay_us, Some(50_000.0));
    }

    #[test]
    fn adaptive_by_hand() {
        // Two frames per talkspurt; delays 100, 200 | 100, 100 µs.
        // Talkspurt 1: prime d = 100, v = 0 → playout 100; frame 2 (200) is late.
        //   d = 100 + 0.001998·100 = 100.1998, v = 0.001998·99.8002 = 0.19940...
        // Talkspurt 2: d = 100.1994008, v = 0.1994008 → playout 100.9970040, both frames play.
        let rtt = [Some(100), Some(200), Some(100), Some(100)];
        let a = adaptive(&rtt, 2);
        assert_eq!(a.missing, 1);
        let mean = a.mean_delay_us.unwrap();
        assert!((mean - 100.498_502).abs() < 1e-5, "{mean}");
    }

    #[test]
    fn talkspurt_length_follows_the_interval() {
        assert_eq!(frames_per_talkspurt(20_000), 50);
        assert_eq!(frames_per_talkspurt(30_000), 33);
        assert_eq!(frames_per_talkspurt(0), 50);
        assert_eq!(frames_per_talkspurt(u64::MAX), 1);
    }

    #[test]
    fn nothing_received() {
        assert!(jitter_buffer(&[None, None], 20_000).is_none());
        assert!(jitter_buffer(&[], 20_000).is_none());
        assert_eq!(
            missing_with_fixed_buffer(&[None, None], 60_000),
            vec![true, true]
        );
    }
}
