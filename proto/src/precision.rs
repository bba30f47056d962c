//! The precision every published figure carries: one rule per kind of quantity, written down
//! once, and the one rounding that applies it (issue #16 item 4).
//!
//! | quantity | unit | published to | why |
//! |---|---|---|---|
//! | [`Precision::Millis`]: RTT, jitter | ms | 0.01 ms | The clocks are µs (kernel receive timestamps), so 0.001 ms is the finest step any figure could honestly have; but an aggregate's quantile comes from a sketch within 1 % of the exact value, which is ≥ 0.01 ms for every delay above 1 ms, and a difference of 0.01 ms is far below anything a call notices. |
//! | [`Precision::Fraction`]: loss, loss up/down, shares of tests | fraction 0..1 | 0.0001 (0.01 %) | One lost probe in a 30 s voice call (1,500 probes) is 0.0667 %; 0.01 % tells it from none and from two. A share of tests resolves one test in 10,000. |
//! | [`Precision::Mos`]: MOS | 1..4.5 | 0.01 | ITU-T G.107 quotes MOS to two decimals; the E-model's own inputs (codec table constants) carry no more. |
//! | [`Precision::RFactor`]: R-factor | 0..100 | 0.1 | R is MOS's input on a scale ~22× wider; 0.1 of R is finer than 0.01 of MOS everywhere. |
//! | [`Precision::Count`]: stall counts and their quantiles | count | 1 | A count is a whole number (a quantile of counts is one of the counts). |
//!
//! [`FIELDS`] names each published field's rule. Rounding happens only where a figure is
//! published (the aggregation API's JSON and CSV, the dashboard, the agent's text): a signed
//! report body is evidence and keeps every digit, and detection, the k threshold and the
//! sketches work at full precision.
//!
//! [`Precision::round`] is the decimal rounding of the exact binary value (what std's `{:.N}`
//! formatting computes, ties to even), so `0.1 + 0.2` publishes as `0.3` and a rounded value
//! prints with at most its rule's decimals, never as `0.08980000000000001`.

use serde::{Serialize, Serializer};

/// 2^40: below it a product's rounding error is at most 2^-13.
const TWO_TO_40: f64 = 1_099_511_627_776.0;

/// A rule: how many decimals one kind of published quantity carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Delays and jitter in ms: 0.01 ms.
    Millis,
    /// Loss and shares as fractions 0..1: 0.0001 (0.01 %).
    Fraction,
    /// Mean opinion score: 0.01.
    Mos,
    /// E-model R-factor: 0.1.
    RFactor,
    /// Counts: whole numbers.
    Count,
}

/// Every published figure by its field name (as the API, the CSV's column prefix and the report
/// schema spell it) and its rule.
pub const FIELDS: [(&str, Precision); 11] = [
    ("rtt_ms", Precision::Millis),
    ("jitter_up_ms", Precision::Millis),
    ("jitter_down_ms", Precision::Millis),
    ("loss", Precision::Fraction),
    ("loss_up", Precision::Fraction),
    ("loss_down", Precision::Fraction),
    ("mos", Precision::Mos),
    ("stalls", Precision::Count),
    ("differentiated_share", Precision::Fraction),
    ("blocked_share", Precision::Fraction),
    ("r_factor", Precision::RFactor),
];

/// The rule of the published field `name`, if it is one of [`FIELDS`].
pub fn of(name: &str) -> Option<Precision> {
    FIELDS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

impl Precision {
    /// Decimals after the point.
    pub const fn decimals(self) -> usize {
        match self {
            Precision::Millis | Precision::Mos => 2,
            Precision::Fraction => 4,
            Precision::RFactor => 1,
            Precision::Count => 0,
        }
    }

    /// The rounding step, `10^-decimals`.
    pub fn step(self) -> f64 {
        // decimals() ≤ 4, so the power is exact.
        10f64.powi(-(self.decimals() as i32))
    }

    /// `x` rounded to this rule, or `None` when `x` is not finite (a figure that has no value).
    /// Never `-0`: a tiny negative rounds to `0`.
    pub fn round(self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        // The decimal rounding of the exact x is d / 10^N with d the integer nearest x·10^N.
        // fl(x·10^N) is within 2^-13 of x·10^N while below 2^40, so unless it lies within
        // 2^-10 of a half its nearest integer is d; and d / 10^N (both exact in an f64, the
        // division correctly rounded) is the f64 nearest that decimal, as parsing its digits
        // gives. A published cell rounds 26 figures; this keeps the text below for the rest.
        let scale = self.scale();
        let y = x * scale;
        if y.abs() < TWO_TO_40 {
            let f = y - y.floor();
            if (f - 0.5).abs() > 1.0 / 1024.0 {
                // -0.0 + 0.0 is +0.0.
                return Some(y.round() / scale + 0.0);
            }
        }
        Some(self.round_by_text(x)? + 0.0)
    }

    /// `x` rounded through std's formatting: it formats the exact binary value's decimal
    /// expansion (ties to even); parsing the digits back gives the f64 nearest that decimal,
    /// whose shortest form is those digits. A finite value's digits always parse.
    fn round_by_text(self, x: f64) -> Option<f64> {
        format!("{x:.*}", self.decimals()).parse::<f64>().ok()
    }

    /// `10^decimals`, exact (a product of integers below 2^53).
    fn scale(self) -> f64 {
        10f64.powi(self.decimals() as i32)
    }

    /// `x` rounded to this rule as the shortest decimal text (`0.0898`, `12.5`, `3`), or the
    /// empty string when `x` is not finite (as a CSV shows a missing figure).
    pub fn text(self, x: f64) -> String {
        self.round(x).map(|r| r.to_string()).unwrap_or_default()
    }
}

/// A figure that serializes rounded to its rule: a count as an integer, anything else as the
/// shortest decimal of the rounded value, a value that is not finite as `null`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rounded(pub f64, pub Precision);

impl Serialize for Rounded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(r) = self.1.round(self.0) else {
            return s.serialize_none();
        };
        // 2^53: beyond it an f64 holds integers only, and i64 no longer holds them all.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if self.1 == Precision::Count && r.abs() < EXACT {
            s.serialize_i64(r as i64)
        } else {
            s.serialize_f64(r)
        }
    }
}

/// For `#[serde(serialize_with)]`: an `Option<f64>` rounded to `p` (`null` when absent).
pub fn serialize_option<S: Serializer>(
    v: &Option<f64>,
    p: Precision,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => Rounded(*x, p).serialize(s),
        None => s.serialize_none(),
    }
}

/// For `#[serde(serialize_with = "callwatch_proto::precision::fraction")]`: a share or loss.
pub fn fraction<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    serialize_option(v, Precision::Fraction, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(x: f64, p: Precision) -> String {
        serde_json::to_string(&Rounded(x, p)).unwrap()
    }

    #[test]
    fn rounds_to_the_decimal_and_prints_it_without_float_noise() {
        let f = Precision::Fraction;
        assert_eq!(f.round(0.08980358875091765), Some(0.0898));
        assert_eq!(json(0.08980358875091765, f), "0.0898");
        assert_eq!(f.text(0.08980358875091765), "0.0898");
        assert_eq!(json(0.1 + 0.2, f), "0.3");
        assert_eq!(json(0.1 + 0.2, Precision::Millis), "0.3");
        assert_eq!(f.text(0.1 + 0.2), "0.3");
        // Below half a step: zero, and never "-0".
        assert_eq!(json(1e-5, f), "0.0");
        assert_eq!(json(-1e-5, f), "0.0");
        assert_eq!(f.text(-1e-5), "0");
        assert_eq!(
            json(0.00015, f),
            "0.0001",
            "0.00015 is 1.4999…e-4 in binary"
        );
        assert_eq!(json(0.0001, f), "0.0001");
        assert_eq!(json(-12.3456, Precision::Millis), "-12.35");
        assert_eq!(
            json(-0.125, Precision::Millis),
            "-0.12",
            "an exact tie goes to even"
        );
        assert_eq!(json(4.499999, Precision::Mos), "4.5");
        assert_eq!(json(93.2049, Precision::RFactor), "93.2");
        assert_eq!(json(100.0, Precision::Millis), "100.0");
        assert_eq!(Precision::Millis.text(100.0), "100");
        assert_eq!(json(2.0098, Precision::Count), "2");
        assert_eq!(json(1.5, Precision::Count), "2");
        assert_eq!(json(-3.4, Precision::Count), "-3");
        assert_eq!(json(1e300, Precision::Count), "1e+300");
        assert_eq!(json(1e300, f), "1e+300");
        assert_eq!(json(f64::MAX, f), serde_json::to_string(&f64::MAX).unwrap());
    }

    #[test]
    fn a_value_that_is_not_finite_is_null_or_empty() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (_, p) in FIELDS {
                assert_eq!(p.round(x), None);
                assert_eq!(json(x, p), "null");
                assert_eq!(p.text(x), "");
            }
        }
        #[derive(Serialize)]
        struct S {
            #[serde(serialize_with = "fraction")]
            a: Option<f64>,
            #[serde(serialize_with = "fraction")]
            b: Option<f64>,
        }
        let s = S {
            a: None,
            b: Some(2.0 / 3.0),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"a":null,"b":0.6667}"#
        );
    }

    /// The decimals a number's text carries (`0` for an integer, also in exponent form).
    fn decimals(text: &str) -> usize {
        let mut parts = text.split(['e', 'E']);
        let mantissa = parts.next().unwrap_or("");
        let exp: i64 = parts.next().map_or(0, |e| e.parse().unwrap());
        let frac = mantissa.split('.').nth(1).unwrap_or("");
        (frac.trim_end_matches('0').len() as i64 - exp).max(0) as usize
    }

    #[test]
    fn never_panics_and_never_prints_more_decimals_than_its_rule() {
        // A walk through magnitudes, signs and awkward fractions: no panic, and the shortest
        // form has at most the rule's decimals and equals the value within half a step.
        let mut x = 1.234_567_890_123e-9;
        while x < 1e18 {
            for v in [x, -x, x / 3.0, x * 7.0 / 11.0, 0.1 * x + 0.2 * x] {
                for (_, p) in FIELDS {
                    let out = json(v, p);
                    let text = p.text(v);
                    let r = p.round(v).unwrap();
                    assert!(decimals(&out) <= p.decimals(), "{v} {p:?}: {out}");
                    assert!(decimals(&text) <= p.decimals(), "{v} {p:?}: {text}");
                    assert_eq!(text.parse::<f64>().unwrap(), r, "{v} {p:?}");
                    assert!(
                        (r - v).abs() <= p.step() / 2.0 + v.abs() * 1e-15,
                        "{v} {p:?}"
                    );
                }
            }
            x *= 3.7;
        }
        for v in [
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            f64::MIN,
            f64::MAX,
        ] {
            for (_, p) in FIELDS {
                let _ = json(v, p);
                assert!(p.round(v).is_some());
            }
        }
    }

    proptest::proptest! {
        /// The rounding by arithmetic gives the rounding by text bit for bit: any finite
        /// value, values a few units in the last place from a half step (where it hands over to
        /// the text), and the magnitudes figures have.
        #[test]
        fn rounding_by_arithmetic_is_rounding_by_text(
            bits in proptest::num::u64::ANY,
            k in -2_000_000_000i64..2_000_000_000,
            ulps in -4i64..=4,
            small in -1e7f64..1e7,
        ) {
            for (_, p) in FIELDS {
                let half = (k as f64 + 0.5) / p.scale();
                let near = f64::from_bits((half.to_bits() as i64 + ulps) as u64);
                for x in [f64::from_bits(bits), near, small, small / 1e6] {
                    if !x.is_finite() {
                        proptest::prop_assert_eq!(p.round(x), None);
                        continue;
                    }
                    let by_text = p.round_by_text(x).map(|r| (r + 0.0).to_bits());
                    proptest::prop_assert_eq!(p.round(x).map(f64::to_bits), by_text, "{} {:?}", x, p);
                }
            }
        }
    }

    #[test]
    fn the_scale_is_ten_to_the_decimals() {
        for (_, p) in FIELDS {
            assert_eq!(p.scale(), 10f64.powi(p.decimals() as i32));
            assert_eq!(p.scale().fract(), 0.0);
        }
    }

    #[test]
    fn every_field_has_one_rule() {
        for (i, (name, p)) in FIELDS.iter().enumerate() {
            assert_eq!(of(name), Some(*p));
            assert!(
                FIELDS[i + 1..].iter().all(|(n, _)| n != name),
                "{name} twice"
            );
        }
        assert_eq!(of("count"), None);
        assert_eq!(Precision::Fraction.step(), 1e-4);
    }
}
