//! ITU-T G.107 E-model (narrowband): transmission rating R and MOS for the call a stream implies.
//!
//! `R = R0 − Is − Id − Ie,eff + A` with every parameter but delay and loss at its G.107 default:
//! `R0 − Is` (and the default talker-echo terms) give 93.2, A = 0 (the advantage factor is a
//! policy choice, not a measurement), so `R = 93.2 − Idd − Ie,eff`. Talker echo is taken as
//! perfectly cancelled, as in any VoIP client.
//!
//! Round-trip model (see `playout`): the call is mouth → agent → reflector → agent → ear, both
//! ends on the volunteer's network, so the mouth-to-ear delay is
//! `Ta = median RTT + 60 ms fixed buffer + packetisation (one interval) + codec look-ahead`,
//! and the loss `Ppl` is the percentage of sent frames missing behind that 60 ms buffer (lost or
//! late), with `BurstR` fitted by the Gilbert estimator to that same missing-frame pattern.
//!
//! Everything codec-specific is in [`CODEC_TABLE`].

use super::clock::ms;
use super::playout::REFERENCE_BUFFER_US;
use super::Codec;

/// One codec's E-model constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CodecRow {
    pub codec: Codec,
    /// Name in `mos_basis`.
    pub name: &'static str,
    /// Equipment impairment factor Ie.
    pub ie: f64,
    /// Packet-loss robustness factor Bpl.
    pub bpl: f64,
    /// Algorithmic look-ahead beyond the frame itself, ms.
    pub lookahead_ms: f64,
    /// Where Ie and Bpl come from, as written into `mos_basis`; `"provisional"` when no standard
    /// publishes them.
    pub basis: &'static str,
}

/// The codec table: the one place codec constants live. Index = [`row_index`].
pub(super) const CODEC_TABLE: [CodecRow; 2] = [
    // ITU-T G.113 Appendix I: G.711 Ie = 0, Bpl = 25.1 with packet-loss concealment
    // (G.711 Appendix I; 4.3 without). Look-ahead 0.25 ms per the project's measurement notes
    // (G.711 itself has none; note that G.711 Appendix I PLC adds 3.75 ms of its own delay,
    // not counted here).
    CodecRow {
        codec: Codec::G711,
        name: "g711",
        ie: 0.0,
        bpl: 25.1,
        lookahead_ms: 0.25,
        basis: "g113-appendix-i",
    },
    // Opus: the ITU publishes no Ie or Bpl for it (narrowband or wideband), so these are
    // provisional and `mos_basis` says so. We reuse the G.711-with-PLC row rather than invent a
    // difference we cannot source. This is a judgement, not a measurement: at the bitrates voice
    // calls use, Opus is not expected to sound worse than G.711 on a narrowband scale (Ie = 0 is
    // that scale's ceiling, so any wideband benefit cannot show anyway), and its built-in
    // concealment is not expected to be less robust than G.711 Appendix I's (Bpl = 25.1; in-band
    // FEC, which would raise it, is not modelled). Replace both when a published figure exists.
    // The one codec-specific term left is the look-ahead: 6.5 ms (RFC 6716: 26.5 ms algorithmic
    // delay with 20 ms frames, i.e. frame + 6.5 ms).
    CodecRow {
        codec: Codec::Opus,
        name: "opus",
        ie: 0.0,
        bpl: 25.1,
        lookahead_ms: 6.5,
        basis: "provisional",
    },
];

/// Position of a codec's row in [`CODEC_TABLE`]; exhaustive, so a new codec needs a row to compile.
const fn row_index(codec: Codec) -> usize {
    match codec {
        Codec::G711 => 0,
        Codec::Opus => 1,
    }
}

pub(super) fn codec_row(codec: Codec) -> CodecRow {
    // In bounds: row_index only yields indices of CODEC_TABLE (checked by a test).
    CODEC_TABLE[row_index(codec)]
}

/// G.107 rating with default parameters except delay and loss: `R0 − Is` and the default echo
/// terms (G.107 clause 7.7: the defaults give R = 93.2).
const R_DEFAULT: f64 = 93.2;
/// G.107 Idd parameters: delay from which Idd starts (mT, ms) and its sharpness (sT); the
/// defaults, for a conversation of ordinary interactivity.
const IDD_MT_MS: f64 = 100.0;
const IDD_ST: f64 = 1.0;

/// Delay impairment Idd, ITU-T G.107 (12/2011 and later) clause 7.4 (clause 3.4 in earlier
/// editions): 0 for `Ta ≤ mT`, else with `X = log2(Ta/mT)`,
/// `Idd = 25·{(1 + X^(6·sT))^(1/(6·sT)) − 3·(1 + (X/3)^(6·sT))^(1/(6·sT)) + 2}`.
pub(super) fn idd(ta_ms: f64) -> f64 {
    if ta_ms.is_nan() || ta_ms <= IDD_MT_MS {
        return 0.0;
    }
    if ta_ms.is_infinite() {
        // The limit as Ta → ∞ (both roots approach X and cancel); the formula itself gives ∞ − ∞.
        return 50.0;
    }
    let x = (ta_ms / IDD_MT_MS).log2();
    let k = 6.0 * IDD_ST;
    25.0 * ((1.0 + x.powf(k)).powf(1.0 / k) - 3.0 * (1.0 + (x / 3.0).powf(k)).powf(1.0 / k) + 2.0)
}

/// Effective equipment impairment, G.107 clause 7.5: `Ie + (95 − Ie)·Ppl/(Ppl/BurstR + Bpl)`,
/// Ppl in percent. BurstR below 1 (loss spread more evenly than random) is outside the model,
/// which defines 1 as random loss, and is raised to 1.
pub(super) fn ie_eff(ie: f64, bpl: f64, ppl_percent: f64, burst_ratio: f64) -> f64 {
    let ppl = ppl_percent.clamp(0.0, 100.0);
    let burst_ratio = if burst_ratio >= 1.0 { burst_ratio } else { 1.0 };
    ie + (95.0 - ie) * ppl / (ppl / burst_ratio + bpl)
}

/// G.107 Annex B: MOS from R, 1 below 0, 4.5 above 100, `1 + 0.035R + R(R−60)(100−R)·7·10⁻⁶`
/// between; clamped into 1..=4.5.
pub(super) fn mos(r: f64) -> f64 {
    if r.is_nan() || r < 0.0 {
        1.0
    } else if r > 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6).clamp(1.0, 4.5)
    }
}

/// An E-model rating and how it was obtained.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Rating {
    /// R on the 0..=100 scale of Annex B (below 0 means the same as 0: MOS 1).
    pub r: f64,
    pub mos: f64,
    /// e.g. `g107-nb;codec=opus;ie=0;bpl=25.1;provisional`.
    pub basis: String,
}

/// Rates the call: `median_rtt_ms` is the network part of Ta, `ppl_percent` the frames missing
/// behind the 60 ms buffer and `burst_ratio` their Gilbert BurstR.
pub(super) fn rate(
    codec: Codec,
    median_rtt_ms: f64,
    interval_ms: f64,
    ppl_percent: f64,
    burst_ratio: f64,
) -> Rating {
    let row = codec_row(codec);
    let buffer_ms = ms(REFERENCE_BUFFER_US as f64);
    let ta_ms = median_rtt_ms + buffer_ms + interval_ms + row.lookahead_ms;
    let r = R_DEFAULT - idd(ta_ms) - ie_eff(row.ie, row.bpl, ppl_percent, burst_ratio);
    let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 100.0) };
    Rating {
        r,
        mos: mos(r),
        basis: format!(
            "g107-nb;codec={};ie={};bpl={};{}",
            row.name, row.ie, row.bpl, row.basis
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn table_rows_sit_at_their_index() {
        for codec in [Codec::G711, Codec::Opus] {
            assert_eq!(codec_row(codec).codec, codec);
        }
    }

    #[test]
    fn idd_by_hand() {
        assert_eq!(idd(0.0), 0.0);
        assert_eq!(idd(100.0), 0.0);
        // Ta = 200: X = 1; 25·(2^(1/6) − 3·(1 + 1/729)^(1/6) + 2)
        //   = 25·(1.1224620 − 3.0006856 + 2) = 3.04441
        assert!(close(idd(200.0), 3.044_414, 1e-5), "{}", idd(200.0));
        // Ta = 400: X = 2; 25·(65^(1/6) − 3·(1 + 64/729)^(1/6) + 2)
        //   = 25·(2.0051747 − 3.0423711 + 2) = 24.07009
        assert!(close(idd(400.0), 24.070_089, 1e-5), "{}", idd(400.0));
        // Bounded for absurd delays (→ 50 as Ta → ∞) and never NaN.
        assert!(idd(1e18) < 50.0);
        assert_eq!(idd(f64::INFINITY), 50.0);
        assert_eq!(idd(f64::NAN), 0.0);
    }

    #[test]
    fn mos_polynomial_by_hand() {
        // 1 + 0.035R + R(R−60)(100−R)·7e-6
        assert!(close(mos(50.0), 2.575, 1e-12)); // 2.75 − 0.175
        assert!(close(mos(70.0), 3.597, 1e-12)); // 3.45 + 0.147
        assert!(close(mos(80.0), 4.024, 1e-12)); // 3.8 + 0.224
        assert!(close(mos(90.0), 4.339, 1e-12)); // 4.15 + 0.189
        assert!(close(mos(93.2), 4.409_285_824, 1e-9));
        assert_eq!(
            (mos(-5.0), mos(0.0), mos(100.0), mos(120.0)),
            (1.0, 1.0, 4.5, 4.5)
        );
        assert_eq!(mos(f64::NAN), 1.0);
    }

    #[test]
    fn ie_eff_examples() {
        // G.711, Ppl 2 %, random: 95·2/(2 + 25.1) = 7.01107
        assert!(close(ie_eff(0.0, 25.1, 2.0, 1.0), 190.0 / 27.1, 1e-12));
        // Same loss in bursts of BurstR 2: 95·2/(1 + 25.1) = 7.27969
        assert!(close(ie_eff(0.0, 25.1, 2.0, 2.0), 190.0 / 26.1, 1e-12));
        // G.729A-like row (Ie 11, Bpl 19), Ppl 5 %: 11 + 84·5/(5 + 19) = 28.5
        assert!(close(ie_eff(11.0, 19.0, 5.0, 1.0), 28.5, 1e-12));
        assert_eq!(ie_eff(0.0, 25.1, 0.0, 1.0), 0.0);
        // BurstR < 1 is raised to 1.
        assert_eq!(ie_eff(0.0, 25.1, 2.0, 0.5), ie_eff(0.0, 25.1, 2.0, 1.0));
    }

    #[test]
    fn clean_g711_call() {
        // Median RTT 10 ms: Ta = 10 + 60 + 20 + 0.25 = 90.25 ms ≤ 100 → Idd = 0; no loss.
        let r = rate(Codec::G711, 10.0, 20.0, 0.0, 1.0);
        assert!(close(r.r, 93.2, 1e-12));
        assert!(close(r.mos, 4.409, 1e-3));
        assert_eq!(r.basis, "g107-nb;codec=g711;ie=0;bpl=25.1;g113-appendix-i");
    }

    #[test]
    fn opus_is_marked_provisional_and_pays_its_look_ahead() {
        let r = rate(Codec::Opus, 200.0, 20.0, 1.0, 1.0);
        assert_eq!(r.basis, "g107-nb;codec=opus;ie=0;bpl=25.1;provisional");
        // Ta = 200 + 60 + 20 + 6.5 = 286.5 ms
        let expected = 93.2 - idd(286.5) - 95.0 / 26.1;
        assert!(close(r.r, expected, 1e-12));
    }

    #[test]
    fn rating_stays_on_scale() {
        let r = rate(Codec::G711, 1e15, 20.0, 100.0, 50.0);
        assert!((0.0..=100.0).contains(&r.r));
        assert_eq!(r.mos, 1.0);
    }
}
