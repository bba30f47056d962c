//! The differentiation verdict's error rates, measured over simulated two-arm tests.

use callwatch_proto::{Platform, Verdict};
use callwatch_tests::detection::{simulate_test, tally, Scenario};

#[test]
fn false_positive_rate_is_at_most_one_percent_on_clean_and_alike_impaired_paths() {
    for (scenario, seed) in [
        (Scenario::clean(), 10_000),
        (Scenario::all_impaired(), 20_000),
    ] {
        let t = tally(Platform::Whatsapp, &scenario, 200, seed).unwrap();
        assert_eq!(t.total(), 200);
        assert!(
            t.differentiated <= 2,
            "{}: {} of 200 differentiated",
            scenario.name,
            t.differentiated
        );
    }
}

#[test]
fn platform_only_loss_is_detected_and_power_grows_with_loss() {
    let rate = |loss| {
        tally(
            Platform::Whatsapp,
            &Scenario::platform_loss(loss),
            50,
            30_000,
        )
        .unwrap()
        .differentiated_rate()
    };
    let (r2, r10) = (rate(0.02), rate(0.10));
    assert!(r10 >= 0.95, "10 % loss caught only {r10}");
    assert!(r2 <= r10);
    assert!(r2 >= 0.5, "2 % loss caught only {r2}");
}

#[test]
fn a_stun_rule_hits_whatsapp_but_not_telegram() {
    let rule = Scenario::platform_loss(0.10);
    for seed in 0..20 {
        let (v, d) = simulate_test(Platform::Whatsapp, &rule, seed).unwrap();
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        assert_eq!(d.loss.control_median, 0.0, "the control arm is clean");
        // Telegram's framing carries no STUN cookie: the same network leaves it alone.
        let (v, d) = simulate_test(Platform::Telegram, &rule, seed).unwrap();
        assert_eq!(v, Verdict::None, "{}", d.reason);
    }
}

#[test]
fn policing_shows_only_when_the_stream_needs_more_than_the_rate() {
    let voice = tally(
        Platform::Whatsapp,
        &Scenario::platform_policer(130.0, false),
        20,
        40_000,
    )
    .unwrap();
    assert_eq!(
        voice.differentiated, 0,
        "46 kbit/s of voice passes a 130 kbit/s policer"
    );
    let video = tally(
        Platform::Whatsapp,
        &Scenario::platform_policer(130.0, true),
        20,
        50_000,
    )
    .unwrap();
    assert_eq!(video.differentiated, 20);
}
