//! Property tests: no record, however odd, yields a panic or a report the collector would reject.

use super::tests::validate;
use super::*;
use callwatch_proto::report::Stats;
use proptest::prelude::*;

/// Every number in a report, to check finiteness directly: `CallReport::validate` goes through
/// serde_json, which turns a NaN nested in an object into `null` and so lets it pass.
fn numbers(r: &StreamReport) -> Vec<f64> {
    let stats = |s: &Stats| [s.min, s.mean, s.median, s.p95, s.p99, s.max];
    let mut v: Vec<f64> = [r.loss, r.loss_up, r.loss_down]
        .into_iter()
        .flatten()
        .collect();
    v.extend(r.rtt_ms.iter().flat_map(stats));
    if let Some(o) = &r.owd_ms {
        v.extend(stats(&o.up));
        v.extend(stats(&o.down));
        v.extend([o.clock_offset_ms, o.clock_offset_error_ms]);
    }
    v.extend(r.jitter_ms.iter().flat_map(|j| [j.up, j.down]));
    v.extend(
        r.ipdv_ms
            .iter()
            .flat_map(|i| [i.up.p50, i.up.p95, i.down.p50, i.down.p95]),
    );
    v.extend(r.burst.iter().flat_map(|b| {
        [
            b.mean_len,
            b.gap_density,
            b.burst_density,
            b.gilbert_p,
            b.gilbert_q,
            b.burst_ratio,
        ]
    }));
    v.extend(r.jitter_buffer.iter().flat_map(|j| {
        [
            j.fixed_40ms,
            j.fixed_60ms,
            j.fixed_100ms,
            j.adaptive,
            j.adaptive_delay_ms,
        ]
    }));
    v.extend(r.stalls.iter().map(|s| s.longest_ms));
    v.extend(
        r.bitrate_kbps
            .iter()
            .flat_map(|b| [b.offered, b.delivered_up, b.delivered_down]),
    );
    v.extend(
        r.timer
            .iter()
            .flat_map(|t| [t.mean_error_us, t.p99_error_us]),
    );
    v.extend(r.r_factor);
    v.extend(r.mos);
    v
}

fn is_fraction(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

fn check(rec: &StreamRecord, codec: Codec) -> Result<(), TestCaseError> {
    let r = stream_report(Role::Platform, rec, codec);
    if let Err(e) = validate(r.clone()) {
        return Err(TestCaseError::fail(format!("validation: {e}")));
    }
    for v in numbers(&r) {
        prop_assert!(v.is_finite(), "non-finite figure {v} in {r:?}");
    }
    prop_assert_eq!(r.packets_sent as usize, rec.probes.len());
    prop_assert!(r.packets_received <= r.packets_sent);
    prop_assert!([r.loss, r.loss_up, r.loss_down]
        .into_iter()
        .flatten()
        .all(is_fraction));
    prop_assert_eq!(r.loss_up.is_some(), rec.reflector_received.is_some());
    let round_trip_loss = if rec.probes.is_empty() {
        0.0
    } else {
        1.0 - f64::from(r.packets_received) / rec.probes.len() as f64
    };
    if let Some(j) = &r.jitter_buffer {
        for f in [j.fixed_40ms, j.fixed_60ms, j.fixed_100ms, j.adaptive] {
            prop_assert!(is_fraction(f));
            prop_assert!(f >= round_trip_loss - 1e-12, "discards below loss: {r:?}");
        }
        prop_assert!(j.fixed_40ms >= j.fixed_60ms && j.fixed_60ms >= j.fixed_100ms);
        prop_assert!(j.adaptive_delay_ms >= 0.0);
    }
    if let Some(b) = &r.burst {
        for f in [b.gap_density, b.burst_density, b.gilbert_p, b.gilbert_q] {
            prop_assert!(is_fraction(f), "{b:?}");
        }
        prop_assert!(b.burst_ratio > 0.0);
        prop_assert!(b.max_len as f64 >= b.mean_len);
    }
    if let Some(s) = &r.rtt_ms {
        prop_assert!(s.min >= 0.0 && s.min <= s.median && s.median <= s.p95);
        prop_assert!(s.p95 <= s.p99 && s.p99 <= s.max && s.min <= s.mean && s.mean <= s.max);
    }
    if let Some(o) = &r.owd_ms {
        prop_assert!(o.up.min == 0.0 && o.down.min == 0.0);
        prop_assert!(o.clock_offset_error_ms >= 0.0);
    }
    prop_assert_eq!(r.mos.is_some(), r.packets_received > 0);
    prop_assert_eq!(r.mos_basis.is_some(), r.mos.is_some());
    if let (Some(mos), Some(rf)) = (r.mos, r.r_factor) {
        prop_assert!((1.0..=4.5).contains(&mos));
        prop_assert!((0.0..=100.0).contains(&rf));
    }
    Ok(())
}

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Opus), Just(Codec::G711)]
}

/// A believable stream: a schedule with timer jitter, random loss, random delays, a reflector
/// clock with any offset (so it may wrap), and arrival order taken from reception times.
fn plausible_record() -> impl Strategy<Value = StreamRecord> {
    let probe = (
        -2_000i64..30_000,         // send error vs schedule, µs
        0u64..400_000,             // upstream delay, µs
        0u64..3_000,               // reflector hold, µs
        0u64..400_000,             // downstream delay, µs
        prop::bool::weighted(0.8), // replied
        20u16..1_400,              // length
    );
    (
        prop_oneof![Just(20_000u64), 1u64..200_000, Just(0u64)],
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(probe, 0..300),
        prop::option::of(any::<u32>()),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                interval_us,
                agent_base,
                reflector_base,
                specs,
                reflector_received,
                duplicates,
                late,
            )| {
                let probes: Vec<ProbeRecord> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, &(err, up, hold, down, replied, len))| {
                        let scheduled = agent_base.wrapping_add(interval_us.wrapping_mul(i as u64));
                        let sent = scheduled.wrapping_add_signed(err);
                        let rx = sent.wrapping_add(up).wrapping_add(reflector_base);
                        ProbeRecord {
                            seq: i as u32,
                            scheduled_us: scheduled,
                            sent_us: sent,
                            len,
                            reply: replied.then_some(ReplyRecord {
                                reflector_rx_us: rx,
                                reflector_tx_us: rx.wrapping_add(hold),
                                received_us: sent.wrapping_add(up + hold + down),
                            }),
                        }
                    })
                    .collect();
                let mut arrivals: Vec<(u64, u32)> = probes
                    .iter()
                    .filter_map(|p| {
                        p.reply
                            .map(|r| (r.received_us.wrapping_sub(agent_base), p.seq))
                    })
                    .collect();
                arrivals.sort_unstable();
                StreamRecord {
                    interval_us,
                    arrival_order: arrivals.into_iter().map(|(_, s)| s).collect(),
                    duplicates,
                    late,
                    reflector_received,
                    probes,
                    reflector_drops: 0,
                }
            },
        )
}

/// Anything at all: every timestamp arbitrary, so clocks run backwards and wrap at random.
fn garbage_record() -> impl Strategy<Value = StreamRecord> {
    let reply =
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(rx, tx, received)| ReplyRecord {
            reflector_rx_us: rx,
            reflector_tx_us: tx,
            received_us: received,
        });
    let probe = (
        any::<u64>(),
        any::<u64>(),
        any::<u16>(),
        prop::option::of(reply),
    );
    (
        any::<u64>(),
        prop::collection::vec(probe, 0..60),
        prop::collection::vec(any::<u32>(), 0..60),
        any::<u32>(),
        any::<u32>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(interval_us, specs, arrival_order, duplicates, late, reflector_received)| {
                StreamRecord {
                    interval_us,
                    probes: specs
                        .into_iter()
                        .enumerate()
                        .map(|(i, (scheduled_us, sent_us, len, reply))| ProbeRecord {
                            seq: i as u32,
                            scheduled_us,
                            sent_us,
                            len,
                            reply,
                        })
                        .collect(),
                    arrival_order,
                    duplicates,
                    late,
                    reflector_received,
                    reflector_drops: 0,
                }
            },
        )
}

proptest! {
    #[test]
    fn plausible_records_give_valid_reports(rec in plausible_record(), codec in codec()) {
        check(&rec, codec)?;
    }

    #[test]
    fn arbitrary_records_give_valid_reports(rec in garbage_record(), codec in codec()) {
        check(&rec, codec)?;
    }

    #[test]
    fn all_lost_records_give_valid_reports(n in 0usize..200, codec in codec()) {
        check(&super::tests::record(&vec![None; n]), codec)?;
    }

    #[test]
    fn one_way_figures_ignore_the_reflector_clock(
        rtts in prop::collection::vec(prop::option::weighted(0.9, 1u64..300), 0..100),
        offset in any::<u64>(),
    ) {
        // Shifting the reflector's clock (any amount, wrapping) changes only the offset estimate.
        let a = super::tests::record(&rtts);
        let mut b = a.clone();
        for r in b.probes.iter_mut().filter_map(|p| p.reply.as_mut()) {
            r.reflector_rx_us = r.reflector_rx_us.wrapping_add(offset);
            r.reflector_tx_us = r.reflector_tx_us.wrapping_add(offset);
        }
        let ra = stream_report(Role::Control, &a, Codec::Opus);
        let rb = stream_report(Role::Control, &b, Codec::Opus);
        prop_assert_eq!(ra.jitter_ms, rb.jitter_ms);
        prop_assert_eq!(ra.ipdv_ms, rb.ipdv_ms);
        prop_assert_eq!(ra.rtt_ms, rb.rtt_ms);
        prop_assert_eq!(ra.owd_ms.map(|o| (o.up, o.down)), rb.owd_ms.map(|o| (o.up, o.down)));
    }
}
