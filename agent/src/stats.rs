//! Exact small-sample significance tests for judging the platform arm against its control arm.
//!
//! A test yields two short series (tens of one-second windows) and a few hundred probes per arm:
//! too little data to trust large-sample approximations in the tails where a verdict is decided.
//! This module holds the tests that stay exact at those sizes, as plain functions over plain
//! numbers, with no state and no I/O: [`fisher_exact_greater`] for per-packet loss (one arm's
//! lost probes against the other's), [`mann_whitney_exact_greater`] and
//! [`wilcoxon_signed_rank_exact_greater`] for per-window metrics (unpaired and paired, with the
//! exact permutation distribution given the ties), [`sign_flip_max_scan`] for "since when is the
//! platform arm worse?" (a scan over onsets, calibrated by sign-flip permutation so that trying
//! every onset does not inflate the false-positive rate), [`holm`] and [`benjamini_hochberg`] for
//! multiplicity, and [`clopper_pearson`] for an exact confidence interval of a loss rate. Every
//! p-value is one-sided ("the platform arm is worse"), lies in [0, 1], and is 1 (no evidence) for
//! input that carries none: empty samples, all ties, impossible counts. NaNs are ignored or count
//! as "no difference", as each function says. Nothing here panics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Largest pooled sample size `n₁ + n₂` for which [`mann_whitney_exact_greater`] is exact.
pub const MW_EXACT_MAX_N: usize = 80;
/// Largest number of non-zero differences for which [`wilcoxon_signed_rank_exact_greater`] is
/// exact.
pub const WILCOXON_EXACT_MAX_N: usize = 60;
/// Largest number of windows for which [`sign_flip_max_scan`] enumerates all 2ⁿ sign flips.
pub const SCAN_EXACT_MAX_N: usize = 16;

/// ln √(2π).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
/// ln(2π).
const LN_2PI: f64 = 1.837_877_066_409_345_5;
/// A tail sum stops once the rest is provably below this fraction of it.
const TAIL_EPS: f64 = 1e-17;
/// Upper bound on the terms of one tail sum, so absurd inputs (10¹² probes) cannot hang a caller.
/// Realistic sums need ~10 standard deviations of terms: a few thousand at 10⁶ probes per arm.
const MAX_TERMS: usize = 10_000_000;

// ---------------------------------------------------------------------------------------------
// Fisher's exact test
// ---------------------------------------------------------------------------------------------

/// One-sided Fisher exact test of "group a's event rate exceeds group b's": the hypergeometric
/// upper tail P(X ≥ `a_events`), X ~ Hypergeom(population `a_n + b_n`, successes
/// `a_events + b_events`, draws `a_n`), i.e. conditional on the total number of events (Fisher,
/// *The Design of Experiments*, 1935, §2; Agresti, *Categorical Data Analysis*, 3rd ed., §3.5).
///
/// Exact up to floating-point rounding: the largest term comes from C. Loader's saddle-point
/// expansion ("Fast and Accurate Computation of Binomial Probabilities", 2000; R's `dhyper`),
/// accurate to ~1e-14 relative at any size, and the rest from the term ratio, summed outward from
/// the largest term until the remainder is provably < 1e-17 of the sum (the hypergeometric is
/// log-concave). When the tail holds the mode, the opposite tail is summed and subtracted; the
/// result is then ≥ ~0.3, so the subtraction costs nothing. Relative error ~1e-12 or better
/// for n up to 10⁶ per group and beyond. Impossible counts (`events > n`) give 1.
pub fn fisher_exact_greater(a_events: u64, a_n: u64, b_events: u64, b_n: u64) -> f64 {
    if a_events > a_n || b_events > b_n {
        return 1.0;
    }
    let x = a_events as f64;
    let draws = a_n as f64;
    let successes = a_events as f64 + b_events as f64;
    let total = a_n as f64 + b_n as f64;
    let failures = total - successes;
    let lo = (draws - failures).max(0.0);
    let hi = successes.min(draws);
    if x <= lo {
        return 1.0;
    }
    if x > hi {
        return 0.0;
    }
    // pmf(j+1)/pmf(j) ≤ 1 exactly when j + 1 ≥ (draws+1)(successes+1)/(total+2).
    let mode = ((draws + 1.0) * (successes + 1.0) / (total + 2.0)).floor();
    let p = if x >= mode {
        let up =
            |j: f64| (successes - j) * (draws - j) / ((j + 1.0) * (failures - draws + j + 1.0));
        walk_tail(ln_dhyper(x, successes, failures, draws), x, hi, true, up)
    } else {
        let down =
            |j: f64| j * (failures - draws + j) / ((successes - j + 1.0) * (draws - j + 1.0));
        let start = x - 1.0;
        1.0 - walk_tail(
            ln_dhyper(start, successes, failures, draws),
            start,
            lo,
            false,
            down,
        )
    };
    p.clamp(0.0, 1.0)
}

/// One stratum of [`stratified_exact_greater`]: (events in a, trials in a, events in b, trials
/// in b).
pub type Stratum = (u64, u64, u64, u64);

/// Most trials one stratum may hold for [`stratified_exact_greater`] (a 1 s window at 5 ms
/// probes holds 200 a side); larger strata give p = 1 rather than a slow answer.
pub const STRATUM_MAX_N: u64 = 100_000;

/// One-sided exact stratified test of "group a's event rate exceeds group b's", conditional on
/// each stratum's margins: the statistic is the total of a's events, and under the null each
/// stratum's count is hypergeometric given that stratum's totals, independently across strata
/// (the exact conditional form of the Cochran–Mantel–Haenszel test; Agresti, *Categorical Data
/// Analysis*, 3rd ed., §6.4.5 and §7.3.5; Mehta & Patel's network algorithm computes the same
/// distribution). The p-value P(Σ Xᵢ ≥ Σ xᵢ) is computed by convolving the per-stratum pmfs —
/// exact up to rounding (~1e-12 relative; each pmf from Loader's saddle point, see
/// [`fisher_exact_greater`]).
///
/// Why stratify: loss on a real path comes in bursts, which break Fisher's assumption of
/// independent trials. Probes of both arms interleave in time, so a burst that hits a window
/// hits both arms' probes of that window; conditioning on each window's total losses removes it.
/// One stratum gives Fisher's exact test. Empty input, impossible counts or a stratum larger
/// than [`STRATUM_MAX_N`] give 1.
pub fn stratified_exact_greater(strata: &[Stratum]) -> f64 {
    let mut dist: Vec<f64> = vec![1.0];
    let mut observed: u64 = 0;
    for &(a_events, a_n, b_events, b_n) in strata {
        if a_events > a_n || b_events > b_n || a_n + b_n > STRATUM_MAX_N {
            return 1.0;
        }
        let successes = a_events + b_events;
        let total = a_n + b_n;
        let failures = total - successes;
        let lo = a_n.saturating_sub(failures);
        let hi = successes.min(a_n);
        observed += a_events;
        // The stratum's pmf over lo..=hi, and the convolution with what came before.
        let pmf: Vec<f64> = (lo..=hi)
            .map(|x| ln_dhyper(x as f64, successes as f64, failures as f64, a_n as f64).exp())
            .collect();
        let offset = usize::try_from(lo).unwrap_or(usize::MAX);
        let mut next = vec![0.0; dist.len() + offset + pmf.len().saturating_sub(1)];
        for (i, &d) in dist.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            for (j, &q) in pmf.iter().enumerate() {
                next[i + offset + j] += d * q;
            }
        }
        dist = next;
    }
    let start = usize::try_from(observed).unwrap_or(usize::MAX);
    let tail: f64 = dist.get(start..).map_or(0.0, |t| t.iter().sum());
    if strata.is_empty() {
        return 1.0;
    }
    tail.clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Rank tests
// ---------------------------------------------------------------------------------------------

/// One-sided Mann–Whitney–Wilcoxon rank-sum test of "`x` is stochastically larger than `y`"
/// (Mann & Whitney, *Ann. Math. Statist.* 18, 1947; Hollander, Wolfe & Chicken, *Nonparametric
/// Statistical Methods*, 3rd ed., §4.1).
///
/// Ties get mid-ranks. For `n₁ + n₂ ≤` [`MW_EXACT_MAX_N`] the p-value is **exact**: the
/// permutation distribution of x's rank sum conditional on the observed ties, i.e. over all
/// C(N, n₁) equally likely ways to pick which pooled values are x's. Doubled mid-ranks are whole
/// numbers, so a dynamic programme over "choose m of the first i values with doubled-rank sum s"
/// counts them (the shift algorithm of Streitberg & Röhmel, *Statistical Software Newsletter* 12,
/// 1986); counts are held as f64, exact up to 2⁵³ and ~1e-15 relative beyond. Larger samples use
/// the normal approximation with the tie-corrected variance
/// σ² = n₁n₂/12 · ((N+1) − Σ(t³−t)/(N(N−1))) and a continuity correction of ½ (Lehmann,
/// *Nonparametrics*, 1975, §1.4; SciPy's `method="asymptotic"`): at N > 80 its error in the
/// tail is a few percent of p. NaNs are ignored; infinities rank as extremes. An empty side → 1.
pub fn mann_whitney_exact_greater(x: &[f64], y: &[f64]) -> f64 {
    // `+ 0.0` turns −0 into +0 so that the total order used for sorting agrees with `==`.
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (v + 0.0, true))
        .chain(y.iter().filter(|v| !v.is_nan()).map(|&v| (v + 0.0, false)))
        .collect();
    let n = pooled.len();
    let n1 = pooled.iter().filter(|e| e.1).count();
    let n2 = n - n1;
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let keys: Vec<f64> = pooled.iter().map(|e| e.0).collect();
    let (ranks, ties) = doubled_mid_ranks(&keys);
    let s_obs: u64 = ranks
        .iter()
        .zip(&pooled)
        .filter(|(_, e)| e.1)
        .map(|(r, _)| r)
        .sum();

    if n > MW_EXACT_MAX_N {
        let (n1, n2, nn) = (n1 as f64, n2 as f64, n as f64);
        let u = s_obs as f64 / 2.0 - n1 * (n1 + 1.0) / 2.0;
        let var = n1 * n2 / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
        if !(var > 0.0 && var.is_finite()) {
            return 1.0;
        }
        return normal_sf((u - n1 * n2 / 2.0 - 0.5) / var.sqrt()).clamp(0.0, 1.0);
    }

    // Count subsets of the smaller side; x's sum is the complement of y's.
    let (m, counting_x) = if n1 <= n2 { (n1, true) } else { (n2, false) };
    let width = n * (n + 1) + 1; // doubled rank sums run over 0..=N(N+1)
    let mut counts = vec![0.0f64; (m + 1) * width];
    counts[0] = 1.0;
    let mut reach = 0usize;
    for (i, &r) in ranks.iter().enumerate() {
        let r = r as usize;
        reach = (reach + r).min(width - 1);
        // Descending m: row m−1 still holds the counts without this value.
        for mm in (1..=m.min(i + 1)).rev() {
            let (before, from_mm) = counts.split_at_mut(mm * width);
            let prev = &before[(mm - 1) * width..];
            let cur = &mut from_mm[..width];
            for (c, p) in cur[r..=reach].iter_mut().zip(&prev[..=reach - r]) {
                *c += *p;
            }
        }
    }
    let last = &counts[m * width..];
    let all: f64 = last.iter().sum();
    // s_obs ≤ N(N+1) = width − 1, so both slices are in bounds.
    let s_obs = s_obs as usize;
    let tail: f64 = if counting_x {
        last[s_obs..].iter().sum()
    } else {
        last[..=width - 1 - s_obs].iter().sum()
    };
    (tail / all).clamp(0.0, 1.0)
}

/// One-sided Wilcoxon signed-rank test of "the paired differences `d` are positive"
/// (Wilcoxon, *Biometrics Bulletin* 1, 1945; Hollander, Wolfe & Chicken, 3rd ed., §3.1).
///
/// Zero differences are dropped (Wilcoxon's convention; Pratt's 1959 variant would rank them),
/// NaNs too. Tied |d| get mid-ranks. For up to [`WILCOXON_EXACT_MAX_N`] non-zero differences the
/// p-value is **exact**: the distribution of the positive rank sum under independent fair signs,
/// conditional on the observed ties, by a dynamic programme over doubled mid-ranks (whole
/// numbers); probabilities are held as f64 (rounding ~1e-15). Beyond, the normal approximation
/// with mean n(n+1)/4, tie-corrected variance n(n+1)(2n+1)/24 − Σ(t³−t)/48 and a continuity
/// correction of ½ (Lehmann 1975, §3.2). Empty or all zero → 1.
pub fn wilcoxon_signed_rank_exact_greater(d: &[f64]) -> f64 {
    let mut v: Vec<f64> = d
        .iter()
        .copied()
        .filter(|x| !x.is_nan() && *x != 0.0)
        .collect();
    let n = v.len();
    if n == 0 {
        return 1.0;
    }
    v.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let keys: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    let (ranks, ties) = doubled_mid_ranks(&keys);
    let w_obs: u64 = ranks
        .iter()
        .zip(&v)
        .filter(|(_, x)| **x > 0.0)
        .map(|(r, _)| r)
        .sum();

    if n > WILCOXON_EXACT_MAX_N {
        let nf = n as f64;
        let mean = nf * (nf + 1.0) / 4.0;
        let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - ties / 48.0;
        if !(var > 0.0 && var.is_finite()) {
            return 1.0;
        }
        return normal_sf((w_obs as f64 / 2.0 - mean - 0.5) / var.sqrt()).clamp(0.0, 1.0);
    }

    let width = n * (n + 1) + 1; // doubled rank sums run over 0..=n(n+1)
    let mut prob = vec![0.0f64; width];
    prob[0] = 1.0;
    let mut reach = 0usize;
    for &r in &ranks {
        let r = r as usize;
        reach = (reach + r).min(width - 1);
        // Descending s: prob[s − r] still holds the distribution without this rank.
        for s in (r..=reach).rev() {
            prob[s] = 0.5 * (prob[s] + prob[s - r]);
        }
        for p in &mut prob[..r.min(reach + 1)] {
            *p *= 0.5;
        }
    }
    // w_obs ≤ n(n+1) = width − 1.
    prob[w_obs as usize..].iter().sum::<f64>().clamp(0.0, 1.0)
}

/// Doubled mid-ranks of sorted keys (equal keys share the mean of their 1-based ranks,
/// (i+1 + j+1)/2, doubled to the whole number i + j + 2) and the tie sum Σ(t³ − t).
fn doubled_mid_ranks(sorted: &[f64]) -> (Vec<u64>, f64) {
    let n = sorted.len();
    let mut ranks = vec![0u64; n];
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && sorted[j + 1] == sorted[i] {
            j += 1;
        }
        let r2 = (i + j + 2) as u64;
        for r in &mut ranks[i..=j] {
            *r = r2;
        }
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    (ranks, ties)
}

// ---------------------------------------------------------------------------------------------
// Onset scan
// ---------------------------------------------------------------------------------------------

/// The result of [`sign_flip_max_scan`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnsetScan {
    /// One-sided p-value of the maximised statistic under the sign-flip null.
    pub p_value: f64,
    /// The first window of the best tail: 0 means the whole test.
    pub split: usize,
    /// The maximised statistic T = Σ d[split..] / (√(n − split) · rms(d)), a z-like figure (0 when
    /// there is nothing to scan).
    pub statistic: f64,
    /// Whether `p_value` comes from all 2ⁿ flips (n ≤ [`SCAN_EXACT_MAX_N`]) or from Monte Carlo.
    pub exact: bool,
}

/// Onset scan over per-window paired differences `d` (platform − control, in time order):
/// "from some window k on, the platform arm is worse", calibrated by sign-flip permutation.
///
/// **Statistic.** For every split k with at least `min_tail` (≥ 1) windows after it, *including
/// k = 0, the whole test*, the CUSUM-type tail sum T_k = Σ_{i≥k} d_i / (√(n−k) · rms(d)), with
/// rms(d) = √(Σ d_i² / n) over all windows; the scan takes the largest (ties: the earliest k).
/// Why this form: under the null the arms are exchangeable within each window, so the level
/// before an onset is known to be 0, and the likelihood-ratio statistic for "mean 0 before k,
/// μ > 0 from k on" with a common variance is maximised over k exactly by Σ_{i≥k} d_i/√(n−k)
/// (Page, *Biometrika* 41, 1954; Basseville & Nikiforov, *Detection of Abrupt Changes*, 1993,
/// §2.2). `mean(d[k..]) − mean(d[..k])` would estimate a level that is known, costing power, and
/// would leave out k = 0, where a difference present from the first window belongs. The √(n−k)
/// makes every pre-onset window cost (it adds noise, no signal), so `split` estimates the onset;
/// a self-normalised Σd/√Σd² over the tail was tried and rejected because near-zero pre-onset
/// windows are almost free to include under it (it put an onset at window 9 at window 4). rms(d)
/// is the same for every flip, so it changes neither `split` nor the p-value; it only makes
/// the statistic unit-free (≈ N(0, 1) for one k under the null with even windows).
///
/// **Calibration.** The null flips each window's sign independently (swaps the arm labels within
/// the window; Fisher 1935, §21). The maximum over k is compared with the maximum of each
/// flipped series (the max-T method of Westfall & Young, *Resampling-Based Multiple Testing*,
/// 1993), so trying every onset is paid for, and the test is valid whatever each window's own
/// distribution, as long as it is symmetric under the null. With n ≤ [`SCAN_EXACT_MAX_N`] all 2ⁿ
/// flips are enumerated and p is **exact** (≥ 2⁻ⁿ). Beyond, `samples` random flips from
/// `StdRng::seed_from_u64(seed)` (deterministic for a given seed and `rand` 0.8) give
/// p = (1 + #{T* ≥ T})/(1 + samples), never 0 and still a valid p-value (Phipson & Smyth,
/// *Stat. Appl. Genet. Mol. Biol.* 9, 2010); `samples` is unused when exact. T* ≥ T is judged
/// with a relative tolerance of 1e-10 so that rounding cannot split ties.
///
/// Non-finite differences count as 0 (a window without a usable comparison), which keeps the
/// window indices. Fewer than `min_tail` windows, or all differences 0 → p = 1, split 0,
/// statistic 0.
pub fn sign_flip_max_scan(d: &[f64], min_tail: usize, samples: usize, seed: u64) -> OnsetScan {
    let Some((d, weights)) = scan_setup(d, min_tail) else {
        return OnsetScan {
            p_value: 1.0,
            split: 0,
            statistic: 0.0,
            exact: true,
        };
    };
    let n = d.len();
    let (statistic, split) = scan_max(&d, &weights, |_| false);
    let bar = statistic - 1e-10 * statistic.abs().max(1.0);
    let (p_value, exact) = if n <= SCAN_EXACT_MAX_N {
        let flips = 1u32 << n; // n ≤ 16
        let hits = (0..flips)
            .filter(|&mask| scan_max(&d, &weights, |i| mask >> i & 1 == 1).0 >= bar)
            .count();
        (hits as f64 / flips as f64, true)
    } else {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut words = vec![0u64; n.div_ceil(64)];
        let mut hits = 0usize;
        for _ in 0..samples {
            for w in &mut words {
                *w = rng.gen();
            }
            if scan_max(&d, &weights, |i| words[i / 64] >> (i % 64) & 1 == 1).0 >= bar {
                hits += 1;
            }
        }
        ((hits as f64 + 1.0) / (samples as f64 + 1.0), false)
    };
    OnsetScan {
        p_value: p_value.clamp(0.0, 1.0),
        split,
        statistic,
        exact,
    }
}

/// The cleaned differences (non-finite → 0, divided by the largest |d| so that squares can
/// neither overflow nor underflow; T_k is scale-free) and the weight 1/(√(n−k)·rms(d)) of each
/// candidate split k = 0..=n − min_tail. `None` when there is nothing to scan.
fn scan_setup(d: &[f64], min_tail: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let n = d.len();
    let last = n.checked_sub(min_tail.max(1))?;
    let mut d: Vec<f64> = d
        .iter()
        .map(|&v| if v.is_finite() { v } else { 0.0 })
        .collect();
    let scale = d.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if scale.is_nan() || scale <= 0.0 {
        return None;
    }
    for v in &mut d {
        *v /= scale;
    }
    let rms = (d.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    let weights = (0..=last)
        .map(|k| 1.0 / (((n - k) as f64).sqrt() * rms))
        .collect();
    Some((d, weights))
}

/// max over candidate splits k (those with an entry in `weights`) of T_k = weights[k]·Σ_{i≥k} ±d_i,
/// with window i's sign flipped where `flipped(i)`; returns (T, k), ties going to the earliest k.
fn scan_max(d: &[f64], weights: &[f64], flipped: impl Fn(usize) -> bool) -> (f64, usize) {
    let mut best = f64::NEG_INFINITY;
    let mut at = 0;
    let mut tail = 0.0;
    for (i, &v) in d.iter().enumerate().rev() {
        tail += if flipped(i) { -v } else { v };
        if let Some(&w) = weights.get(i) {
            let t = tail * w;
            if t >= best {
                best = t;
                at = i;
            }
        }
    }
    (best, at)
}

// ---------------------------------------------------------------------------------------------
// Multiplicity
// ---------------------------------------------------------------------------------------------

/// Holm's step-down adjusted p-values (Holm, *Scand. J. Statist.* 6, 1979; adjusted-p form of
/// Wright, *Biometrics* 48, 1992; R's `p.adjust(method = "holm")`): sorted ascending, the j-th
/// smallest (from 0) becomes max over i ≤ j of min(1, (m − i)·p₍ᵢ₎). Exact (closed form).
/// Rejecting where the adjusted p ≤ α keeps the family-wise error rate ≤ α under any dependence.
/// Returned in input order; NaN counts as 1, values are clamped to [0, 1].
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let clean = clean_p(p);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| clean[a].total_cmp(&clean[b]));
    let mut out = vec![1.0; m];
    let mut running = 0.0f64;
    for (j, &i) in order.iter().enumerate() {
        running = running.max(((m - j) as f64 * clean[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Benjamini–Hochberg adjusted q-values (Benjamini & Hochberg, *J. R. Statist. Soc. B* 57, 1995;
/// R's `p.adjust(method = "BH")`): sorted ascending, the j-th smallest (1-based) becomes
/// min over i ≥ j of min(1, m·p₍ᵢ₎/i). Exact (closed form). Rejecting where q ≤ α keeps the
/// false discovery rate ≤ α for independent or positively dependent p-values. Returned in input
/// order; NaN counts as 1, values are clamped to [0, 1].
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let clean = clean_p(p);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| clean[a].total_cmp(&clean[b]));
    let mut out = vec![1.0; m];
    let mut running = 1.0f64;
    for (j, &i) in order.iter().enumerate().rev() {
        running = running.min(clean[i] * (m as f64 / (j + 1) as f64));
        out[i] = running;
    }
    out
}

fn clean_p(p: &[f64]) -> Vec<f64> {
    p.iter()
        .map(|&v| if v.is_nan() { 1.0 } else { v.clamp(0.0, 1.0) })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Binomial confidence interval
// ---------------------------------------------------------------------------------------------

/// Clopper–Pearson exact two-sided interval for a binomial proportion from `k` events in `n`
/// trials at `confidence` (say 0.95) (Clopper & Pearson, *Biometrika* 26, 1934): the lower bound
/// solves P(X ≥ k) = α/2, the upper P(X ≤ k) = α/2, α = 1 − confidence. Coverage is at least
/// `confidence` for every true rate. The bounds are found by bisection to ~4e-16 relative on
/// binomial tails summed like [`fisher_exact_greater`]'s (Loader's saddle-point term, ~1e-14);
/// k = 0 and k = n use the closed forms 1 − (α/2)^{1/n} and (α/2)^{1/n}. n = 0, k > n, NaN or
/// `confidence ≥ 1` give (0, 1); `confidence ≤ 0` is taken as 0 (α/2 = ½).
pub fn clopper_pearson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    if n == 0 || k > n || confidence.is_nan() || confidence >= 1.0 {
        return (0.0, 1.0);
    }
    let half = (1.0 - confidence.max(0.0)) / 2.0;
    let ln_half = half.ln();
    let (kf, nf) = (k as f64, n as f64);
    let lower = if k == 0 {
        0.0
    } else if k == n {
        (ln_half / nf).exp()
    } else {
        bisect(|p| binom_sf(kf, nf, p) >= half)
    };
    let upper = if k == n {
        1.0
    } else if k == 0 {
        -(ln_half / nf).exp_m1()
    } else {
        bisect(|p| binom_cdf(kf, nf, p) <= half)
    };
    (lower.clamp(0.0, 1.0), upper.clamp(0.0, 1.0))
}

/// The point in (0, 1) where a monotone predicate turns from false to true.
fn bisect(done: impl Fn(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if done(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= 2.0 * f64::EPSILON * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// P(X ≤ k) for X ~ Binomial(n, p), k and n whole.
fn binom_cdf(k: f64, n: f64, p: f64) -> f64 {
    if k < 0.0 {
        return 0.0;
    }
    if k >= n || p.is_nan() || p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let q = 1.0 - p;
    // pmf(j+1)/pmf(j) ≤ 1 exactly when j + 1 ≥ (n+1)p.
    let mode = ((n + 1.0) * p).floor();
    let r = if k < mode {
        let down = |j: f64| j / (n - j + 1.0) * (q / p);
        walk_tail(ln_dbinom_raw(k, n, p, q), k, 0.0, false, down)
    } else {
        let up = |j: f64| (n - j) / (j + 1.0) * (p / q);
        1.0 - walk_tail(ln_dbinom_raw(k + 1.0, n, p, q), k + 1.0, n, true, up)
    };
    r.clamp(0.0, 1.0)
}

/// P(X ≥ k) for X ~ Binomial(n, p), k and n whole.
fn binom_sf(k: f64, n: f64, p: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    if k > n || p.is_nan() || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let q = 1.0 - p;
    let mode = ((n + 1.0) * p).floor();
    let r = if k > mode {
        let up = |j: f64| (n - j) / (j + 1.0) * (p / q);
        walk_tail(ln_dbinom_raw(k, n, p, q), k, n, true, up)
    } else {
        let down = |j: f64| j / (n - j + 1.0) * (q / p);
        1.0 - walk_tail(ln_dbinom_raw(k - 1.0, n, p, q), k - 1.0, 0.0, false, down)
    };
    r.clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Numerical building blocks
// ---------------------------------------------------------------------------------------------

/// Σ pmf(j) along j = start, start ± 1, … up to `end` inclusive, for a log-concave pmf past its
/// mode: pmf(start) = e^`ln_start` is the largest term and `ratio(j)` = pmf(next)/pmf(j) does not
/// grow along the walk. So after a term t with ratio ρ < 1 the rest is at most t·ρ/(1 − ρ), and
/// the walk stops once that is below [`TAIL_EPS`] of the sum (or at `end`, or after
/// [`MAX_TERMS`]). Terms are built by multiplication relative to the first, so the result is
/// e^`ln_start` times a sum of order 1 and cannot overflow.
fn walk_tail(ln_start: f64, start: f64, end: f64, up: bool, ratio: impl Fn(f64) -> f64) -> f64 {
    if ln_start.is_nan() || ln_start <= -746.0 {
        // The largest term underflows (or is 0/NaN); so does the sum of at most MAX_TERMS of them.
        return 0.0;
    }
    let step = if up { 1.0 } else { -1.0 };
    let mut sum = 1.0f64;
    let mut term = 1.0f64;
    let mut j = start;
    for _ in 0..MAX_TERMS {
        if (up && j >= end) || (!up && j <= end) {
            break;
        }
        let rho = ratio(j);
        term *= rho;
        sum += term;
        j += step;
        if term.is_nan() || term <= 0.0 || (rho < 1.0 && term * rho / (1.0 - rho) < TAIL_EPS * sum)
        {
            break;
        }
    }
    ln_start.exp() * sum
}

/// ln of the hypergeometric pmf: x successes in `draws` from `successes` + `failures`, via
/// Loader's (2000) identity dhyper = p₁·p₂/p₃ of three saddle-point binomial terms with
/// p = draws/total (R's `dhyper`). All arguments whole numbers.
fn ln_dhyper(x: f64, successes: f64, failures: f64, draws: f64) -> f64 {
    if x < 0.0 || x > successes || draws - x < 0.0 || draws - x > failures {
        return f64::NEG_INFINITY;
    }
    if draws == 0.0 {
        return 0.0;
    }
    let total = successes + failures;
    let p = draws / total;
    let q = (total - draws) / total;
    ln_dbinom_raw(x, successes, p, q) + ln_dbinom_raw(draws - x, failures, p, q)
        - ln_dbinom_raw(draws, total, p, q)
}

/// ln of the binomial pmf C(n, x) pᵡ qⁿ⁻ˣ (q = 1 − p given separately for accuracy) by
/// Loader's saddle-point form ln pmf = stirlerr(n) − stirlerr(x) − stirlerr(n−x)
/// − bd0(x, np) − bd0(n−x, nq) − ½ ln(2π x (n−x)/n), accurate to ~1e-14 absolute at any n
/// (Loader 2000, §2; R's `dbinom_raw`).
fn ln_dbinom_raw(x: f64, n: f64, p: f64, q: f64) -> f64 {
    if p == 0.0 {
        return if x == 0.0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if q == 0.0 {
        return if x == n { 0.0 } else { f64::NEG_INFINITY };
    }
    if x < 0.0 || x > n {
        return f64::NEG_INFINITY;
    }
    if x == 0.0 {
        if n == 0.0 {
            return 0.0;
        }
        return if p < 0.1 {
            -bd0(n, n * q) - n * p
        } else {
            n * q.ln()
        };
    }
    if x == n {
        return if q < 0.1 {
            -bd0(n, n * p) - n * q
        } else {
            n * p.ln()
        };
    }
    let lc = stirlerr(n) - stirlerr(x) - stirlerr(n - x) - bd0(x, n * p) - bd0(n - x, n * q);
    let lf = LN_2PI + x.ln() + (-x / n).ln_1p();
    lc - 0.5 * lf
}

/// Stirling's error ln n! − ln(√(2πn)(n/e)ⁿ) for whole n ≥ 0 (Loader 2000, §3): summed logs
/// for n ≤ 15 (absolute error ~1e-15), the asymptotic series 1/(12n) − 1/(360n³) + … beyond,
/// truncated where the next term is below 1e-16.
fn stirlerr(n: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if n <= 15.0 {
        if n <= 0.0 {
            return 0.0;
        }
        let mut ln_fact = 0.0;
        let mut k = 2.0;
        while k <= n {
            ln_fact += f64::ln(k);
            k += 1.0;
        }
        return ln_fact - (n + 0.5) * n.ln() + n - LN_SQRT_2PI;
    }
    let nn = n * n;
    if n > 500.0 {
        return (S0 - S1 / nn) / n;
    }
    if n > 80.0 {
        return (S0 - (S1 - S2 / nn) / nn) / n;
    }
    if n > 35.0 {
        return (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n;
    }
    (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
}

/// The deviance term bd0(x, m) = x ln(x/m) + m − x, by a cancellation-free series when x is near
/// m (Loader 2000, §4).
fn bd0(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        let v = (x - m) / (x + m);
        let v2 = v * v;
        let mut s = (x - m) * v;
        let mut ej = 2.0 * x * v;
        for j in 1..1000 {
            ej *= v2;
            let s1 = s + ej / (2 * j + 1) as f64;
            if s1 == s {
                return s1;
            }
            s = s1;
        }
        return s;
    }
    x * (x / m).ln() + m - x
}

/// Upper tail 1 − Φ(z) of the standard normal distribution, ~1e-14 relative (see [`erfc`]);
/// NaN → 1.
fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    0.5 * erfc(z * std::f64::consts::FRAC_1_SQRT_2)
}

/// Complementary error function. |x| < 2: 1 − erf from the all-positive series
/// erf x = 2/√π · e^{−x²} Σ 2ⁿ x^{2n+1}/(1·3···(2n+1)) (Abramowitz & Stegun 7.1.6); x ≥ 2: the
/// continued fraction erfc x = e^{−x²}/√π · 1/(x + ½/(x + 1/(x + (3/2)/(x + …)))) (A&S 7.1.14)
/// by the modified Lentz method (Numerical Recipes, 3rd ed., §5.2); erfc(−x) = 2 − erfc x.
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return 1.0;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x > 27.0 {
        return 0.0; // e^{−729} is below the smallest normal f64
    }
    let ex = (-x * x).exp();
    if x < 2.0 {
        let x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        for k in 1..200 {
            term *= x2 / (2 * k + 1) as f64;
            sum += term;
            if term < 1e-17 * sum {
                break;
            }
        }
        return 1.0 - std::f64::consts::FRAC_2_SQRT_PI * ex * sum;
    }
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0f64;
    for k in 1..1000 {
        let a = 0.5 * k as f64;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        d = 1.0 / d;
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    0.5 * std::f64::consts::FRAC_2_SQRT_PI * ex / f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    fn assert_close(a: f64, b: f64, rel: f64, what: &str) {
        assert!(
            close(a, b, rel),
            "{what}: got {a:e}, want {b:e} (rel {rel:e})"
        );
    }

    /// C(n, k) exactly, for the small brute-force checks.
    fn choose(n: u64, k: u64) -> u128 {
        if k > n {
            return 0;
        }
        (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
    }

    /// Mid-rank of `v` among `all`, computed directly: #less + (#equal + 1)/2.
    fn mid_rank(v: f64, all: &[f64]) -> f64 {
        let less = all.iter().filter(|&&w| w < v).count() as f64;
        let equal = all.iter().filter(|&&w| w == v).count() as f64;
        less + (equal + 1.0) / 2.0
    }

    // ---- numerical building blocks ----

    #[test]
    fn normal_tail_matches_high_precision_values() {
        // 1 − Φ(z) from mpmath at 50 digits.
        let want = [
            (0.0, 0.5),
            (0.5, 0.308_537_538_725_986_9),
            (1.0, 0.158_655_253_931_457_05),
            (1.96, 0.024_997_895_148_220_436),
            (2.5, 0.006_209_665_325_776_135),
            (3.0, 0.001_349_898_031_630_094_5),
            (5.0, 2.866_515_718_791_939e-7),
            (8.0, 6.220_960_574_271_784e-16),
            (10.0, 7.619_853_024_160_526e-24),
            (20.0, 2.753_624_118_606_233_7e-89),
            (-1.0, 0.841_344_746_068_542_9),
            (-3.0, 0.998_650_101_968_369_9),
        ];
        for (z, p) in want {
            assert_close(normal_sf(z), p, 1e-13, &format!("normal_sf({z})"));
        }
        // x = 2, where the continued fraction takes over: it gives 6.6e-16 relative there, the
        // series (1 − erf, with 0.5 % of 1 left) 5e-14.
        assert_close(erfc(2.0), 0.004_677_734_981_047_266, 4e-15, "erfc(2)");
        // The continued fraction stops once converged (|δ − 1| < 1e-16): within 1e-15 of mpmath
        // here, where running on through all 1000 steps would drift to 2e-14.
        assert_close(
            erfc(5.657),
            1.242_111_059_226_341_4e-15,
            4e-15,
            "erfc(5.657)",
        );
        assert_close(erfc(20.0), 5.395_865_611_607_901e-176, 4e-15, "erfc(20)");
        assert_eq!(normal_sf(f64::INFINITY), 0.0);
        assert_eq!(normal_sf(f64::NEG_INFINITY), 1.0);
        assert_eq!(normal_sf(f64::NAN), 1.0);
    }

    #[test]
    fn saddle_point_pmfs_match_exact_ratios() {
        for n in 0..=40u64 {
            for x in 0..=n {
                for p in [0.01f64, 0.3, 0.5, 0.93] {
                    let exact =
                        choose(n, x) as f64 * p.powi(x as i32) * (1.0 - p).powi((n - x) as i32);
                    let got = ln_dbinom_raw(x as f64, n as f64, p, 1.0 - p).exp();
                    assert_close(got, exact, 1e-12, &format!("dbinom({x}; {n}, {p})"));
                }
            }
        }
        for (k, f, d) in [(5u64, 7u64, 6u64), (20, 30, 25), (3, 60, 10), (40, 40, 40)] {
            let all = choose(k + f, d) as f64;
            for x in 0..=k.min(d) {
                let exact = (choose(k, x) * choose(f, d - x)) as f64 / all;
                let got = ln_dhyper(x as f64, k as f64, f as f64, d as f64).exp();
                assert_close(got, exact, 1e-12, &format!("dhyper({x}; {k}, {f}, {d})"));
            }
        }
    }

    #[test]
    fn tail_walks_stop_at_their_end_and_when_the_rest_is_negligible() {
        // Up to `end` inclusive, both ways: 1 + ½ + ¼ + ⅛ (the ratio does not vanish at the end,
        // unlike a pmf's, so only the end bound stops it), scaled by e^ln_start.
        assert_eq!(walk_tail(0.0, 0.0, 3.0, true, |_| 0.5), 1.875);
        assert_eq!(walk_tail(0.0, 5.0, 2.0, false, |_| 0.5), 1.875);
        assert_close(
            walk_tail(2f64.ln(), 0.0, 3.0, true, |_| 0.5),
            3.75,
            1e-15,
            "scaled",
        );
        // A geometric tail with ratio 0.999 sums to 1/(1 − 0.999) = 1000: the stop after a term
        // t once t·ρ/(1 − ρ) < 1e-17 of the sum leaves out less than the ~4e-14 that summing
        // 39 000 terms rounds by; a stop on t·ρ·(1 − ρ) would leave out 1e-11.
        let rho = 0.999;
        let got = walk_tail(0.0, 0.0, 1e9, true, |_| rho);
        assert_close(got, 1.0 / (1.0 - rho), 1e-12, "geometric");
        // A start term that is NaN or underflows gives 0, not NaN.
        assert_eq!(walk_tail(f64::NAN, 0.0, 10.0, true, |_| 0.5), 0.0);
        assert_eq!(walk_tail(-800.0, 0.0, 10.0, true, |_| 0.5), 0.0);
    }

    #[test]
    fn stirling_error_matches_high_precision_values_in_every_branch() {
        // ln n! − ln(√(2πn)(n/e)ⁿ) from mpmath's loggamma at 50 digits. The summed-log branch
        // (n ≤ 15) loses ~1e-15 to cancellation; the series branches are accurate to their
        // truncation (1.1e-16 at n = 16, below 3e-17 at the first n of the others), so a series
        // cut a term short anywhere inside its branch shows (that term at n = 20, 50, 100 is
        // 2e-15, 8e-16, 8e-14).
        let want = [
            (1.0, 0.081_061_466_795_327_26, 1e-15),
            (2.0, 0.041_340_695_955_409_3, 1e-15),
            (5.0, 0.016_644_691_189_821_192, 1e-15),
            (15.0, 0.005_554_733_551_962_801, 4e-15),
            (16.0, 0.005_207_655_919_609_640_4, 2e-16),
            (20.0, 0.004_166_319_691_996_922, 3e-17),
            (34.0, 0.002_450_909_735_438_118, 3e-17),
            (36.0, 0.002_314_755_290_514_684, 3e-17),
            (50.0, 0.001_666_644_446_983_365_5, 3e-17),
            (79.0, 0.001_054_846_686_941_008, 3e-17),
            (81.0, 0.001_028_801_357_710_777_5, 3e-17),
            (100.0, 0.000_833_330_555_634_914_7, 3e-17),
            (499.0, 0.000_167_000_645_646_607, 3e-17),
            (501.0, 0.000_166_333_976_579_932_7, 3e-17),
            (1e6, 8.333_333_333_333_056e-8, 3e-17),
        ];
        for (n, e, tol) in want {
            let got = stirlerr(n);
            assert!(
                (got - e).abs() <= tol,
                "stirlerr({n}) = {got:e}, want {e:e}"
            );
        }
        assert_eq!(stirlerr(0.0), 0.0);
    }

    #[test]
    fn binomial_pmf_is_accurate_at_a_million_trials() {
        // ln of the Binomial(10⁶, p) pmf against mpmath (loggamma at 50 digits), with p and 1 − p
        // exact in binary so the reference is unambiguous. Near the mean the deviance terms
        // cancel to a few hundredths: Loader's series keeps them to ~1e-15, where
        // x·ln(x/m) + m − x would lose 1e-12 to 1e-10.
        for (x, p, want) in [
            (500_100.0, 0.5, -7.153_546_861_760_211),
            (250_300.0, 0.25, -7.230_041_601_203_403),
            (249_000.0, 0.25, -9.657_410_750_198_524),
            (1000.0, 1.0 / 1024.0, -4.651_700_802_095_171),
            (30.0, 1.0 / 32_768.0, -2.626_714_120_602_448_5),
        ] {
            let got = ln_dbinom_raw(x, 1e6, p, 1.0 - p);
            assert!(
                (got - want).abs() < 1e-13,
                "dbinom({x}; 10⁶, {p}): {got}, want {want}"
            );
        }
        // Far from the mean the closed form is the accurate one: m = 0.95 for x = 1000, and
        // m = 20 for x = 5000 (v = (x − m)/(x + m) = 0.992, where 1000 terms of the series
        // would still be 1e-5 short).
        let got = ln_dbinom_raw(1000.0, 1e6, 1.0 / 1_048_576.0, 1.0 - 1.0 / 1_048_576.0);
        assert_close(got, -5_961.013_619_319_145, 1e-14, "far tail");
        let got = ln_dbinom_raw(5000.0, 20_480.0, 1.0 / 1024.0, 1.0 - 1.0 / 1024.0);
        assert_close(got, -23_294.615_818_692_884, 1e-14, "far tail, m = 20");
    }

    #[test]
    fn pmfs_of_impossible_or_degenerate_counts() {
        // Drawing nothing: only x = 0 is possible (not x = ±1).
        assert_eq!(ln_dhyper(0.0, 5.0, 5.0, 0.0), 0.0);
        assert_eq!(ln_dhyper(1.0, 5.0, 5.0, 0.0), f64::NEG_INFINITY);
        assert_eq!(ln_dhyper(-1.0, 5.0, 5.0, 0.0), f64::NEG_INFINITY);
        // More draws than the population holds: impossible, −∞ rather than NaN.
        assert_eq!(ln_dhyper(1.0, 1.0, 1.0, 3.0), f64::NEG_INFINITY);
        // Binomial with p = 0 or q = 0: all the mass on 0 or on n.
        assert_eq!(ln_dbinom_raw(0.0, 5.0, 0.0, 1.0), 0.0);
        assert_eq!(ln_dbinom_raw(2.0, 5.0, 0.0, 1.0), f64::NEG_INFINITY);
        assert_eq!(ln_dbinom_raw(5.0, 5.0, 1.0, 0.0), 0.0);
        assert_eq!(ln_dbinom_raw(3.0, 5.0, 1.0, 0.0), f64::NEG_INFINITY);
        // Outside 0..=n: −∞, not NaN.
        assert_eq!(ln_dbinom_raw(6.0, 5.0, 0.3, 0.7), f64::NEG_INFINITY);
        assert_eq!(ln_dbinom_raw(-1.0, 5.0, 0.3, 0.7), f64::NEG_INFINITY);
        // x = 0 and x = n with a tiny p (or q): ln qⁿ = n·ln(1 − p) = −1.000 000 500 000 333 3
        // (mpmath) for n = 10⁶, p = 10⁻⁶. Loader's deviance form keeps it to rounding; n·ln q
        // from the rounded q = 1 − p would be off by ~5e-11.
        let want = -1.000_000_500_000_333_3;
        let got = ln_dbinom_raw(0.0, 1e6, 1e-6, 1.0 - 1e-6);
        assert!((got - want).abs() < 1e-14, "x = 0: {got}");
        let got = ln_dbinom_raw(1e6, 1e6, 1.0 - 1e-6, 1e-6);
        assert!((got - want).abs() < 1e-14, "x = n: {got}");
    }

    // ---- Fisher ----

    #[test]
    fn fisher_matches_published_and_high_precision_values() {
        // Fisher's tea-tasting table [[3, 1], [1, 3]]: one-sided p = 17/70.
        assert_close(fisher_exact_greater(3, 4, 1, 4), 17.0 / 70.0, 1e-13, "tea");
        // 5 of 10 against 0 of 10: C(15,5)/C(20,10) = 3003/184756.
        assert_close(
            fisher_exact_greater(5, 10, 0, 10),
            3003.0 / 184_756.0,
            1e-13,
            "5/10",
        );
        // Hypergeometric tails from mpmath at 50 digits, up to 10⁶ probes per arm.
        let want = [
            ((30, 300, 15, 300), 0.014_514_568_965_313_984),
            ((7, 500, 0, 500), 0.007_649_096_049_977_085),
            ((1, 1_000_000, 0, 1_000_000), 0.5),
            ((520, 1_000_000, 480, 1_000_000), 0.108_666_637_197_288_67),
            (
                (10_100, 1_000_000, 10_000, 1_000_000),
                0.241_393_746_748_658_78,
            ),
            (
                (10_500, 1_000_000, 10_000, 1_000_000),
                2.297_447_224_402_059_9e-4,
            ),
            (
                (12_000, 1_000_000, 10_000, 1_000_000),
                3.400_899_700_854_713e-42,
            ),
        ];
        for ((ae, an, be, bn), p) in want {
            let got = fisher_exact_greater(ae, an, be, bn);
            assert_close(got, p, 1e-10, &format!("fisher({ae}/{an} vs {be}/{bn})"));
        }
    }

    #[test]
    fn fisher_matches_brute_force_on_every_small_table() {
        for an in 0..=6u64 {
            for bn in 0..=6u64 {
                for ae in 0..=an {
                    for be in 0..=bn {
                        let (k, d, total) = (ae + be, an, an + bn);
                        let f = total - k;
                        let num: u128 = (ae..=k.min(d))
                            .map(|j| choose(k, j) * choose(f, d - j))
                            .sum();
                        let want = num as f64 / choose(total, d) as f64;
                        let got = fisher_exact_greater(ae, an, be, bn);
                        assert!(
                            (got - want).abs() <= 1e-13,
                            "{ae}/{an} vs {be}/{bn}: got {got}, want {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fisher_is_monotone_and_its_two_tails_add_up() {
        // More lost packets on a ⇒ smaller p; more on b ⇒ larger p.
        let mut prev = 2.0;
        for ae in 0..=60 {
            let p = fisher_exact_greater(ae, 400, 20, 400);
            assert!(
                p < prev || (p == 0.0 && prev == 0.0),
                "a={ae}: {p} !< {prev}"
            );
            prev = p;
        }
        let mut prev = -1.0;
        for be in 0..=60 {
            let p = fisher_exact_greater(20, 400, be, 400);
            assert!(p > prev || p == 1.0, "b={be}: {p} !> {prev}");
            prev = p;
        }
        // P(X ≥ x) + P(X ≤ x) = 1 + P(X = x); the swapped call is P(X ≤ x). Large n, both
        // branches (walk up, complement of walk down).
        for (ae, an, be, bn) in [
            (10_050u64, 1_000_000u64, 10_000u64, 1_000_000u64),
            (9_900, 1_000_000, 10_000, 1_000_000),
            (300, 700, 250, 900),
        ] {
            let upper = fisher_exact_greater(ae, an, be, bn);
            let lower = fisher_exact_greater(be, bn, ae, an);
            let point = ln_dhyper(
                ae as f64,
                (ae + be) as f64,
                (an + bn - ae - be) as f64,
                an as f64,
            )
            .exp();
            assert_close(upper + lower, 1.0 + point, 1e-12, "two tails");
        }
    }

    #[test]
    fn fisher_far_below_the_mode_is_one_not_an_underflowed_upper_walk() {
        // 20 000 events over 2 × 10⁶ trials: X, the events among a's 10⁶, has mean 10 000, and
        // X is as well the count of the 20 000 events that fell on a's half (a sample of 20 000
        // without replacement), so by Hoeffding's bound P(X ≤ 5 999) ≤
        // exp(−2 · 4 001² / 20 000) ≈ e⁻¹⁶⁰⁰: P(X ≥ 6 000) is 1 to double precision. Summed
        // upward from 6 000 its first term (≈ e⁻¹⁶⁰⁰) would underflow to 0; the mode decides
        // which tail to sum, and here it must be the lower one.
        assert_eq!(
            fisher_exact_greater(6_000, 1_000_000, 14_000, 1_000_000),
            1.0
        );
        // 1 event where about 10 000 are expected: 1 − P(X = 0), P(X = 0) ≈ 2⁻²⁰⁰⁰⁰.
        assert_eq!(fisher_exact_greater(1, 1_000_000, 19_999, 1_000_000), 1.0);
    }

    #[test]
    fn fisher_edge_cases_are_defined() {
        assert_eq!(fisher_exact_greater(0, 0, 0, 0), 1.0);
        assert_eq!(fisher_exact_greater(0, 100, 0, 100), 1.0);
        assert_eq!(fisher_exact_greater(5, 10, 0, 0), 1.0);
        assert_eq!(fisher_exact_greater(0, 0, 5, 10), 1.0);
        assert_eq!(fisher_exact_greater(100, 100, 100, 100), 1.0);
        assert_eq!(fisher_exact_greater(11, 10, 0, 10), 1.0, "impossible count");
        assert_eq!(fisher_exact_greater(0, 10, 11, 10), 1.0, "impossible count");
        // All of a lost, none of b: 1/C(200, 100) underflows to 0 rather than going negative.
        let p = fisher_exact_greater(1_000_000, 1_000_000, 0, 1_000_000);
        assert_eq!(p, 0.0);
        let p = fisher_exact_greater(u64::MAX, u64::MAX, 0, u64::MAX);
        assert!((0.0..=1.0).contains(&p));
    }

    // ---- Mann–Whitney ----

    /// x: k ones and 10 − k zeros; y: ten zeros.
    fn ones_vs_zeros(k: usize) -> (Vec<f64>, Vec<f64>) {
        let x = (0..10).map(|i| if i < k { 1.0 } else { 0.0 }).collect();
        (x, vec![0.0; 10])
    }

    #[test]
    fn mann_whitney_reproduces_published_values() {
        for (k, published, exact) in [
            (5, 0.016, 3003.0 / 184_756.0),
            (6, 0.0054, 1001.0 / 184_756.0),
            (7, 0.0016, 286.0 / 184_756.0),
        ] {
            let (x, y) = ones_vs_zeros(k);
            let p = mann_whitney_exact_greater(&x, &y);
            assert_close(p, published, 0.05, &format!("k={k} published"));
            assert_close(p, exact, 1e-12, &format!("k={k} exact"));
        }
        // No ties, complete separation, 6 vs 6: 1/C(12, 6).
        let x: Vec<f64> = (6..12).map(f64::from).collect();
        let y: Vec<f64> = (0..6).map(f64::from).collect();
        assert_close(
            mann_whitney_exact_greater(&x, &y),
            1.0 / 924.0,
            1e-12,
            "6v6",
        );
        assert_close(
            mann_whitney_exact_greater(&y, &x),
            1.0,
            1e-12,
            "6v6 reversed",
        );
    }

    #[test]
    fn mann_whitney_matches_full_enumeration_with_ties() {
        let mut rng = StdRng::seed_from_u64(7);
        let sizes = [
            (1, 1),
            (1, 4),
            (2, 3),
            (3, 3),
            (4, 4),
            (3, 5),
            (5, 2),
            (1, 7),
            (6, 2),
        ];
        for &(n1, n2) in &sizes {
            for _ in 0..25 {
                let x: Vec<f64> = (0..n1).map(|_| f64::from(rng.gen_range(0..4u8))).collect();
                let y: Vec<f64> = (0..n2).map(|_| f64::from(rng.gen_range(0..4u8))).collect();
                let pooled: Vec<f64> = x.iter().chain(&y).copied().collect();
                let ranks: Vec<f64> = pooled.iter().map(|&v| mid_rank(v, &pooled)).collect();
                let obs: f64 = ranks[..n1].iter().sum();
                let n = n1 + n2;
                let (mut hits, mut all) = (0u32, 0u32);
                for mask in 0u32..1 << n {
                    if mask.count_ones() as usize != n1 {
                        continue;
                    }
                    all += 1;
                    let s: f64 = (0..n)
                        .filter(|i| mask >> i & 1 == 1)
                        .map(|i| ranks[i])
                        .sum();
                    if s >= obs - 1e-9 {
                        hits += 1;
                    }
                }
                let want = f64::from(hits) / f64::from(all);
                let got = mann_whitney_exact_greater(&x, &y);
                assert!(
                    (got - want).abs() < 1e-12,
                    "{x:?} vs {y:?}: {got} != {want}"
                );
            }
        }
    }

    #[test]
    fn mann_whitney_normal_fallback_agrees_with_exact_at_the_threshold() {
        // 40 vs 40 with a shift and ties: exact (N = 80) against the approximation used above it.
        let x: Vec<f64> = (0..40).map(|i| f64::from(i / 3 + 1)).collect();
        let y: Vec<f64> = (0..40).map(|i| f64::from(i / 3)).collect();
        let exact = mann_whitney_exact_greater(&x, &y);
        let mut x81 = x.clone();
        x81.push(f64::NAN); // ignored: still N = 80
        assert_eq!(mann_whitney_exact_greater(&x81, &y), exact);
        // The same data through the normal branch (computed here as that branch does).
        let (n1, n2, nn) = (40.0, 40.0, 80.0);
        let mut pooled: Vec<f64> = x.iter().chain(&y).copied().collect();
        pooled.sort_by(f64::total_cmp);
        let (ranks, ties) = doubled_mid_ranks(&pooled);
        let r1: f64 = x.iter().map(|&v| mid_rank(v, &pooled)).sum();
        assert_eq!(ranks.iter().sum::<u64>(), 80 * 81);
        let var = n1 * n2 / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
        let approx = normal_sf((r1 - n1 * (n1 + 1.0) / 2.0 - n1 * n2 / 2.0 - 0.5) / var.sqrt());
        assert!(exact > 0.001 && exact < 0.2, "exact {exact}");
        assert_close(approx, exact, 0.1, "normal vs exact");
        // And one more value takes the normal branch, staying close.
        let mut x41 = x.clone();
        x41.push(16.0);
        let p = mann_whitney_exact_greater(&x41, &y);
        assert!(p > 0.0 && p < exact, "{p} vs {exact}");
    }

    #[test]
    fn mann_whitney_is_exact_up_to_and_including_n_80() {
        // 40 values above 40 others: of the C(80, 40) equally likely ways to pick x's ranks
        // only the top 40 reach the observed rank sum, so p = 1/C(80, 40) ≈ 9.3e-24 — at
        // N = 80 = MW_EXACT_MAX_N the exact answer, not the normal tail (z = 799.5/√10 800 ≈ 7.7,
        // ≈ 7e-15).
        let x: Vec<f64> = (40..80).map(f64::from).collect();
        let y: Vec<f64> = (0..40).map(f64::from).collect();
        assert_close(
            mann_whitney_exact_greater(&x, &y),
            1.0 / choose(80, 40) as f64,
            1e-9,
            "N = 80",
        );
    }

    #[test]
    fn mann_whitney_past_n_80_is_the_tie_corrected_normal_tail_by_hand() {
        // 41 values above 40 others (N = 81): U = 41 · 40 = 1640 of its mean 820, σ² = 41 · 40 /
        // 12 · 82 without ties, z = (1640 − 820 − ½)/σ; all 41 equal and all 40 equal: Σ(t³ − t)
        // = 68 880 + 63 960, σ² = 41 · 40 / 12 · (82 − 132 840/(81 · 80)) = 8405. The tails
        // ½ erfc(z/√2) from Python's math.erfc, independent of this module's.
        let x: Vec<f64> = (40..81).map(f64::from).collect();
        let y: Vec<f64> = (0..40).map(f64::from).collect();
        assert_close(
            mann_whitney_exact_greater(&x, &y),
            4.922_455_575_675_162e-15,
            1e-9,
            "no ties",
        );
        assert_close(
            mann_whitney_exact_greater(&[1.0; 41], &[0.0; 40]),
            1.966_773_855_373_335_5e-19,
            1e-9,
            "two tied groups",
        );
    }

    #[test]
    fn mann_whitney_edge_cases_are_defined() {
        assert_eq!(mann_whitney_exact_greater(&[], &[]), 1.0);
        assert_eq!(mann_whitney_exact_greater(&[1.0], &[]), 1.0);
        assert_eq!(mann_whitney_exact_greater(&[f64::NAN], &[1.0]), 1.0);
        assert_eq!(mann_whitney_exact_greater(&[0.0; 10], &[0.0; 10]), 1.0);
        assert_eq!(mann_whitney_exact_greater(&[0.0; 50], &[0.0; 50]), 1.0);
        // −0 ties with +0.
        assert_eq!(mann_whitney_exact_greater(&[-0.0, -0.0], &[0.0, 0.0]), 1.0);
        let p = mann_whitney_exact_greater(&[f64::INFINITY, 5.0], &[f64::NEG_INFINITY, 1.0]);
        assert_close(p, 1.0 / 6.0, 1e-12, "infinities rank as extremes");
    }

    // ---- Wilcoxon signed rank ----

    #[test]
    fn wilcoxon_reproduces_published_values() {
        // Darwin's Zea mays differences (Fisher 1935, §17; SciPy's `wilcoxon` example): W⁻ = 24,
        // two-sided exact p = 0.041259765625, so one-sided 676/32768.
        let d = [
            6.0, 8.0, 14.0, 16.0, 23.0, 24.0, 28.0, 29.0, 41.0, -48.0, 49.0, 56.0, 60.0, -67.0,
            75.0,
        ];
        assert_close(
            wilcoxon_signed_rank_exact_greater(&d),
            676.0 / 32768.0,
            1e-12,
            "Darwin",
        );
        // Ten positive, distinct: 2⁻¹⁰.
        let d: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_close(
            wilcoxon_signed_rank_exact_greater(&d),
            1.0 / 1024.0,
            1e-12,
            "all +",
        );
    }

    #[test]
    fn wilcoxon_matches_full_enumeration_with_ties_and_zeros() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in 1..=8usize {
            for _ in 0..30 {
                let d: Vec<f64> = (0..n).map(|_| f64::from(rng.gen_range(-3..=3i8))).collect();
                let nz: Vec<f64> = d.iter().copied().filter(|&v| v != 0.0).collect();
                let abs: Vec<f64> = nz.iter().map(|v| v.abs()).collect();
                let ranks: Vec<f64> = abs.iter().map(|&v| mid_rank(v, &abs)).collect();
                let obs: f64 = nz
                    .iter()
                    .zip(&ranks)
                    .filter(|(v, _)| **v > 0.0)
                    .map(|(_, r)| r)
                    .sum();
                let m = nz.len();
                let hits = (0u32..1 << m)
                    .filter(|mask| {
                        let s: f64 = (0..m)
                            .filter(|i| mask >> i & 1 == 1)
                            .map(|i| ranks[i])
                            .sum();
                        s >= obs - 1e-9
                    })
                    .count();
                let want = hits as f64 / f64::from(1u32 << m);
                let got = wilcoxon_signed_rank_exact_greater(&d);
                assert!((got - want).abs() < 1e-12, "{d:?}: {got} != {want}");
            }
        }
    }

    #[test]
    fn wilcoxon_normal_fallback_agrees_with_exact_at_the_threshold() {
        // 60 differences with tied magnitudes, mostly positive.
        let d: Vec<f64> = (0..60)
            .map(|i| {
                let m = f64::from(i % 7 + 1);
                if i % 2 == 0 {
                    -0.7 * m
                } else {
                    m
                }
            })
            .collect();
        let exact = wilcoxon_signed_rank_exact_greater(&d);
        assert!(exact > 0.001 && exact < 0.2, "exact {exact}");
        let mut abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let (_, ties) = doubled_mid_ranks(&abs);
        let w: f64 = d
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|&v| mid_rank(v, &abs))
            .sum();
        let n = 60.0;
        let var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - ties / 48.0;
        let approx = normal_sf((w - n * (n + 1.0) / 4.0 - 0.5) / var.sqrt());
        assert_close(approx, exact, 0.1, "normal vs exact");
        let mut d61 = d.clone();
        d61.push(7.0);
        let p = wilcoxon_signed_rank_exact_greater(&d61);
        assert!(p > 0.0 && p < exact, "{p} vs {exact}");
    }

    #[test]
    fn wilcoxon_is_exact_up_to_and_including_n_60() {
        // 60 positive differences: of the 2⁶⁰ equally likely sign patterns only all-positive
        // reaches the largest rank sum, so p = 2⁻⁶⁰ ≈ 8.7e-19 — at n = 60 =
        // WILCOXON_EXACT_MAX_N the exact answer, not the normal tail (z = 914.5/√18 452.5 ≈ 6.7,
        // ≈ 8e-12).
        let d: Vec<f64> = (1..=60).map(f64::from).collect();
        assert_close(
            wilcoxon_signed_rank_exact_greater(&d),
            2f64.powi(-60),
            1e-9,
            "n = 60",
        );
    }

    #[test]
    fn wilcoxon_past_n_60_is_the_tie_corrected_normal_tail_by_hand() {
        // 61 positive differences: W = 61 · 62 / 2 = 1891, mean 61 · 62 / 4 = 945.5, σ² =
        // 61 · 62 · 123 / 24 = 19 382.75 when distinct, less Σ(t³ − t)/48 = (61³ − 61)/48 =
        // 4727.5 when all equal; z = (W − mean − ½)/σ. The tails ½ erfc(z/√2) from Python's
        // math.erfc, independent of this module's.
        let distinct: Vec<f64> = (1..=61).map(f64::from).collect();
        assert_close(
            wilcoxon_signed_rank_exact_greater(&distinct),
            5.695_854_626_224_474e-12,
            1e-9,
            "distinct",
        );
        assert_close(
            wilcoxon_signed_rank_exact_greater(&[1.0; 61]),
            2.948_784_302_250_645_6e-15,
            1e-9,
            "all tied",
        );
    }

    #[test]
    fn wilcoxon_edge_cases_are_defined() {
        assert_eq!(wilcoxon_signed_rank_exact_greater(&[]), 1.0);
        assert_eq!(wilcoxon_signed_rank_exact_greater(&[0.0, -0.0, 0.0]), 1.0);
        assert_eq!(wilcoxon_signed_rank_exact_greater(&[f64::NAN]), 1.0);
        assert_eq!(wilcoxon_signed_rank_exact_greater(&[0.0; 100]), 1.0);
        // Zeros and NaNs dropped: same as the three positive values alone, 2⁻³.
        let p = wilcoxon_signed_rank_exact_greater(&[0.0, 1.0, f64::NAN, 2.0, 0.0, 3.0]);
        assert_close(p, 0.125, 1e-12, "dropped");
        // All negative: p = 1.
        assert_close(
            wilcoxon_signed_rank_exact_greater(&[-1.0, -2.0]),
            1.0,
            1e-12,
            "neg",
        );
    }

    // ---- Onset scan ----

    fn normal(rng: &mut StdRng) -> f64 {
        // Box–Muller.
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    #[test]
    fn scan_whole_test_difference_is_an_onset_at_zero() {
        // Equal positive differences: T₀ = √n is the unique maximum over all flips and splits.
        let s = sign_flip_max_scan(&[0.02; 10], 3, 0, 0);
        assert_eq!(s.split, 0);
        assert!(s.exact);
        assert_close(s.statistic, 10f64.sqrt(), 1e-12, "statistic");
        assert_close(s.p_value, 1.0 / 1024.0, 1e-12, "p");
        // A shift of 1.5 s.d. throughout, 14 windows: detected, and placed early.
        let mut rng = StdRng::seed_from_u64(3);
        let (mut detected, mut splits) = (0, Vec::new());
        for _ in 0..20 {
            let d: Vec<f64> = (0..14).map(|_| 1.5 + normal(&mut rng)).collect();
            let s = sign_flip_max_scan(&d, 3, 0, 0);
            detected += usize::from(s.p_value < 0.01);
            splits.push(s.split);
        }
        splits.sort_unstable();
        assert!(detected >= 18, "{detected} of 20 detected");
        assert!(splits[10] <= 2, "median split {}: {splits:?}", splits[10]);
    }

    #[test]
    fn scan_finds_a_late_onset() {
        let mut rng = StdRng::seed_from_u64(5);
        let d: Vec<f64> = (0..16)
            .map(|i| 0.3 * normal(&mut rng) + if i >= 9 { 2.0 } else { 0.0 })
            .collect();
        let s = sign_flip_max_scan(&d, 3, 0, 0);
        assert!(s.exact);
        assert!(s.p_value < 0.01, "{s:?}");
        assert!((8..=10).contains(&s.split), "{s:?}");
        // Control arm worse instead: no evidence of the platform being worse.
        let neg: Vec<f64> = d.iter().map(|v| -v).collect();
        assert!(sign_flip_max_scan(&neg, 3, 0, 0).p_value > 0.5);
    }

    #[test]
    fn scan_holds_its_level_under_the_null() {
        // 200 null replicates of 12 windows, symmetric differences of varying scale.
        let mut rng = StdRng::seed_from_u64(2024);
        let mut rejections = 0;
        for _ in 0..200 {
            let d: Vec<f64> = (0..12)
                .map(|i| normal(&mut rng) * (1.0 + f64::from(i % 3)))
                .collect();
            if sign_flip_max_scan(&d, 2, 0, 0).p_value <= 0.05 {
                rejections += 1;
            }
        }
        // Expected ≤ 10; binomial(200, 0.05) s.d. ≈ 3.1, so 19 is three s.d. above.
        assert!(rejections <= 19, "{rejections} of 200 rejected at 0.05");
    }

    #[test]
    fn scan_monte_carlo_is_deterministic_and_agrees_with_enumeration() {
        let mut rng = StdRng::seed_from_u64(9);
        let d: Vec<f64> = (0..40)
            .map(|i| normal(&mut rng) + if i >= 30 { 0.8 } else { 0.0 })
            .collect();
        let a = sign_flip_max_scan(&d, 4, 2000, 42);
        let b = sign_flip_max_scan(&d, 4, 2000, 42);
        assert_eq!(a, b);
        assert!(!a.exact);
        assert!(a.p_value >= 1.0 / 2001.0 && a.p_value <= 1.0);
        assert_eq!(sign_flip_max_scan(&d, 4, 0, 42).p_value, 1.0);
        // Internal check: on 14 windows, Monte Carlo (forced through the same code) ≈ exact.
        let (d14, weights) = scan_setup(&d[26..], 3).expect("14 non-zero windows");
        let exact = sign_flip_max_scan(&d[26..], 3, 0, 0).p_value;
        let (obs, _) = scan_max(&d14, &weights, |_| false);
        let mut rng = StdRng::seed_from_u64(1);
        let runs = 20_000;
        let hits = (0..runs)
            .filter(|_| {
                let mask: u32 = rng.gen();
                scan_max(&d14, &weights, |i| mask >> i & 1 == 1).0 >= obs - 1e-10
            })
            .count();
        let mc = hits as f64 / f64::from(runs);
        let sd = (exact * (1.0 - exact) / f64::from(runs)).sqrt();
        assert!(
            (mc - exact).abs() < 4.0 * sd + 1e-9,
            "mc {mc} exact {exact}"
        );
    }

    #[test]
    fn scan_statistic_split_and_p_by_hand() {
        // d = (−1, 2, 2), rms = √3: T₀ = 3/(√3·√3) = 1, T₁ = 4/(√2·√3) = 4/√6 ≈ 1.633 and
        // T₂ = 2/√3 ≈ 1.155, so the split is 1 and T = 4/√6. Among the 8 sign flips, T₁* ≥ 4/√6
        // and T₀* = (±1 ± 2 ± 2)/3 ≥ 4/√6 both need the two 2s positive, T₂* ≤ 2/√3 never
        // reaches it: 2 flips of 8, p = ¼.
        let s = sign_flip_max_scan(&[-1.0, 2.0, 2.0], 1, 0, 0);
        assert!(s.exact);
        assert_eq!(s.split, 1);
        assert_close(s.statistic, 4.0 / 6f64.sqrt(), 1e-12, "statistic");
        assert_close(s.p_value, 0.25, 1e-12, "p");
        // A tie: d = (1, 1, −1, 1), rms = 1, T₀ = 2/√4 = 1 = T₃ = 1/√1 (T₁ = 1/√3, T₂ = 0); the
        // earliest split wins. Flips reaching 1: the 8 with the last window positive (T₃* = 1),
        // and of the 8 with it negative only (1, 1, 1, −1) (T₀* = 2/2): p = 9/16.
        let s = sign_flip_max_scan(&[1.0, 1.0, -1.0, 1.0], 1, 0, 0);
        assert_eq!(s.split, 0);
        assert_close(s.statistic, 1.0, 1e-12, "tie statistic");
        assert_close(s.p_value, 9.0 / 16.0, 1e-12, "tie p");
    }

    #[test]
    fn scan_monte_carlo_p_is_one_plus_hits_over_one_plus_samples() {
        // 17 windows (one past SCAN_EXACT_MAX_N), all equal and positive: T = T₀ = √17, and any
        // flip lowers every tail sum, so only the unflipped series reaches it. A random flip of
        // 17 windows is that one with probability 2⁻¹⁷: the 10 samples hit none, p = 1/11.
        let s = sign_flip_max_scan(&[0.5; 17], 1, 10, 7);
        assert!(!s.exact);
        assert_eq!(s.split, 0);
        assert_close(s.statistic, 17f64.sqrt(), 1e-12, "statistic");
        assert_close(s.p_value, 1.0 / 11.0, 1e-12, "no sample reaches T");
        // All equal and negative: T = T₁₆ = −1 (the shortest tail), and every flip has
        // T₁₆* = ±1 ≥ −1: all 10 samples hit, p = 11/11.
        let s = sign_flip_max_scan(&[-0.5; 17], 1, 10, 7);
        assert_eq!(s.split, 16);
        assert_close(s.statistic, -1.0, 1e-12, "negative statistic");
        assert_eq!(s.p_value, 1.0);
        // 16 windows are still enumerated: 2⁻¹⁶ exactly.
        let s = sign_flip_max_scan(&[0.5; 16], 1, 10, 7);
        assert!(s.exact);
        assert_eq!(s.p_value, 1.0 / 65_536.0);
    }

    #[test]
    fn scan_ties_are_judged_with_a_relative_tolerance() {
        // Eight windows of 1 and one of η = 2e-10: T = T₀ = (8 + η)/(3·rms) ≈ 2.83, and flipping
        // the η window gives (8 − η)/(3·rms), 2η/(8 + η) = 5e-11 below T relatively: within the
        // documented 1e-10, so it counts as reaching T. Every other flip is far below (a flipped
        // 1 costs 2/(3·rms); T_k for k ≥ 1 is at most (7 + η)/(√8·rms)): p = 2/512.
        let mut d = vec![1.0; 8];
        d.push(2e-10);
        let s = sign_flip_max_scan(&d, 1, 0, 0);
        assert_eq!(s.split, 0);
        assert_close(s.p_value, 2.0 / 512.0, 1e-12, "near tie counted");
    }

    #[test]
    fn scan_monte_carlo_counts_the_seeded_flips() {
        // The Monte Carlo p is (1 + #{T* ≥ T})/(1 + samples) over the flips drawn from
        // StdRng::seed_from_u64(seed) (one u64 per 64 windows, a set bit flipping its window),
        // recomputed here from the definition of T_k, without scan_setup or scan_max.
        let d: Vec<f64> = (0..20)
            .map(|i| {
                if i < 12 {
                    [0.3, -0.5, 0.1, -0.2][i % 4]
                } else {
                    [0.9, 0.4, 1.1, 0.6][i % 4]
                }
            })
            .collect();
        let (n, min_tail, samples, seed) = (20usize, 3usize, 400usize, 11u64);
        let t_of = |flip: &dyn Fn(usize) -> bool| -> f64 {
            let v: Vec<f64> = d
                .iter()
                .enumerate()
                .map(|(i, &x)| if flip(i) { -x } else { x })
                .collect();
            let rms = (v.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
            (0..=n - min_tail)
                .map(|k| v[k..].iter().sum::<f64>() / (((n - k) as f64).sqrt() * rms))
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let t = t_of(&|_| false);
        let bar = t - 1e-10 * t.abs().max(1.0);
        let mut rng = StdRng::seed_from_u64(seed);
        let hits = (0..samples)
            .filter(|_| {
                let w: u64 = rng.gen();
                t_of(&|i| w >> i & 1 == 1) >= bar
            })
            .count();
        let s = sign_flip_max_scan(&d, min_tail, samples, seed);
        assert!(!s.exact);
        assert_close(s.statistic, t, 1e-12, "statistic");
        let want = (hits as f64 + 1.0) / (samples as f64 + 1.0);
        assert_close(s.p_value, want, 1e-12, "p");
        // The data carry an onset: some flips reach T, most do not.
        assert!(hits > 0 && hits < samples / 4, "{hits} of {samples}");
    }

    #[test]
    fn scan_edge_cases_are_defined() {
        let none = OnsetScan {
            p_value: 1.0,
            split: 0,
            statistic: 0.0,
            exact: true,
        };
        assert_eq!(sign_flip_max_scan(&[], 1, 100, 0), none);
        assert_eq!(sign_flip_max_scan(&[1.0, 2.0], 3, 100, 0), none);
        assert_eq!(sign_flip_max_scan(&[0.0; 30], 3, 100, 0), none);
        assert_eq!(sign_flip_max_scan(&[f64::NAN; 5], 0, 100, 0), none);
        // Non-finite windows count as 0 and keep their place; min_tail 0 acts as 1.
        let s = sign_flip_max_scan(&[f64::NAN, -1.0, f64::INFINITY, 1.0, 1.0], 0, 0, 0);
        assert_eq!(s.split, 3);
        assert!(s.p_value > 0.0 && s.p_value <= 1.0);
        // Huge and tiny magnitudes do not overflow.
        let s = sign_flip_max_scan(&[1e300; 8], 1, 0, 0);
        assert_close(s.p_value, 1.0 / 256.0, 1e-12, "huge");
        let s = sign_flip_max_scan(&[1e-310; 8], 1, 0, 0);
        assert_close(s.p_value, 1.0 / 256.0, 1e-12, "tiny");
    }

    // ---- Multiplicity ----

    #[test]
    fn holm_and_bh_match_worked_examples() {
        let p = [0.01, 0.04, 0.03, 0.005];
        // R: p.adjust(c(.01,.04,.03,.005), "holm") = 0.03 0.06 0.06 0.02
        let h = holm(&p);
        for (got, want) in h.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert_close(*got, want, 1e-12, "holm");
        }
        // R: p.adjust(c(.01,.04,.03,.005), "BH") = 0.02 0.04 0.04 0.02
        let q = benjamini_hochberg(&p);
        for (got, want) in q.iter().zip([0.02, 0.04, 0.04, 0.02]) {
            assert_close(*got, want, 1e-12, "bh");
        }
        assert!(holm(&[]).is_empty());
        assert!(benjamini_hochberg(&[]).is_empty());
        assert_eq!(holm(&[0.2]), vec![0.2]);
        assert_eq!(benjamini_hochberg(&[0.2]), vec![0.2]);
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
        assert_eq!(holm(&[f64::NAN, 0.01]), vec![1.0, 0.02]);
        assert_eq!(
            benjamini_hochberg(&[f64::NAN, 0.01, -3.0]),
            vec![1.0, 0.015, 0.0]
        );
    }

    #[test]
    fn adjustments_are_monotone_bounded_and_ordered() {
        let mut rng = StdRng::seed_from_u64(13);
        for m in 1..30 {
            let p: Vec<f64> = (0..m).map(|_| rng.gen::<f64>().powi(3)).collect();
            let h = holm(&p);
            let q = benjamini_hochberg(&p);
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
            for w in order.windows(2) {
                assert!(h[w[0]] <= h[w[1]] && q[w[0]] <= q[w[1]], "monotone");
            }
            for i in 0..m {
                assert!(
                    p[i] <= q[i] && q[i] <= h[i] && h[i] <= 1.0,
                    "p ≤ BH ≤ Holm ≤ 1"
                );
            }
        }
    }

    // ---- Clopper–Pearson ----

    #[test]
    fn clopper_pearson_matches_published_values() {
        let (lo, hi) = clopper_pearson(0, 1000, 0.95);
        assert_eq!(lo, 0.0);
        assert_close(hi, 0.003_682_083_896_865_672, 1e-12, "0/1000");
        assert_close(hi, 0.00368, 0.01, "0/1000 published");
        let (_, hi) = clopper_pearson(0, 300, 0.95);
        assert_close(hi, 0.012_220_974_694_293_554, 1e-12, "0/300");
        assert_close(hi, 0.0122, 0.01, "0/300 published");
        let (lo, hi) = clopper_pearson(1, 200, 0.95);
        assert_close(lo, 1.265_810_278_670_182_5e-4, 1e-10, "1/200 lower");
        assert_close(hi, 0.027_541_898_457_205_624, 1e-10, "1/200 upper");
        assert_close(hi, 0.0275, 0.01, "1/200 published");
        // Textbook intervals (mpmath to 17 digits): 3/10 → (0.0667, 0.6525), 5/50 →
        // (0.0333, 0.2181).
        let (lo, hi) = clopper_pearson(3, 10, 0.95);
        assert_close(lo, 0.066_739_511_177_734_47, 1e-10, "3/10 lower");
        assert_close(hi, 0.652_452_850_059_997_3, 1e-10, "3/10 upper");
        let (lo, hi) = clopper_pearson(5, 50, 0.95);
        assert_close(lo, 0.033_275_093_589_022_474, 1e-10, "5/50 lower");
        assert_close(hi, 0.218_135_366_434_202_27, 1e-10, "5/50 upper");
        let (lo, hi) = clopper_pearson(999, 1000, 0.95);
        assert_close(lo, 0.994_441_075_720_173_3, 1e-10, "999/1000 lower");
        assert_close(hi, 0.999_974_682_512_508_7, 1e-10, "999/1000 upper");
    }

    #[test]
    fn clopper_pearson_edges_and_symmetry() {
        assert_eq!(clopper_pearson(0, 0, 0.95), (0.0, 1.0));
        assert_eq!(clopper_pearson(5, 3, 0.95), (0.0, 1.0));
        assert_eq!(clopper_pearson(1, 3, f64::NAN), (0.0, 1.0));
        assert_eq!(clopper_pearson(1, 3, 1.0), (0.0, 1.0));
        let (lo, hi) = clopper_pearson(10, 10, 0.95);
        assert_eq!(hi, 1.0);
        assert_close(lo, 0.025f64.powf(0.1), 1e-13, "10/10 lower");
        let (lo, hi) = clopper_pearson(3, 10, -1.0);
        assert!(lo > 0.0 && lo <= 0.3 && (0.3..1.0).contains(&hi));
        for (k, n) in [
            (1u64, 7u64),
            (3, 10),
            (17, 300),
            (40, 100_000),
            (2, 1_000_000),
        ] {
            let (lo, hi) = clopper_pearson(k, n, 0.9);
            let (lo2, hi2) = clopper_pearson(n - k, n, 0.9);
            assert_close(lo, 1.0 - hi2, 1e-9, "symmetry lower");
            assert_close(hi, 1.0 - lo2, 1e-9, "symmetry upper");
            assert!(lo < k as f64 / n as f64 && (k as f64 / n as f64) < hi);
            // The bounds solve their defining equations.
            assert_close(
                binom_sf(k as f64, n as f64, lo),
                0.05,
                1e-9,
                "P(X ≥ k | lower)",
            );
            assert_close(
                binom_cdf(k as f64, n as f64, hi),
                0.05,
                1e-9,
                "P(X ≤ k | upper)",
            );
        }
    }

    #[test]
    fn binomial_tails_match_direct_sums_in_both_directions() {
        // Every k of Binomial(10, 0.3) and Binomial(100, 0.3) (both sides of the mode, so both
        // walks and both complements) against the pmf summed directly.
        for (n, p) in [(10u64, 0.3f64), (100, 0.3), (4, 0.5)] {
            let pmf =
                |j: u64| choose(n, j) as f64 * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32);
            for k in 0..=n {
                let cdf: f64 = (0..=k).map(pmf).sum();
                let sf: f64 = (k..=n).map(pmf).sum();
                let (kf, nf) = (k as f64, n as f64);
                assert_close(
                    binom_cdf(kf, nf, p),
                    cdf,
                    1e-12,
                    &format!("P(X ≤ {k}; {n}, {p})"),
                );
                assert_close(
                    binom_sf(kf, nf, p),
                    sf,
                    1e-12,
                    &format!("P(X ≥ {k}; {n}, {p})"),
                );
            }
        }
        // Far tails, exact by rational arithmetic (Python's fractions): summed from the right
        // end, not as 1 − (almost 1).
        let far = 1.364_232_078_033_009_2e-10;
        assert_close(
            binom_cdf(400.0, 1000.0, 0.5),
            far,
            1e-11,
            "P(X ≤ 400; 1000)",
        );
        assert_close(binom_sf(600.0, 1000.0, 0.5), far, 1e-11, "P(X ≥ 600; 1000)");
        // So far out that the first term underflows: the tail holding the mode is 1, the other 0.
        assert_eq!(binom_cdf(9000.0, 10_000.0, 0.5), 1.0);
        assert_eq!(binom_sf(1000.0, 10_000.0, 0.5), 1.0);
        assert_eq!(binom_cdf(1000.0, 10_000.0, 0.5), 0.0);
        assert_eq!(binom_sf(9000.0, 10_000.0, 0.5), 0.0);
    }

    #[test]
    fn binomial_tails_at_the_edges() {
        // P(X ≤ k): k < 0 → 0, k ≥ n → 1 (whatever p), p = 0 → 1, p = 1 → 0 below n, NaN → 1.
        assert_eq!(binom_cdf(-1.0, 10.0, 0.3), 0.0);
        assert_eq!(binom_cdf(10.0, 10.0, 0.3), 1.0);
        assert_eq!(binom_cdf(10.0, 10.0, 1.0), 1.0);
        assert_eq!(binom_cdf(3.0, 10.0, 0.0), 1.0);
        assert_eq!(binom_cdf(3.0, 10.0, 1.0), 0.0);
        assert_eq!(binom_cdf(3.0, 10.0, f64::NAN), 1.0);
        // P(X ≥ k): k ≤ 0 → 1, k > n → 0 (whatever p), p = 0 → 0, p = 1 → 1, NaN → 0.
        assert_eq!(binom_sf(0.0, 10.0, 0.3), 1.0);
        assert_eq!(binom_sf(11.0, 10.0, 0.3), 0.0);
        assert_eq!(binom_sf(11.0, 10.0, 1.0), 0.0);
        assert_eq!(binom_sf(3.0, 10.0, 0.0), 0.0);
        assert_eq!(binom_sf(3.0, 10.0, 1.0), 1.0);
        assert_eq!(binom_sf(3.0, 10.0, f64::NAN), 0.0);
    }

    // ---- Robustness ----

    #[test]
    fn nothing_panics_and_every_p_is_a_probability() {
        let mut rng = StdRng::seed_from_u64(99);
        let specials = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1e308,
            -1e-308,
            f64::MIN_POSITIVE,
        ];
        let draw = |rng: &mut StdRng| -> Vec<f64> {
            let n = rng.gen_range(0..12);
            (0..n)
                .map(|_| {
                    if rng.gen_bool(0.3) {
                        specials[rng.gen_range(0..specials.len())]
                    } else {
                        f64::from(rng.gen_range(-3..=3i8))
                    }
                })
                .collect()
        };
        let prob = |p: f64| (0.0..=1.0).contains(&p);
        for _ in 0..300 {
            let x = draw(&mut rng);
            let y = draw(&mut rng);
            assert!(prob(mann_whitney_exact_greater(&x, &y)), "{x:?} {y:?}");
            assert!(prob(wilcoxon_signed_rank_exact_greater(&x)), "{x:?}");
            let s = sign_flip_max_scan(&x, rng.gen_range(0..4), 50, 1);
            assert!(prob(s.p_value) && s.statistic.is_finite(), "{x:?} {s:?}");
            assert!(holm(&x).into_iter().all(prob));
            assert!(benjamini_hochberg(&y).into_iter().all(prob));
            let n = rng.gen_range(0..50u64);
            let k = rng.gen_range(0..60u64);
            let (lo, hi) = clopper_pearson(k, n, rng.gen_range(-0.5..1.5));
            assert!(prob(lo) && prob(hi) && lo <= hi, "{k}/{n}");
            let an = rng.gen_range(0..40u64);
            let bn = rng.gen_range(0..40u64);
            let p = fisher_exact_greater(rng.gen_range(0..45), an, rng.gen_range(0..45), bn);
            assert!(prob(p));
        }
    }

    #[test]
    fn stratified_limits_are_where_the_docs_put_them() {
        // A stratum of exactly STRATUM_MAX_N trials is computed: 1 event among 100 000, and it
        // fell in a's half: P(X ≥ 1) = 50 000 / 100 000.
        assert_close(
            stratified_exact_greater(&[(1, 50_000, 0, 50_000)]),
            0.5,
            1e-12,
            "at the bound",
        );
        // One trial more is refused (p = 1).
        assert_eq!(stratified_exact_greater(&[(1, 50_001, 0, 50_000)]), 1.0);
        // Every trial of b an event is possible, not refused: beside (1, 1, 0, 1), X₁ + X₂ ≥ 1
        // fails only when both coin-flip strata give 0, so P = 1 − ½ · ½.
        assert_close(
            stratified_exact_greater(&[(0, 1, 1, 1), (1, 1, 0, 1)]),
            0.75,
            1e-12,
            "b all events",
        );
        // Impossible counts in any stratum give 1, even beside one that alone would not: with
        // (0, 1, 2, 1) computed as if possible, X₂ = 1 always and P(X₁ ≥ 1) = 1 − 1/C(4, 2).
        assert_eq!(stratified_exact_greater(&[(2, 2, 0, 2), (0, 1, 2, 1)]), 1.0);
    }

    #[test]
    fn stratified_is_fisher_with_one_stratum_and_matches_enumeration() {
        for &(a, an, b, bn) in &[
            (5u64, 10u64, 0u64, 10u64),
            (3, 8, 1, 9),
            (0, 5, 4, 5),
            (7, 7, 0, 3),
        ] {
            let s = stratified_exact_greater(&[(a, an, b, bn)]);
            let f = fisher_exact_greater(a, an, b, bn);
            assert!((s - f).abs() < 1e-12 * f.max(1e-300) + 1e-15, "{s} vs {f}");
        }
        // Two strata by brute force over every pair of hypergeometric outcomes.
        let strata = [(2u64, 5u64, 1u64, 5u64), (3, 6, 0, 4)];
        let pmf = |x: u64, (a, an, b, bn): (u64, u64, u64, u64)| {
            let c = |n: u64, k: u64| -> f64 {
                if k > n {
                    return 0.0;
                }
                (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
            };
            let m = a + b;
            c(m, x) * c(an + bn - m, an - x.min(an)) / c(an + bn, an)
        };
        let mut brute = 0.0;
        for x in 0..=3 {
            for y in 0..=3 {
                if x + y >= 5 {
                    brute += pmf(x, strata[0]) * pmf(y, strata[1]);
                }
            }
        }
        let s = stratified_exact_greater(&strata);
        assert!((s - brute).abs() < 1e-12, "{s} vs {brute}");
        assert_eq!(stratified_exact_greater(&[]), 1.0);
        assert_eq!(stratified_exact_greater(&[(5, 4, 0, 4)]), 1.0);
    }

    #[test]
    fn stratification_removes_a_shared_burst() {
        // A burst loses 20 of 25 probes of each arm in one window; the other windows are clean.
        // Pooled Fisher sees a balanced table too, but a burst on one arm only in one window with
        // the other arm losing as much in another window cancels under stratification only.
        let strata = [(20u64, 25u64, 0u64, 25u64), (0, 25, 20, 25), (0, 25, 0, 25)];
        assert!(stratified_exact_greater(&strata) > 0.4);
        // Platform-only loss in every window: tiny p.
        let lossy: Vec<Stratum> = (0..15).map(|_| (3, 50, 0, 50)).collect();
        assert!(stratified_exact_greater(&lossy) < 1e-9);
    }
}
