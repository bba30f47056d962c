//! The differentiation verdict: is the platform arm treated worse than its control arm?
//!
//! Both arms run at once with the same timing and sizes, so a network that treats them alike
//! gives two samples of one process, and a network that singles out the platform's traffic shape
//! gives a platform arm that is worse. The rules, in order:
//! 1. Cut each arm into windows of `window_ms` by send time. Per window: the loss fraction, the
//!    median RTT of what came back, and the mean |ΔRTT| between consecutive replies (RTT
//!    variation; what a jitter buffer must absorb). Each metric gives one series per arm.
//! 2. Too little to judge — fewer than `min_windows` windows (7: the fewest with which the
//!    corrected test can reach significance at all), or neither arm got anything back —
//!    is `inconclusive`.
//! 3. A platform arm that got nothing back while the control arm got at least half back is
//!    `differentiated`: blocking is the strongest differentiation there is.
//! 4. Per metric, a two-sided Mann–Whitney U test (normal approximation, tie-corrected variance,
//!    continuity correction) compares the series; the three p-values are Holm-corrected. The
//!    effect is the difference of the series' means, platform − control, in the metric's unit.
//! 5. `differentiated` when some metric is worse on the platform arm by at least its floor AND
//!    significant at `alpha` after correction. Never on one number alone.
//! 6. `inconclusive` when some metric is worse by at least its floor but not significant (a
//!    suggestive difference the test cannot establish), or when both arms are degraded alike
//!    (both lose at least `degraded_loss` or both vary by at least the jitter floor) with no
//!    significant difference: a bad network hides what it does to one kind of traffic.
//! 7. `none` otherwise — including a significant difference smaller than its floor, which is
//!    too small to matter to a call (two paths of different lengths, say).

use callwatch_proto::{report::ArmComparison, Verdict, VerdictDetail};

/// One probe of one arm: when it was sent (agent clock, µs) and its round-trip time if it came
/// back in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacketSample {
    pub sent_us: u64,
    pub rtt_us: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmSamples {
    pub interval_us: u64,
    pub packets: Vec<PacketSample>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerdictConfig {
    pub window_ms: u32,
    /// Family-wise significance level over the three metrics (Holm).
    pub alpha: f64,
    /// Smallest difference in per-window loss fraction that counts (0.01 = one point).
    pub loss_floor: f64,
    pub delay_floor_ms: f64,
    pub jitter_floor_ms: f64,
    pub min_windows: u32,
    /// Loss fraction at which an arm counts as degraded (rule 6).
    pub degraded_loss: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            window_ms: 1000,
            alpha: 0.01,
            loss_floor: 0.01,
            delay_floor_ms: 5.0,
            jitter_floor_ms: 3.0,
            // Holm over 3 metrics at α = 0.01 needs a raw p below 0.0033: with 6 windows a side
            // even fully separated series give p ≈ 0.005 (normal approximation); 7 is the
            // fewest that can reach significance.
            min_windows: 7,
            degraded_loss: 0.05,
        }
    }
}

/// Per-window series of one arm.
#[derive(Debug, Default, PartialEq)]
struct Series {
    loss: Vec<f64>,
    delay_ms: Vec<f64>,
    jitter_ms: Vec<f64>,
    received: usize,
    sent: usize,
}

fn series(arm: &ArmSamples, window_us: u64) -> Series {
    let mut s = Series::default();
    let Some(start) = arm.packets.iter().map(|p| p.sent_us).min() else {
        return s;
    };
    let mut windows: Vec<Vec<&PacketSample>> = Vec::new();
    for p in &arm.packets {
        let w = ((p.sent_us - start) / window_us.max(1)) as usize;
        if windows.len() <= w {
            windows.resize_with(w + 1, Vec::new);
        }
        windows[w].push(p);
    }
    for w in windows.iter().filter(|w| !w.is_empty()) {
        let rtts: Vec<f64> = w
            .iter()
            .filter_map(|p| p.rtt_us)
            .map(|r| r as f64 / 1e3)
            .collect();
        s.sent += w.len();
        s.received += rtts.len();
        s.loss.push(1.0 - rtts.len() as f64 / w.len() as f64);
        if let Some(m) = median(&rtts) {
            s.delay_ms.push(m);
        }
        if rtts.len() >= 2 {
            let d: f64 = rtts.windows(2).map(|x| (x[1] - x[0]).abs()).sum::<f64>();
            s.jitter_ms.push(d / (rtts.len() - 1) as f64);
        }
    }
    s
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Two-sided Mann–Whitney U test: normal approximation with tie-corrected variance and
/// continuity correction. 1 when either sample is empty or all values are tied.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, usize)> = a
        .iter()
        .map(|&x| (x, 0))
        .chain(b.iter().map(|&x| (x, 1)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Average ranks over ties; collect tie group sizes for the variance correction.
    let n = all.len();
    let mut rank_sum_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += all[i..=j].iter().filter(|x| x.1 == 0).count() as f64 * avg_rank;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let nn = n1 + n2;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    if var <= 0.0 || !var.is_finite() {
        return 1.0;
    }
    let diff = (u - n1 * n2 / 2.0).abs();
    let z = (diff - 0.5).max(0.0) / var.sqrt();
    (2.0 * normal_sf(z)).clamp(0.0, 1.0)
}

/// Upper tail of the standard normal via erfc: the Chebyshev fit of Numerical Recipes' `erfcc`
/// (fractional error below 1.2e-7 everywhere), fine enough for p-values near 1e-6.
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Holm's step-down adjustment of p-values (same order as given).
fn holm(p: [f64; 3]) -> [f64; 3] {
    let mut idx = [0usize, 1, 2];
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = [1.0; 3];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        let v = ((3 - rank) as f64 * p[i]).min(1.0);
        running = running.max(v);
        adjusted[i] = running;
    }
    adjusted
}

/// The samples the verdict needs from one arm's record: send time and round-trip time (with the
/// reflector's hold time removed) of each probe.
pub fn samples_of(rec: &crate::metrics::StreamRecord) -> ArmSamples {
    ArmSamples {
        interval_us: rec.interval_us,
        packets: rec
            .probes
            .iter()
            .map(|p| PacketSample {
                sent_us: p.sent_us,
                rtt_us: p.reply.map(|r| {
                    let hold = r.reflector_tx_us.saturating_sub(r.reflector_rx_us);
                    r.received_us.saturating_sub(p.sent_us).saturating_sub(hold)
                }),
            })
            .collect(),
    }
}

/// Judges one test from its two arms. See the module docs for the rules.
pub fn judge(
    platform: &ArmSamples,
    control: &ArmSamples,
    cfg: &VerdictConfig,
) -> (Verdict, VerdictDetail) {
    let window_us = u64::from(cfg.window_ms.max(1)) * 1000;
    let (p, c) = (series(platform, window_us), series(control, window_us));
    let windows = p.loss.len().min(c.loss.len()) as u32;
    let compare = |a: &[f64], b: &[f64], floor: f64, p_adj: f64| {
        let effect = match (mean(a), mean(b)) {
            (Some(x), Some(y)) => x - y,
            _ => 0.0,
        };
        ArmComparison {
            platform_median: median(a).unwrap_or(0.0),
            control_median: median(b).unwrap_or(0.0),
            p_value: p_adj,
            effect,
            significant: p_adj < cfg.alpha && effect >= floor,
        }
    };
    let raw = [
        mann_whitney_p(&p.loss, &c.loss),
        mann_whitney_p(&p.delay_ms, &c.delay_ms),
        mann_whitney_p(&p.jitter_ms, &c.jitter_ms),
    ];
    let adj = holm(raw);
    let loss = compare(&p.loss, &c.loss, cfg.loss_floor, adj[0]);
    let delay = compare(&p.delay_ms, &c.delay_ms, cfg.delay_floor_ms, adj[1]);
    let jitter = compare(&p.jitter_ms, &c.jitter_ms, cfg.jitter_floor_ms, adj[2]);
    let floors = [cfg.loss_floor, cfg.delay_floor_ms, cfg.jitter_floor_ms];
    let metrics = [("loss", &loss), ("delay", &delay), ("jitter", &jitter)];

    let (verdict, reason) = if windows < cfg.min_windows {
        (
            Verdict::Inconclusive,
            format!(
                "only {windows} windows to compare (need {})",
                cfg.min_windows
            ),
        )
    } else if p.received == 0 && c.received == 0 {
        (
            Verdict::Inconclusive,
            "neither arm got anything back: the reflector is unreachable for all traffic".into(),
        )
    } else if p.received == 0 && c.received * 2 >= c.sent {
        (
            Verdict::Differentiated,
            "the platform arm got nothing back while the control arm did: blocked".into(),
        )
    } else if let Some((name, m)) = metrics.iter().find(|(_, m)| m.significant) {
        (
            Verdict::Differentiated,
            format!(
                "platform arm worse on {name} by {:.3} (p = {:.2e} after Holm) than its control",
                m.effect, m.p_value
            ),
        )
    } else if let Some((name, m)) = metrics
        .iter()
        .zip(floors)
        .find(|((_, m), floor)| m.effect >= *floor)
        .map(|(x, _)| x)
    {
        (
            Verdict::Inconclusive,
            format!(
                "platform arm worse on {name} by {:.3}, but not significantly (p = {:.2e})",
                m.effect, m.p_value
            ),
        )
    } else if (loss.platform_median >= cfg.degraded_loss
        && loss.control_median >= cfg.degraded_loss)
        || (jitter.platform_median >= cfg.jitter_floor_ms
            && jitter.control_median >= cfg.jitter_floor_ms)
    {
        (
            Verdict::Inconclusive,
            "both arms are degraded alike: the path is bad for all traffic".into(),
        )
    } else {
        (
            Verdict::None,
            "no meaningful difference between the platform arm and its control".into(),
        )
    };
    let detail = VerdictDetail {
        method: "mann-whitney-u per window on loss, median rtt, mean |drtt|; holm over 3 metrics"
            .into(),
        window_ms: cfg.window_ms,
        windows,
        loss,
        delay,
        jitter,
        reason,
    };
    (verdict, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` packets every 20 ms; each lost with `loss`, RTT 20 ms ± `jitter_ms` (uniform).
    fn arm(rng: &mut impl Rng, n: usize, loss: f64, jitter_ms: f64) -> ArmSamples {
        ArmSamples {
            interval_us: 20_000,
            packets: (0..n)
                .map(|i| PacketSample {
                    sent_us: i as u64 * 20_000,
                    rtt_us: (rng.gen::<f64>() >= loss).then(|| {
                        (20_000.0 + rng.gen_range(-1.0..=1.0) * jitter_ms * 1000.0).max(0.0) as u64
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn mann_whitney_matches_hand_computed_values() {
        // a = {1,2,3}, b = {4,5,6}: U = 0, n1 = n2 = 3, var = 9/12·7 = 5.25,
        // z = (4.5 − 0.5)/√5.25 = 1.7457, p = 2·(1 − Φ(1.7457)) = 0.08086.
        let p = mann_whitney_p(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
        assert!((p - 0.08086).abs() < 1e-4, "{p}");
        // All tied: no evidence at all.
        assert_eq!(mann_whitney_p(&[0.0; 10], &[0.0; 10]), 1.0);
        // Ties: a = {0,0,1}, b = {0,1,1}: ranks 0→2 (×3), 1→5 (×3); R_a = 2+2+5 = 9, U = 3;
        // tie term = 2·(27−3) = 48; var = 9/12·(7 − 48/30) = 4.05; z = (|3−4.5|−0.5)/√4.05.
        let want = 2.0 * normal_sf(1.0 / 4.05f64.sqrt());
        assert!((mann_whitney_p(&[0.0, 0.0, 1.0], &[0.0, 1.0, 1.0]) - want).abs() < 1e-12);
        assert!((normal_sf(1.959964) - 0.025).abs() < 1e-6);
        assert_eq!(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06]);
    }

    #[test]
    fn identical_arms_are_none_and_platform_only_loss_or_jitter_is_differentiated() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cfg = VerdictConfig::default();
        let clean = || arm(&mut rand::rngs::StdRng::seed_from_u64(2), 500, 0.0, 1.0);
        assert_eq!(judge(&clean(), &clean(), &cfg).0, Verdict::None);
        let lossy = arm(&mut rng, 500, 0.10, 1.0);
        let (v, d) = judge(&lossy, &arm(&mut rng, 500, 0.0, 1.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
        assert!(d.loss.significant && d.loss.effect > 0.05);
        let jittery = arm(&mut rng, 500, 0.0, 20.0);
        let (v, d) = judge(&jittery, &arm(&mut rng, 500, 0.0, 1.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
        assert!(d.jitter.significant);
    }

    #[test]
    fn alike_degradation_blocking_and_short_tests() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cfg = VerdictConfig::default();
        let (v, d) = judge(
            &arm(&mut rng, 500, 0.10, 1.0),
            &arm(&mut rng, 500, 0.10, 1.0),
            &cfg,
        );
        assert_ne!(v, Verdict::Differentiated, "{d:?}");
        let blocked = arm(&mut rng, 500, 1.0, 0.0);
        let (v, d) = judge(&blocked, &arm(&mut rng, 500, 0.0, 1.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        assert!(d.reason.contains("blocked"));
        let (v, _) = judge(&blocked, &arm(&mut rng, 500, 1.0, 0.0), &cfg);
        assert_eq!(v, Verdict::Inconclusive);
        let (v, d) = judge(
            &arm(&mut rng, 100, 0.5, 1.0),
            &arm(&mut rng, 100, 0.0, 1.0),
            &cfg,
        );
        assert_eq!(v, Verdict::Inconclusive, "2 windows only: {}", d.reason);
        let (v, _) = judge(&ArmSamples::default(), &ArmSamples::default(), &cfg);
        assert_eq!(v, Verdict::Inconclusive);
    }

    #[test]
    fn false_positive_rate_is_at_most_one_percent() {
        // Both arms drawn from the same process: 1000 tests over three impairment levels.
        let cfg = VerdictConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut flagged = 0;
        for i in 0..1000 {
            let (loss, jitter) = [(0.0, 1.0), (0.02, 5.0), (0.10, 5.0)][i % 3];
            let (a, b) = (
                arm(&mut rng, 500, loss, jitter),
                arm(&mut rng, 500, loss, jitter),
            );
            if judge(&a, &b, &cfg).0 == Verdict::Differentiated {
                flagged += 1;
            }
        }
        assert!(flagged <= 10, "{flagged} of 1000 flagged");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_figures_are_finite(
            a in proptest::collection::vec((0u64..20_000_000, proptest::option::of(0u64..5_000_000)), 0..300),
            b in proptest::collection::vec((0u64..20_000_000, proptest::option::of(0u64..5_000_000)), 0..300),
        ) {
            let to = |v: Vec<(u64, Option<u64>)>| ArmSamples {
                interval_us: 20_000,
                packets: v.into_iter().map(|(s, r)| PacketSample { sent_us: s, rtt_us: r }).collect(),
            };
            let (_, d) = judge(&to(a), &to(b), &VerdictConfig::default());
            for m in [d.loss, d.delay, d.jitter] {
                proptest::prop_assert!((0.0..=1.0).contains(&m.p_value));
                proptest::prop_assert!(m.effect.is_finite() && m.platform_median.is_finite());
            }
        }
    }
}
