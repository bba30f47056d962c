//! The detection table's fast subset: every censor and null model of the catalogue against
//! every platform profile, 20 simulated 15 s tests each (the full table, 1,000 a row, is
//! `callwatch-detection`). Deterministic: the same seeds give the same verdicts.
//!
//! Each row is held to the rate docs/DETECTION.md publishes for it, not to a fixed fraction:
//! the 20 tests here (other seeds than the table's) must be a plausible sample of that rate.
//! See [`binomial_cdf`], [`published`] and the main test's documentation.

use callwatch_proto::report::VerdictRule;
use callwatch_proto::{Platform, Role, Verdict};
use callwatch_tests::censors::{catalogue, simulate, table_line, tally, Expect, PLATFORMS};

const TESTS: u32 = 20;

/// How improbable a count must be, under the published rate, to fail the test: one-sided
/// 0.1 % (a 99.9 % confidence bound). With about 80 rows checked, a row whose true rate is
/// the published bound fails by chance with probability under 8 % in all — but the seeds are
/// fixed, so that chance is taken once, when the seeds or the code under test change.
const ALPHA: f64 = 0.001;

/// P(X ≤ k) for X ~ Binomial(n, p), summed exactly from the probability mass function. The
/// terms are built in logarithms (ln pmf(i + 1) = ln pmf(i) + ln((n − i)/(i + 1)) + ln(p/(1 − p))),
/// since (1 − p)^n underflows for the pooled rows' n in the thousands.
fn binomial_cdf(k: u32, n: u32, p: f64) -> f64 {
    assert!((0.0..=1.0).contains(&p), "p = {p}");
    if k >= n || p == 0.0 {
        return 1.0;
    }
    if p == 1.0 {
        return 0.0; // k < n
    }
    let odds = (p / (1.0 - p)).ln();
    let mut ln_term = f64::from(n) * (-p).ln_1p();
    let mut sum = ln_term.exp();
    for i in 0..k {
        ln_term += (f64::from(n - i) / f64::from(i + 1)).ln() + odds;
        sum += ln_term.exp();
    }
    sum.min(1.0)
}

/// The fewest `differentiated` of `n` consistent with a rate of at least `rate`: the smallest
/// k with P(X ≤ k) > ALPHA. (Fewer would reject "the rate is ≥ `rate`" at 99.9 %.)
fn fewest_consistent(n: u32, rate: f64) -> u32 {
    (0..=n)
        .find(|&k| binomial_cdf(k, n, rate) > ALPHA)
        .unwrap_or(n)
}

/// The most `differentiated` of `n` consistent with a rate of at most `rate`: the largest k with
/// P(X ≥ k) = 1 − P(X ≤ k − 1) > ALPHA.
fn most_consistent(n: u32, rate: f64) -> u32 {
    (0..=n)
        .rev()
        .find(|&k| k == 0 || 1.0 - binomial_cdf(k - 1, n, rate) > ALPHA)
        .unwrap_or(0)
}

/// A row of docs/DETECTION.md's table: its tests, how many were `differentiated`, and the 95 %
/// Clopper–Pearson interval it prints (fractions, rounded to 0.1 % as printed).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Published {
    tests: u32,
    differentiated: u32,
    printed: (f64, f64),
}

/// The table line "| model | expected | platform | tests | 99.9 % (99.4–100.0 %) | … |" for
/// (model, platform), parsed; the count is the printed share × tests (exact at one decimal
/// of a percent for up to 1,000 tests).
fn published(doc: &str, model: &str, platform: Platform) -> Option<Published> {
    doc.lines().find_map(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 9 || cells[1] != model || cells[3] != platform.to_string() {
            return None;
        }
        let pct = |s: &str| s.trim().trim_end_matches('%').trim().parse::<f64>().ok();
        let tests: u32 = cells[4].parse().ok()?;
        let (share, interval) = cells[5].split_once('(')?;
        let (lo, hi) = interval.trim_end_matches(['%', ')', ' ']).split_once('–')?;
        Some(Published {
            tests,
            differentiated: (pct(share)? / 100.0 * f64::from(tests)).round() as u32,
            printed: (pct(lo)? / 100.0, pct(hi)? / 100.0),
        })
    })
}

/// The two-sided 95 % Clopper–Pearson interval of x successes in n (what the table prints),
/// by bisection on [`binomial_cdf`]: the lower end solves P(X ≥ x) = 2.5 %, the upper
/// P(X ≤ x) = 2.5 %.
fn clopper_pearson_95(x: u32, n: u32) -> (f64, f64) {
    let solve = |f: &dyn Fn(f64) -> bool| {
        // The p in [0, 1] where f turns from false to true.
        let (mut a, mut b) = (0.0f64, 1.0f64);
        for _ in 0..100 {
            let m = 0.5 * (a + b);
            if f(m) {
                b = m;
            } else {
                a = m;
            }
        }
        0.5 * (a + b)
    };
    let lo = if x == 0 {
        0.0
    } else {
        solve(&|p| 1.0 - binomial_cdf(x - 1, n, p) >= 0.025)
    };
    let hi = if x == n {
        1.0
    } else {
        solve(&|p| binomial_cdf(x, n, p) <= 0.025)
    };
    (lo, hi)
}

fn detection_doc() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DETECTION.md"),
    )
    .unwrap()
}

#[test]
fn the_binomial_helpers_match_known_values() {
    // Binomial(20, 0.5): P(X ≤ 5) = 21700 / 2^20.
    assert!((binomial_cdf(5, 20, 0.5) - 21_700.0 / 1_048_576.0).abs() < 1e-12);
    // Binomial(20, 0.9): P(X ≤ 19) = 1 − 0.9^20.
    assert!((binomial_cdf(19, 20, 0.9) - (1.0 - 0.9f64.powi(20))).abs() < 1e-12);
    assert_eq!(binomial_cdf(20, 20, 0.3), 1.0);
    // At a published 99.6 % lower bound, 18 of 20 is plausible (P(X ≤ 18) ≈ 0.0029), 17 is
    // not (≈ 6.9e-5); at 0.4 %, 2 false positives of 20 are (P(X ≥ 2) ≈ 0.0029), 3 are not.
    assert_eq!(fewest_consistent(20, 0.996), 18);
    assert_eq!(most_consistent(20, 0.004), 2);
    // A certain rate leaves no margin.
    assert_eq!(fewest_consistent(20, 1.0), 20);
    assert_eq!(most_consistent(20, 0.0), 0);
    // Large n (where (1 − p)^n underflows): Binomial(1000, 0.99) has P(X ≤ 978) ≈ 6.5e-4 and
    // P(X ≤ 979) ≈ 1.5e-3 (exact, in rationals), so 979 of 1000 is the fewest consistent.
    assert!((binomial_cdf(979, 1000, 0.99) - 0.001_496_481_547_709).abs() < 1e-9);
    assert_eq!(fewest_consistent(1000, 0.99), 979);
    let row = published(
        "| loss-5pct | differentiated | max | 1000 | 99.9 % (99.4–100.0 %) | 0.1 % | 0.0 % | yes |",
        "loss-5pct",
        Platform::Max,
    )
    .unwrap();
    assert_eq!((row.tests, row.differentiated), (1000, 999));
    assert!((row.printed.0 - 0.994).abs() < 1e-12 && row.printed.1 == 1.0);
    // Clopper–Pearson, against the same bisection in exact rational arithmetic (Python's
    // fractions): 999/1000 → 0.994441–0.999975; 0/1000 → 0–0.003682; 938/1000 →
    // 0.921220–0.952138.
    let close =
        |(a, b): (f64, f64), (c, d): (f64, f64)| (a - c).abs() < 1e-6 && (b - d).abs() < 1e-6;
    assert!(close(clopper_pearson_95(999, 1000), (0.994_441, 0.999_975)));
    assert!(close(clopper_pearson_95(0, 1000), (0.0, 0.003_682)));
    assert!(close(clopper_pearson_95(938, 1000), (0.921_220, 0.952_138)));
}

/// Every row of the catalogue × platforms, 20 tests each, against docs/DETECTION.md's published
/// figure for that row. The doc's claim for a row is its 95 % Clopper–Pearson interval: a
/// model expected `differentiated` must not be found so rarely here that the interval's lower
/// end becomes implausible at 99.9 % (binomial, 20 trials); a null model must not be flagged so
/// often that its upper end does. Then the same for all rows of each kind pooled (the doc's
/// counts summed, their interval, all of this test's trials), where 20 trials a row are too
/// few to see a small drift: a sum of binomials with unequal rates is more concentrated than
/// one binomial at their mean, so the pooled test errs on the lenient side.
#[test]
fn every_censor_is_found_and_no_null_model_is_flagged_on_every_platform() {
    let doc = detection_doc();
    let mut rows = Vec::new();
    let mut misses = Vec::new();
    // Per kind (restrictions, null models): this test's (tests, differentiated) and the doc's.
    let mut pooled = [((0u32, 0u32), (0u32, 0u32)); 2];
    for (i, censor) in catalogue().iter().enumerate() {
        for (j, &platform) in PLATFORMS.iter().enumerate() {
            let seed0 = 7_000_000 + 10_000 * i as u64 + 1_000 * j as u64;
            let Some(row) = tally(platform, censor, TESTS, seed0).unwrap() else {
                continue;
            };
            let Some(doc_row) = published(&doc, censor.name, platform) else {
                misses.push(format!(
                    "{} {platform}: docs/DETECTION.md publishes no rate",
                    censor.name
                ));
                continue;
            };
            // The printed interval is the count's (so the count read from the share is right).
            let (lo, hi) = clopper_pearson_95(doc_row.differentiated, doc_row.tests);
            assert!(
                (lo - doc_row.printed.0).abs() <= 0.000_501
                    && (hi - doc_row.printed.1).abs() <= 0.000_501,
                "{} {platform}: {doc_row:?} vs {lo}–{hi}",
                censor.name
            );
            let n = row.tests();
            let (ok, bound, kind) = match censor.expect {
                Expect::Differentiated => {
                    let least = fewest_consistent(n, lo);
                    (row.differentiated >= least, format!("≥ {least}"), 0)
                }
                Expect::NotDifferentiated => {
                    let most = most_consistent(n, hi);
                    (row.differentiated <= most, format!("≤ {most}"), 1)
                }
            };
            let ((t, d), (dt, dd)) = &mut pooled[kind];
            (*t, *d) = (*t + n, *d + row.differentiated);
            (*dt, *dd) = (*dt + doc_row.tests, *dd + doc_row.differentiated);
            let line = format!(
                "{} {platform}: {row:?}; published {}/{} ({:.2}–{:.2} %): differentiated {bound} of {n}",
                censor.name,
                doc_row.differentiated,
                doc_row.tests,
                100.0 * lo,
                100.0 * hi
            );
            eprintln!("{line}");
            if !ok {
                misses.push(line);
            }
            rows.push((censor.name, platform, row));
        }
    }
    assert!(misses.is_empty(), "{misses:#?}");
    let [((n, k), (doc_n, doc_k)), ((null_n, null_k), (doc_null_n, doc_null_k))] = pooled;
    let least = fewest_consistent(n, clopper_pearson_95(doc_k, doc_n).0);
    eprintln!(
        "pooled restrictions: {k} of {n} differentiated, ≥ {least} needed \
         (published {doc_k} of {doc_n})"
    );
    assert!(
        k >= least,
        "restrictions pooled: {k} of {n}, fewer than {least}"
    );
    let most = most_consistent(null_n, clopper_pearson_95(doc_null_k, doc_null_n).1);
    eprintln!(
        "pooled null models: {null_k} of {null_n} differentiated, ≤ {most} allowed \
         (published {doc_null_k} of {doc_null_n})"
    );
    assert!(
        null_k <= most,
        "null models pooled: {null_k} of {null_n}, more than {most}"
    );
    // Blocks are found every time: not a rate but a rule (DETECTION.md, "A blocked call is the
    // finding"), which fires whenever the platform arm gets nothing back.
    for (name, platform, row) in &rows {
        if [
            "full-block",
            "handshake-block",
            "cut-at-5s",
            "relay-address-block",
        ]
        .contains(name)
        {
            assert_eq!(row.differentiated, TESTS, "{name} {platform}");
        }
    }
    // Every model applies to WhatsApp.
    let whatsapp = rows
        .iter()
        .filter(|r| r.1 == callwatch_proto::Platform::Whatsapp)
        .count();
    assert_eq!(whatsapp, catalogue().len());
}

#[test]
fn each_block_is_judged_by_its_own_rule_and_the_direction_is_right() {
    let by_name = |n: &str| catalogue().into_iter().find(|c| c.name == n).unwrap();
    let wa = callwatch_proto::Platform::Whatsapp;
    let report = |n: &str| simulate(wa, &by_name(n), 1).unwrap().unwrap();
    let rule = |r: &callwatch_proto::CallReport| r.verdict_detail.as_ref().unwrap().rule;
    assert_eq!(rule(&report("full-block")), Some(VerdictRule::Blocked));
    assert_eq!(rule(&report("handshake-block")), Some(VerdictRule::Blocked));
    assert_eq!(rule(&report("cut-at-5s")), Some(VerdictRule::Cut));
    assert_eq!(
        rule(&report("relay-address-block")),
        Some(VerdictRule::PlatformServersUnreachable)
    );
    let down = report("downstream-only");
    assert_eq!(down.verdict, Some(Verdict::Differentiated));
    let p = down
        .streams
        .iter()
        .find(|s| s.role == Role::Platform)
        .unwrap();
    assert_eq!(p.loss_up, Some(0.0), "nothing was lost upstream");
    assert!(p.loss_down.unwrap() > 0.5, "{:?}", p.loss_down);
    let up = report("upstream-only");
    let p = up
        .streams
        .iter()
        .find(|s| s.role == Role::Platform)
        .unwrap();
    assert!(
        p.loss_up.unwrap() > 0.05 && p.loss_down == Some(0.0),
        "{p:?}"
    );
    let shaped = report("shaping-queue");
    assert!(
        matches!(rule(&shaped), Some(VerdictRule::Delay | VerdictRule::Onset)),
        "{:?}",
        shaped.verdict_detail
    );
}

#[test]
fn the_published_table_is_what_the_code_gives() {
    // Three lines of docs/DETECTION.md recomputed (1,000 seeded tests each, the same seeds as
    // `callwatch-detection`): a change to the verdict or the engine that moves them fails here.
    let doc = detection_doc();
    let names: Vec<&str> = catalogue().iter().map(|c| c.name).collect();
    for (model, j) in [
        ("loss-5pct", 3),
        ("null-shared-loss", 2),
        ("bursty-loss", 0),
    ] {
        let i = names.iter().position(|n| *n == model).unwrap();
        let line = table_line(i, j, PLATFORMS[j], 1000).unwrap().unwrap();
        assert!(doc.contains(&line), "docs/DETECTION.md lacks\n{line}");
    }
}
