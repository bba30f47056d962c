//! The domain's own tests: sketched cells against the brute-force reference ([`super::exact`]),
//! keys, caps, filing marks and observations.

use super::sketch::RELATIVE_ACCURACY;
use super::*;
use callwatch_proto::report::{StreamKind, StreamOutcome, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use std::collections::{BTreeMap, BTreeSet};

const T0: i64 = 1_764_288_000_000; // 2025-11-28T00:00:00Z

fn obs(country: &str, platform: Platform, agent: u8, rtt: f64, loss: f64) -> Observation {
    Observation {
        started_at_ms: T0,
        country: country.into(),
        subdivision: String::new(),
        asn: if country == "RU" { 12389 } else { 3320 },
        platform,
        arm: Role::Platform,
        kind: StreamKind::Voice,
        agent: [agent; 32],
        figures: [
            Some(rtt),
            Some(1.0),
            Some(2.0),
            Some(loss),
            Some(loss),
            Some(0.0),
            Some(4.0),
            Some(0.0),
        ],
        verdict: (platform != Platform::Generic).then_some(Verdict::None),
        rule: None,
        filing: Filing::default(),
    }
}

fn fine_cells(o: &[Observation], policy: &Policy) -> Vec<(CellKey, CellState)> {
    let mut cells: BTreeMap<CellKey, CellState> = BTreeMap::new();
    for x in capped(o, policy) {
        cells.entry(x.cell_key()).or_default().add(x);
    }
    cells.into_iter().collect()
}

fn both(o: &[Observation], axes: &[Axis], f: &Filter, p: &Policy) -> Vec<Cell> {
    let sketched = query(fine_cells(o, p), axes, f, p);
    let exact = exact(o, axes, f, p);
    assert_eq!(sketched.len(), exact.len());
    for (s, e) in sketched.iter().zip(&exact) {
        assert_eq!(
            (s.count, s.agents, s.verdicts, s.filing),
            (e.count, e.agents, e.verdicts, e.filing)
        );
        for (a, b) in s.figures().iter().zip(e.figures()) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    for (x, y) in [(a.p10, b.p10), (a.median, b.median), (a.p90, b.p90)] {
                        assert!((x - y).abs() <= RELATIVE_ACCURACY * y.abs() + 1e-9);
                    }
                }
                (None, None) => {}
                other => panic!("figure presence differs: {other:?}"),
            }
        }
    }
    exact
}

#[test]
fn groups_by_two_axes() {
    let o = vec![
        obs("RU", Platform::Whatsapp, 1, 10.0, 0.1),
        obs("RU", Platform::Whatsapp, 2, 30.0, 0.3),
        obs("RU", Platform::Whatsapp, 2, 20.0, 0.2),
        obs("DE", Platform::Whatsapp, 3, 5.0, 0.0),
        obs("RU", Platform::Generic, 1, 7.0, 0.0),
    ];
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    let axes = [Axis::Country, Axis::Platform];
    let cells = both(&o, &axes, &Filter::default(), &open);
    assert_eq!(cells.len(), 3);
    let ru_wa = cells
        .iter()
        .find(|c| c.country.as_deref() == Some("RU") && c.platform.as_deref() == Some("whatsapp"))
        .unwrap();
    assert_eq!(ru_wa.count, 3);
    assert_eq!(ru_wa.agents, 2);
    assert_eq!(ru_wa.rtt_ms.unwrap().median, 20.0);
    assert_eq!(ru_wa.differentiated_share, Some(0.0));
    assert_eq!(ru_wa.asn, None);
    let csv = crate::export::cells_csv(&cells, &axes);
    assert!(csv.starts_with("country,platform,count,agents,rtt_ms_p10,rtt_ms_median,"));
    assert!(csv.contains("RU,whatsapp,3,2,10,20,20,"), "{csv}");
}

#[test]
fn arms_are_separate_and_default_to_platform() {
    let mut o = vec![obs("RU", Platform::Telegram, 1, 10.0, 0.0)];
    let mut control = obs("RU", Platform::Telegram, 1, 50.0, 0.0);
    control.arm = Role::Control;
    o.push(control);
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    let only_platform = both(&o, &[Axis::Country], &Filter::default(), &open);
    assert_eq!(only_platform[0].count, 1);
    assert_eq!(only_platform[0].rtt_ms.unwrap().median, 10.0);
    let by_arm = both(&o, &[Axis::Arm], &Filter::default(), &open);
    assert_eq!(by_arm.len(), 2);
    assert_eq!(by_arm[1].arm.as_deref(), Some("control"));
    let control_only = Filter {
        arm: Some(Role::Control),
        ..Filter::default()
    };
    assert_eq!(
        both(&o, &[Axis::Country], &control_only, &open)[0]
            .rtt_ms
            .unwrap()
            .median,
        50.0
    );
}

#[test]
fn hour_and_day_axes_and_hour_resolution_bounds() {
    let mut a = obs("RU", Platform::Signal, 1, 10.0, 0.0);
    let mut b = a.clone();
    b.started_at_ms = T0 + 25 * HOUR_MS + 5;
    a.started_at_ms = T0 + 30 * 60_000;
    let o = vec![a, b];
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    let hours = both(&o, &[Axis::Hour], &Filter::default(), &open);
    assert_eq!(hours[0].hour.as_deref(), Some("2025-11-28T00:00:00Z"));
    assert_eq!(hours[1].hour.as_deref(), Some("2025-11-29T01:00:00Z"));
    let days = both(&o, &[Axis::Day], &Filter::default(), &open);
    assert_eq!(days[1].day.as_deref(), Some("2025-11-29"));
    let late = Filter {
        since_ms: Some(T0 + 45 * 60_000), // rounded down to T0's hour: still covers `a`
        ..Filter::default()
    };
    assert_eq!(both(&o, &[Axis::Day], &late, &open).len(), 2);
    let early = Filter {
        until_ms: Some(T0 + 10 * 60_000), // rounded up: covers the first hour
        ..Filter::default()
    };
    assert_eq!(both(&o, &[Axis::Day], &early, &open).len(), 1);
}

#[test]
fn cells_below_k_agents_are_not_published_and_filters_apply() {
    let o = vec![
        obs("RU", Platform::Whatsapp, 1, 10.0, 0.0),
        obs("RU", Platform::Whatsapp, 2, 11.0, 0.0),
        obs("RU", Platform::Whatsapp, 3, 12.0, 0.0),
        obs("DE", Platform::Whatsapp, 4, 5.0, 0.0),
        obs("DE", Platform::Whatsapp, 4, 6.0, 0.0),
    ];
    let cells = both(&o, &[Axis::Country], &Filter::default(), &Policy::default());
    assert_eq!(cells.len(), 1, "DE has one agent behind it");
    assert_eq!(cells[0].country.as_deref(), Some("RU"));
    let only_de = Filter {
        country: Some("de".into()),
        ..Filter::default()
    };
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    assert_eq!(both(&o, &[Axis::Platform], &only_de, &open)[0].count, 2);
    // Without the hour axis a range covers whole UTC days: an hour later is still that day,
    // the next day is not.
    let an_hour_later = Filter {
        since_ms: Some(T0 + HOUR_MS),
        ..Filter::default()
    };
    assert_eq!(
        both(&o, &[Axis::Platform], &an_hour_later, &open)[0].count,
        5
    );
    let next_day = Filter {
        since_ms: Some(T0 + 24 * HOUR_MS),
        ..Filter::default()
    };
    assert!(both(&o, &[Axis::Platform], &next_day, &open).is_empty());
}

#[test]
fn one_agent_flooding_a_cell_moves_it_no_more_than_its_capped_weight() {
    let mut o = Vec::new();
    for (agent, rtt) in [(1, 10.0), (2, 12.0), (3, 14.0)] {
        for _ in 0..2 {
            o.push(obs("RU", Platform::Telegram, agent, rtt, 0.0));
        }
    }
    for _ in 0..1000 {
        o.push(obs("RU", Platform::Telegram, 66, 500.0, 1.0));
    }
    let policy = Policy {
        min_agents: 3,
        max_per_agent_per_day: 2,
        ..Policy::default()
    };
    let cells = both(&o, &[Axis::Country], &Filter::default(), &policy);
    // Mallory counts twice, like each honest agent: [10,10,12,12,14,14,500,500];
    // the median (rank ⌊0.5·7⌋ = 3) stays an honest value.
    assert_eq!(cells[0].count, 8);
    assert_eq!(cells[0].rtt_ms.unwrap().median, 12.0);
    assert_eq!(cells[0].loss_up.unwrap().p90, 1.0);
    let uncapped = Policy {
        max_per_agent_per_day: usize::MAX,
        ..policy
    };
    let flooded = both(&o, &[Axis::Country], &Filter::default(), &uncapped);
    assert_eq!(
        flooded[0].rtt_ms.unwrap().median,
        500.0,
        "without the cap, one agent decides"
    );
}

#[test]
fn counts_from_a_damaged_store_saturate_instead_of_overflowing() {
    // Found by the sketch_and_cells fuzz target (fuzz/findings, F1 and F2).
    let mut huge = CellState {
        count: u64::MAX - 1,
        verdicts: VerdictCounts {
            none: u64::MAX,
            inconclusive: 0,
            differentiated: u64::MAX,
            blocked: u64::MAX,
            no_reference: 3,
        },
        ..CellState::default()
    };
    let other = huge.clone();
    huge.merge(&other);
    assert_eq!(huge.count, u64::MAX);
    assert_eq!(huge.verdicts.differentiated_share(), Some(1.0));
    assert_eq!(huge.verdicts.blocked_share(), Some(1.0));
    assert_eq!(huge.verdicts.no_reference, 6);
    // More blocked than judged (only a damaged store holds that): still a share.
    let odd = VerdictCounts {
        none: 1,
        blocked: 5,
        ..VerdictCounts::default()
    };
    assert_eq!(odd.blocked_share(), Some(1.0));
}

#[test]
fn keys_round_trip_and_garbage_is_refused() {
    let k = obs("RU", Platform::Max, 9, 1.0, 0.0).cell_key();
    assert_eq!(CellKey::from_bytes(&k.to_bytes()), Some(k));
    assert_eq!(CellKey::from_bytes(&[0u8; 3]), None);
    let mut bad = k.to_bytes();
    bad[17] = 99;
    assert_eq!(CellKey::from_bytes(&bad), None);
    let mut bad = k.to_bytes();
    bad[19] = 7;
    assert_eq!(CellKey::from_bytes(&bad), None, "unknown stream kind");
    // Keys as stores made before the stream kind (16 bytes) and before the subdivision (17)
    // wrote them are not read as current ones: the sled store rebuilds such cells at open.
    assert_eq!(CellKey::from_bytes(&k.to_bytes()[..16]), None);
    assert_eq!(CellKey::from_bytes(&k.to_bytes()[..17]), None);
    // The subdivision: kept, ordered after the country, and only what a code can be.
    let mut mow = obs("RU", Platform::Max, 9, 1.0, 0.0);
    mow.subdivision = "RU-MOW".into();
    let m = mow.cell_key();
    assert_eq!(&m.subdivision, b"MOW");
    assert_eq!(CellKey::from_bytes(&m.to_bytes()), Some(m));
    assert_eq!(m.region_text(), "RU-MOW");
    assert_eq!(k.region_text(), "RU");
    assert_eq!(m.block(), k.block(), "one block, whatever the subdivision");
    // A key read back from bytes may hold any hour: its day's first hour saturates at the
    // ends of i64 instead of overflowing (the fuzz replay's api_query seed found the overflow).
    for (hour, first) in [
        (i64::MIN, i64::MIN),
        (i64::MAX, i64::MAX - i64::MAX % 24),
        (-1, -24),
    ] {
        let at = CellKey { hour, ..k };
        assert_eq!(at.day_cell().hour, first, "{hour}");
        assert_eq!(at.block().hour, first, "{hour}");
    }
    assert_eq!(
        CapKey::bytes(&m, &mow.agent),
        CapKey::bytes(&k, &mow.agent),
        "the caps do not count per subdivision"
    );
    for junk in [*b"mow", *b"M\0W", [0xff; 3]] {
        let mut bad = m.to_bytes();
        bad[10..13].copy_from_slice(&junk);
        assert_eq!(CellKey::from_bytes(&bad), None, "{junk:?}");
    }
    // Another country's code is no subdivision of this one.
    mow.subdivision = "DE-BE".into();
    assert_eq!(mow.cell_key(), k);
    let mut video = obs("RU", Platform::Max, 9, 1.0, 0.0);
    video.kind = StreamKind::Video;
    let v = video.cell_key();
    assert_eq!(CellKey::from_bytes(&v.to_bytes()), Some(v));
    assert_ne!(v.to_bytes(), k.to_bytes());
    assert_ne!(
        CapKey::bytes(&v, &video.agent),
        CapKey::bytes(&k, &video.agent),
        "the per-agent cap counts voice and video apart"
    );
    assert!("city".parse::<Axis>().is_err());
    assert_eq!("arm".parse::<Axis>(), Ok(Axis::Arm));
    assert_eq!("kind".parse::<Axis>(), Ok(Axis::Kind));
    assert_eq!("region".parse::<Axis>(), Ok(Axis::Region));
    assert_eq!(parse_kind("video"), Ok(StreamKind::Video));
    assert!(parse_kind("audio").is_err());
}

/// A video-like test of the same country, network, platform and hour: worse MOS, more loss.
fn video(agent: u8) -> Observation {
    let mut o = obs("RU", Platform::Telegram, agent, 300.0, 0.5);
    o.kind = StreamKind::Video;
    o.figures[6] = Some(1.2); // MOS
    o
}

#[test]
fn video_tests_never_land_in_a_voice_cell() {
    let mut o = Vec::new();
    for agent in 1..=3 {
        o.push(obs("RU", Platform::Telegram, agent, 10.0, 0.0));
        o.push(video(agent));
        o.push(video(agent + 10));
    }
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    // By default a query counts voice only: the video tests move nothing.
    for axes in [vec![Axis::Country], vec![Axis::Platform, Axis::Arm], vec![]] {
        let cells = both(&o, &axes, &Filter::default(), &open);
        assert_eq!(cells.len(), 1, "{axes:?}");
        let c = &cells[0];
        assert_eq!((c.count, c.agents), (3, 3), "{axes:?}");
        let mos = c.mos.unwrap();
        assert_eq!((mos.p10, mos.median, mos.p90), (4.0, 4.0, 4.0), "{axes:?}");
        assert_eq!(c.rtt_ms.unwrap().p90, 10.0, "{axes:?}");
        assert_eq!(c.kind, None, "kind is not an axis here");
    }
    // With kind as an axis, one cell per kind, each pure.
    let by_kind = both(&o, &[Axis::Country, Axis::Kind], &Filter::default(), &open);
    assert_eq!(by_kind.len(), 2);
    assert_eq!(by_kind[0].kind.as_deref(), Some("voice"));
    assert_eq!(by_kind[0].mos.unwrap().p10, 4.0);
    assert_eq!(by_kind[1].kind.as_deref(), Some("video"));
    assert_eq!((by_kind[1].count, by_kind[1].agents), (6, 6));
    assert_eq!(by_kind[1].mos.unwrap().p90, 1.2);
    // A kind filter picks one.
    let only_video = Filter {
        kind: Some(StreamKind::Video),
        ..Filter::default()
    };
    let v = both(&o, &[Axis::Country], &only_video, &open);
    assert_eq!(v[0].count, 6);
    assert_eq!(v[0].mos.unwrap().median, 1.2);
    // The fine cells themselves never mix.
    let fine = fine_cells(&o, &open);
    assert_eq!(fine.len(), 2);
    assert!(fine
        .iter()
        .all(|(k, s)| s.count == if k.kind == StreamKind::Voice { 3 } else { 6 }));
    let csv = crate::export::cells_csv(&by_kind, &[Axis::Country, Axis::Kind]);
    assert!(csv.starts_with("country,kind,count,agents,"), "{csv}");
    assert!(csv.contains("\nRU,video,6,6,"), "{csv}");
}

#[test]
fn blocked_calls_and_missing_references_are_counted_apart() {
    use VerdictRule as R;
    let tests = [
        (Verdict::Differentiated, Some(R::Blocked)),
        (Verdict::Differentiated, Some(R::Cut)),
        (Verdict::Differentiated, Some(R::PlatformServersUnreachable)),
        (Verdict::Differentiated, Some(R::Loss)),
        (Verdict::Differentiated, None),
        (Verdict::Inconclusive, Some(R::NoReference)),
        (Verdict::Inconclusive, Some(R::NothingAnswered)),
        (Verdict::Inconclusive, Some(R::ReflectorBusy)),
        (Verdict::Inconclusive, Some(R::TooLittleData)),
        (Verdict::None, Some(R::NotWorse)),
        // A rule that disagrees with its verdict is no finding.
        (Verdict::None, Some(R::Blocked)),
        (Verdict::Differentiated, Some(R::NoReference)),
    ];
    let o: Vec<Observation> = tests
        .iter()
        .enumerate()
        .map(|(i, (v, rule))| {
            let mut x = obs("RU", Platform::Whatsapp, i as u8, 10.0, 0.0);
            (x.verdict, x.rule) = (Some(*v), *rule);
            x
        })
        .collect();
    let open = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    let cells = both(&o, &[Axis::Country], &Filter::default(), &open);
    let c = &cells[0];
    assert_eq!(
        c.verdicts,
        VerdictCounts {
            none: 2,
            inconclusive: 4,
            differentiated: 6,
            blocked: 3,
            no_reference: 3,
        }
    );
    assert_eq!(c.differentiated_share, Some(6.0 / 12.0));
    assert_eq!(c.blocked_share, Some(3.0 / 12.0));
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["verdicts"]["blocked"], 3);
    assert_eq!(json["verdicts"]["no_reference"], 3);
    assert_eq!(json["blocked_share"], 0.25);
    let csv = crate::export::cells_csv(&cells, &[Axis::Country]);
    let (head, row) = csv.trim_end().split_once('\n').unwrap();
    assert!(
        head.ends_with(
            ",verdict_none,verdict_inconclusive,verdict_differentiated,verdict_blocked,\
             verdict_no_reference,differentiated_share,blocked_share,uploaded_elsewhere,\
             hosting"
        ),
        "{head}"
    );
    assert!(row.ends_with(",2,4,6,3,3,0.5,0.25,0,0"), "{row}");
    // No verdicts (generic tests): no shares.
    let generic = vec![obs("RU", Platform::Generic, 1, 10.0, 0.0)];
    let g = both(&generic, &[Axis::Country], &Filter::default(), &open);
    assert_eq!(
        (g[0].differentiated_share, g[0].blocked_share),
        (None, None)
    );
    // Old cells' JSON (before `blocked` and `no_reference`) still reads.
    let old: VerdictCounts =
        serde_json::from_str(r#"{"none":1,"inconclusive":2,"differentiated":3}"#).unwrap();
    assert_eq!(
        (old.blocked, old.no_reference, old.blocked_share()),
        (0, 0, Some(0.0))
    );
}

fn stored_report() -> StoredReport {
    StoredReport {
        signed: callwatch_proto::SignedReport {
            body: Vec::new(),
            key: vec![5; 32],
            signature: Vec::new(),
        },
        region: crate::geo::Region {
            country: "ru".into(),
            asn: 12389,
            subdivision: String::new(),
        },
        received_at_ms: 0,
        filing: Default::default(),
    }
}

fn comparison() -> callwatch_proto::report::ArmComparison {
    callwatch_proto::report::ArmComparison {
        platform_median: 0.0,
        control_median: 0.0,
        p_value: 1.0,
        effect: 0.0,
        significant: false,
    }
}

#[test]
fn cells_count_how_their_reports_were_filed_after_the_cap() {
    let mark = |mut o: Observation, uploaded_elsewhere: bool, hosting: bool| {
        o.filing = Filing {
            source: RegionSource::Attested,
            uploaded_elsewhere,
            hosting,
            ..Filing::default()
        };
        o
    };
    let o = vec![
        mark(obs("RU", Platform::Whatsapp, 1, 10.0, 0.1), true, false),
        mark(obs("RU", Platform::Whatsapp, 2, 30.0, 0.3), true, true),
        mark(obs("RU", Platform::Whatsapp, 3, 20.0, 0.2), false, false),
        // Over agent 1's cap of 1: not counted, marks included.
        mark(obs("RU", Platform::Whatsapp, 1, 20.0, 0.2), true, true),
        mark(obs("DE", Platform::Whatsapp, 3, 5.0, 0.0), false, true),
    ];
    let policy = Policy {
        min_agents: 1,
        max_per_agent_per_day: 1,
        ..Policy::default()
    };
    let cells = both(&o, &[Axis::Country], &Filter::default(), &policy);
    let of = |cc: &str| {
        cells
            .iter()
            .find(|c| c.country.as_deref() == Some(cc))
            .unwrap()
            .filing
    };
    assert_eq!(
        of("RU"),
        FilingCounts {
            uploaded_elsewhere: 2,
            hosting: 1
        }
    );
    assert_eq!(
        of("DE"),
        FilingCounts {
            uploaded_elsewhere: 0,
            hosting: 1
        }
    );
    let csv = crate::export::cells_csv(&cells, &[Axis::Country]);
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with(",uploaded_elsewhere,hosting"));
    assert!(
        csv.lines()
            .any(|l| l.starts_with("RU,3,3,") && l.ends_with(",2,1")),
        "{csv}"
    );
}

#[test]
fn a_test_taken_under_reflector_load_counts_but_gives_no_figures() {
    let mut r = CallReport::example();
    let fine = Observation::from_report(&stored_report(), &r);
    assert!(fine[0].figures.iter().any(Option::is_some));
    r.reflector_loaded = true;
    let loaded = Observation::from_report(&stored_report(), &r);
    assert_eq!(loaded.len(), fine.len(), "still counted");
    assert!(loaded.iter().all(|o| o.figures.iter().all(Option::is_none)));
}

#[test]
fn reports_give_their_kind_and_rule_and_only_measured_figures() {
    use callwatch_proto::report::VerdictDetail;
    // A blocked call: the platform handshake went unanswered, the control arm worked.
    let mut r = CallReport::example();
    r.platform = Platform::Whatsapp;
    r.stream_kind = StreamKind::Video;
    r.verdict = Some(Verdict::Differentiated);
    r.verdict_detail = Some(VerdictDetail {
        method: "test".into(),
        window_ms: 1000,
        windows: 0,
        loss: comparison(),
        delay: comparison(),
        jitter: comparison(),
        reason: "blocked".into(),
        rule: Some(VerdictRule::Blocked),
        onset: None,
        relay: None,
    });
    let control = r.streams[0].clone();
    let platform = &mut r.streams[0];
    platform.outcome = StreamOutcome::Blocked;
    (platform.packets_sent, platform.packets_reflected) = (0, None);
    platform.packets_received = 0;
    (platform.loss, platform.loss_up, platform.loss_down) = (Some(0.0), None, None);
    (platform.rtt_ms, platform.jitter_ms, platform.mos) = (None, None, None);
    let mut control = control;
    control.role = Role::Control;
    // The reflector's count never came: the split is unknown, the round trip is not.
    (control.loss_up, control.loss_down) = (None, None);
    r.streams.push(control);
    assert!(r.validate().is_ok(), "{:?}", r.validate());
    let o = Observation::from_report(&stored_report(), &r);
    assert_eq!(o.len(), 2);
    for x in &o {
        assert_eq!(x.kind, StreamKind::Video);
        assert_eq!(x.rule, Some(VerdictRule::Blocked));
        assert_eq!(x.cell_key().kind, StreamKind::Video);
        assert_eq!(x.cell_key().country, *b"RU");
    }
    assert_eq!(o[0].arm, Role::Platform);
    assert_eq!(
        o[0].figures, [None; FIGURE_COUNT],
        "a blocked arm measured nothing"
    );
    assert_eq!(o[1].figures[3], Some(0.02), "round-trip loss");
    assert_eq!((o[1].figures[4], o[1].figures[5]), (None, None));
    assert_eq!(o[1].figures[0], Some(11.5));
    let mut cell = CellState::default();
    o.iter().for_each(|x| cell.add(x));
    assert_eq!(
        (cell.verdicts.blocked, cell.verdicts.differentiated),
        (2, 2)
    );
    assert_eq!(cell.figures[3].count(), 1, "only the control arm's loss");
    assert!(cell.figures[4].is_empty() && cell.figures[5].is_empty());
    // A report from before the stream kind and the rule existed: voice, no finding.
    let old: CallReport = serde_json::from_value({
        let mut v = serde_json::to_value(CallReport::example()).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("stream_kind");
        m.remove("verdict_detail");
        v
    })
    .unwrap();
    let o = Observation::from_report(&stored_report(), &old);
    assert_eq!((o[0].kind, o[0].rule), (StreamKind::Voice, None));
}

proptest::proptest! {
    /// Merging two cells equals aggregating their reports together.
    #[test]
    fn merging_cells_equals_aggregating_their_reports(
        a in proptest::collection::vec((0u8..5, 0.0f64..2000.0, 0.0f64..1.0), 0..60),
        b in proptest::collection::vec((0u8..5, 0.0f64..2000.0, 0.0f64..1.0), 0..60),
    ) {
        let make = |v: &[(u8, f64, f64)]| -> Vec<Observation> {
            v.iter().map(|(agent, rtt, loss)| {
                obs("RU", Platform::Whatsapp, *agent, *rtt, *loss)
            }).collect()
        };
        let (oa, ob) = (make(&a), make(&b));
        let mut sa = CellState::default();
        oa.iter().for_each(|o| sa.add(o));
        let mut sb = CellState::default();
        ob.iter().for_each(|o| sb.add(o));
        let mut together = CellState::default();
        oa.iter().chain(&ob).for_each(|o| together.add(o));
        let mut merged = sa.clone();
        merged.merge(&sb);
        proptest::prop_assert_eq!(&merged, &together);
        let mut other_way = sb;
        other_way.merge(&sa);
        proptest::prop_assert_eq!(&other_way, &together);
    }

    /// A query's states — decoded without their flags, copied and merged without them — equal
    /// the whole states with the flags taken off, and the whole decode still reads the flags.
    #[test]
    fn states_decoded_and_merged_without_flags_equal_the_whole_ones_without_them(
        a in proptest::collection::vec((0u8..6, 0.0f64..2000.0, proptest::bool::ANY), 0..40),
        b in proptest::collection::vec((0u8..6, 0.0f64..2000.0, proptest::bool::ANY), 0..40),
    ) {
        let state = |v: &[(u8, f64, bool)]| {
            let mut s = CellState::default();
            for (agent, rtt, flagged) in v {
                let mut o = obs("RU", Platform::Whatsapp, *agent, *rtt, 0.1);
                if *flagged {
                    o.verdict = Some(Verdict::Differentiated);
                }
                s.add(&o);
            }
            s
        };
        let (sa, sb) = (state(&a), state(&b));
        let unflagged = |s: &CellState| CellState { flagged: Default::default(), ..s.clone() };
        let bytes = postcard::to_allocvec(&sa).unwrap();
        let whole: CellState = postcard::from_bytes(&bytes).unwrap();
        proptest::prop_assert_eq!(&whole, &sa);
        proptest::prop_assert_eq!(
            a.iter().any(|x| x.2),
            !whole.flagged.is_empty(),
            "the flags are stored"
        );
        let decoded = CellState::decode_unflagged(&bytes).unwrap();
        proptest::prop_assert_eq!(&decoded, &unflagged(&sa));
        proptest::prop_assert_eq!(&sa.clone_unflagged(), &unflagged(&sa));
        let mut merged = decoded;
        merged.merge_unflagged(&sb);
        let mut whole_merge = sa.clone();
        whole_merge.merge(&sb);
        proptest::prop_assert_eq!(&merged, &unflagged(&whole_merge));
        // Cut anywhere up to where the flags start, the decode is an error, not a panic.
        let flags_len = postcard::to_allocvec(&sa.flagged).unwrap().len();
        for cut in 0..=bytes.len() - flags_len {
            proptest::prop_assert!(CellState::decode_unflagged(&bytes[..cut]).is_err());
        }
    }

    /// The hand-read decode accepts exactly the bytes serde's does, and reads the same state:
    /// a state's bytes with one byte changed, one byte inserted or removed, or cut short.
    #[test]
    fn the_hand_read_decode_reads_what_serde_reads(
        a in proptest::collection::vec((0u8..6, -5.0f64..2000.0, proptest::bool::ANY), 0..30),
        at in proptest::num::usize::ANY,
        byte in proptest::num::u8::ANY,
        how in 0u8..4,
    ) {
        let mut s = CellState::default();
        for (agent, rtt, flagged) in &a {
            let mut o = obs("DE", Platform::Telegram, *agent, *rtt, 0.01);
            if *flagged {
                o.verdict = Some(Verdict::Differentiated);
            }
            s.add(&o);
        }
        let mut bytes = postcard::to_allocvec(&s).unwrap();
        super::damage(&mut bytes, at, byte, how);
        let by_serde = serde_unflagged(&bytes);
        let by_hand = CellState::decode_unflagged(&bytes);
        proptest::prop_assert_eq!(by_hand.as_ref().ok(), by_serde.as_ref().ok(), "{:?}", by_hand.as_ref().err());
    }
}

/// [`CellState::decode_unflagged`] by serde: the fields before the flags as one struct, the
/// flags' bytes required to follow.
fn serde_unflagged(bytes: &[u8]) -> Result<CellState, postcard::Error> {
    #[derive(serde::Deserialize)]
    struct Unflagged {
        count: u64,
        agents: super::keyset::KeySet,
        verdicts: super::cell::VerdictCounts,
        figures: [super::sketch::Sketch; FIGURE_COUNT],
        filing: super::cell::FilingCounts,
        prefixes: super::keyset::KeySet,
    }
    let (u, flags): (Unflagged, _) = postcard::take_from_bytes(bytes)?;
    if flags.is_empty() {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    Ok(CellState {
        count: u.count,
        agents: u.agents,
        verdicts: u.verdicts,
        figures: u.figures,
        filing: u.filing,
        prefixes: u.prefixes,
        flagged: Default::default(),
    })
}

/// The decimals a JSON number carries as serde_json writes it (shortest form).
fn json_decimals(v: &serde_json::Value) -> usize {
    let text = v.to_string();
    let mut parts = text.split(['e', 'E']);
    let mantissa = parts.next().unwrap_or("");
    let exp: i64 = parts.next().map_or(0, |e| e.parse().unwrap());
    let frac = mantissa.split('.').nth(1).unwrap_or("");
    (frac.trim_end_matches('0').len() as i64 - exp).max(0) as usize
}

/// Checks every number of a published cell's JSON by its rule: a figure or share has at most its
/// rule's decimals and is `want`'s full-precision value rounded to that rule; everything else
/// (counts, agents, verdicts, filing) is an integer.
fn assert_published_by_rule(json: &serde_json::Value, full: &Cell) {
    use callwatch_proto::precision;
    let full_json: BTreeMap<&str, Option<f64>> = [
        ("differentiated_share", full.differentiated_share),
        ("blocked_share", full.blocked_share),
    ]
    .into_iter()
    .collect();
    for (name, value) in json.as_object().unwrap() {
        let Some(p) = precision::of(name) else {
            let ints = match value {
                serde_json::Value::Object(m) => m.values().cloned().collect(),
                v => vec![v.clone()],
            };
            for v in ints.iter().filter(|v| v.is_number()) {
                assert!(v.is_u64(), "{name}: {v} is a count");
            }
            continue;
        };
        let check = |v: &serde_json::Value, exact: f64| {
            assert!(
                json_decimals(v) <= p.decimals(),
                "{name}: {v} has too many decimals"
            );
            assert_eq!(
                v.as_f64(),
                p.round(exact),
                "{name}: {v} is not {exact} rounded"
            );
            if p == precision::Precision::Count {
                assert!(v.is_i64(), "{name}: {v} is a count");
            }
        };
        if let Some(i) = FIGURES.iter().position(|f| f == name) {
            assert_eq!(
                FIGURE_PRECISION[i], p,
                "{name}: the figure's rule is the table's"
            );
            let f = full.figures()[i].unwrap();
            for (stat, exact) in [("p10", f.p10), ("median", f.median), ("p90", f.p90)] {
                check(&value[stat], exact);
            }
        } else {
            check(value, full_json[name.as_str()].unwrap());
        }
    }
}

#[test]
fn cells_publish_every_figure_rounded_to_its_rule_in_json_and_csv() {
    for (i, name) in FIGURES.iter().enumerate() {
        assert_eq!(
            callwatch_proto::precision::of(name),
            Some(FIGURE_PRECISION[i]),
            "{name}"
        );
    }
    let noisy = |x: f64| Figure {
        p10: x * 0.912_345_678_9,
        median: x,
        p90: x * 1.098_765_432_1 + 0.000_000_1,
    };
    let figures = [
        Some(noisy(48.123_456_789)),
        Some(noisy(1.087_654_321)),
        Some(noisy(0.1 + 0.2)),
        Some(noisy(0.089_803_588_750_917_65)),
        Some(noisy(0.012_345_67)),
        Some(noisy(-0.000_01)),
        Some(noisy(4.123_456_7)),
        Some(noisy(2.009_8)),
    ];
    let verdicts = VerdictCounts {
        none: 20,
        inconclusive: 1,
        differentiated: 9,
        blocked: 1,
        no_reference: 0,
    };
    let key = GroupKey {
        country: Some(*b"RU"),
        ..GroupKey::default()
    };
    let cell = Cell::new(&key, 30, 7, figures, verdicts, FilingCounts::default());
    assert_eq!(
        cell.differentiated_share,
        Some(0.3),
        "kept at full precision"
    );
    assert_eq!(
        cell.blocked_share,
        Some(1.0 / 30.0),
        "kept at full precision"
    );
    let json = serde_json::to_value(&cell).unwrap();
    assert_published_by_rule(&json, &cell);
    assert_eq!(json["rtt_ms"]["median"], 48.12);
    assert_eq!(json["loss"]["median"], 0.0898);
    assert_eq!(json["jitter_down_ms"]["median"], 0.3);
    assert_eq!(json["loss_down"]["median"], 0.0, "-0.00001 publishes as 0");
    assert_eq!(json["mos"]["median"], 4.12);
    assert_eq!(json["stalls"]["median"], 2);
    assert_eq!(json["blocked_share"], 0.0333);
    let text = serde_json::to_string(&cell).unwrap();
    assert!(
        text.contains(r#""loss":{"p10":0.0819,"median":0.0898,"p90":0.0987}"#),
        "{text}"
    );
    assert!(!text.contains("-0"), "{text}");

    let csv = crate::export::cells_csv(&[cell], &[Axis::Country]);
    let (head, row) = csv.trim_end().split_once('\n').unwrap();
    let cols: BTreeMap<&str, &str> = head.split(',').zip(row.split(',')).collect();
    for (col, text) in &cols {
        let name = col
            .trim_end_matches("_p10")
            .trim_end_matches("_median")
            .trim_end_matches("_p90");
        let in_json = match col.strip_prefix(name) {
            Some("") => json[name].clone(),
            Some(stat) => json[name][&stat[1..]].clone(),
            None => unreachable!(),
        };
        match callwatch_proto::precision::of(name) {
            // The same figure as the JSON's, in the same shortest form.
            Some(_) => assert_eq!(
                text.parse::<f64>().ok(),
                in_json.as_f64(),
                "{col}: CSV {text}, JSON {in_json}"
            ),
            None => assert!(
                text.parse::<u64>().is_ok() || *col == "country",
                "{col}: {text}"
            ),
        }
    }
    assert_eq!(cols["loss_median"], "0.0898");
    assert_eq!(cols["rtt_ms_p90"], "52.88");
    assert_eq!(cols["jitter_down_ms_median"], "0.3");
    assert_eq!(cols["loss_down_median"], "0");
    assert_eq!(cols["stalls_median"], "2");
    assert_eq!(cols["blocked_share"], "0.0333");
}

/// `o` filed under prefix tag `tag` (the tag's 8 bytes are `tag` repeated).
fn on_prefix(mut o: Observation, tag: u8) -> Observation {
    o.filing.prefix_tag = Some(hex::encode([tag; 8]));
    o
}

#[test]
fn k_counts_network_prefixes_as_well_as_agent_keys() {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    // Three keys on two prefixes: three agents, but not three networks.
    let two_nets: Vec<Observation> = [(1, 0xa1), (2, 0xa1), (3, 0xa2)]
        .into_iter()
        .map(|(agent, tag)| on_prefix(obs("RU", Platform::Whatsapp, agent, 10.0, 0.0), tag))
        .collect();
    assert!(both(&two_nets, &[Axis::Country], &Filter::default(), &k3).is_empty());
    let mut state = CellState::default();
    for o in &two_nets {
        state.add(o);
    }
    assert_eq!((state.agents.len(), state.prefixes.len()), (3, 2));
    assert!(!state.meets(3) && state.meets(2));
    // A third network publishes it.
    let mut three_nets = two_nets.clone();
    three_nets[1] = on_prefix(three_nets[1].clone(), 0xa3);
    let cells = both(&three_nets, &[Axis::Country], &Filter::default(), &k3);
    assert_eq!((cells.len(), cells[0].agents), (1, 3));
    // Reports without a tag count as the prefix of their own key: prefix k is key k for them.
    let untagged: Vec<Observation> = (1..=3)
        .map(|a| obs("RU", Platform::Whatsapp, a, 10.0, 0.0))
        .collect();
    assert_eq!(untagged[0].prefix(), [1u8; 8]);
    assert_eq!(
        both(&untagged, &[Axis::Country], &Filter::default(), &k3).len(),
        1
    );
    // A tag that is not 16 hex digits is no tag.
    let mut bad = obs("RU", Platform::Whatsapp, 7, 10.0, 0.0);
    bad.filing.prefix_tag = Some("not-hex-at-all!!".into());
    assert_eq!(bad.prefix(), [7u8; 8]);
}

#[test]
fn one_prefix_counts_at_most_its_cap_per_day_first_arrivals_first() {
    let policy = Policy {
        min_agents: 1,
        max_per_agent_per_day: 3,
        max_per_prefix_per_day: 5,
    };
    let mut o = Vec::new();
    // Ten keys behind one prefix, four reports each (one over the agent cap), RTT = arrival.
    for round in 0..4 {
        for agent in 1..=10u8 {
            let rtt = f64::from(round * 10 + u32::from(agent));
            o.push(on_prefix(
                obs("RU", Platform::Telegram, agent, rtt, 0.0),
                0xee,
            ));
        }
    }
    // An honest agent on its own network.
    o.push(on_prefix(
        obs("RU", Platform::Telegram, 50, 99.0, 0.0),
        0x01,
    ));
    let cells = both(&o, &[Axis::Country], &Filter::default(), &policy);
    assert_eq!(
        cells[0].count,
        5 + 1,
        "five of the prefix's 40, and the honest one"
    );
    assert_eq!(
        cells[0].agents, 6,
        "the first five keys to arrive, and the honest one"
    );
    // The first five to arrive: RTT 1..=5 (and the honest 99).
    assert_eq!(cells[0].rtt_ms.unwrap().p10, 1.0);
    // Another day is another budget.
    let next_day: Vec<Observation> = o
        .iter()
        .map(|x| Observation {
            started_at_ms: x.started_at_ms + 86_400_000,
            ..x.clone()
        })
        .collect();
    let both_days: Vec<Observation> = o.iter().chain(&next_day).cloned().collect();
    let cells = both(&both_days, &[Axis::Country], &Filter::default(), &policy);
    assert_eq!(cells[0].count, 2 * 6);
    // Without the prefix cap the agent cap alone lets 30 through.
    let uncapped = Policy {
        max_per_prefix_per_day: usize::MAX,
        ..policy
    };
    let cells = both(&o, &[Axis::Country], &Filter::default(), &uncapped);
    assert_eq!(cells[0].count, 30 + 1);
}

/// k is met per UTC day: one volunteer whose key and prefix tag change every day (the
/// default rotation, and the day-keyed tags) is three agents on three networks over three days,
/// and must not publish a cell alone; a cell over several days is the merge of the days that met
/// k on their own, and a lone agent's other days count nowhere.
#[test]
fn k_is_met_per_day_and_a_rotating_volunteer_never_meets_it_alone() {
    const DAY_MS: i64 = 24 * HOUR_MS;
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let on_day = |mut o: Observation, day: i64| {
        o.started_at_ms = T0 + day * DAY_MS;
        o
    };
    // One volunteer, days 0, 1, 2: a new key and a new tag each day.
    let lone: Vec<Observation> = (0..3)
        .map(|d| {
            let o = obs("RU", Platform::Whatsapp, 10 + d as u8, 50.0, 0.0);
            on_day(on_prefix(o, 0xb0 + d as u8), d)
        })
        .collect();
    for axes in [&[Axis::Country][..], &[Axis::Platform], &[]] {
        assert!(
            both(&lone, axes, &Filter::default(), &k3).is_empty(),
            "{axes:?}"
        );
    }
    // With the cell counted as a whole it would have met k: three keys, three tags.
    let mut whole = CellState::default();
    for o in &lone {
        whole.add(o);
    }
    assert!(whole.meets(3));
    // Three volunteers on day 0 publish day 0; the lone volunteer's days 1 and 2 do not join.
    let mut o = lone.clone();
    for a in 1..=2u8 {
        o.push(on_prefix(
            obs("RU", Platform::Whatsapp, a, 100.0, 0.0),
            0xc0 + a,
        ));
    }
    let cells = both(&o, &[Axis::Country], &Filter::default(), &k3);
    assert_eq!(cells.len(), 1);
    assert_eq!((cells[0].count, cells[0].agents), (3, 3), "day 0 only");
    // The day axis says the same, day by day.
    let days = both(&o, &[Axis::Day], &Filter::default(), &k3);
    assert_eq!(days.len(), 1);
}

/// The differencing attacks of #15 item 4 fail: no difference of published cells isolates fewer
/// than k agents. A lone agent tests at hour 3 in a network where three agents test at hour 10;
/// another lone agent tests in a second network of the country.
#[test]
fn differences_of_published_cells_never_single_out_an_agent() {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let at = |mut o: Observation, hour: i64, asn: u32| {
        o.started_at_ms = T0 + hour * HOUR_MS + 60_000;
        o.asn = asn;
        o
    };
    let mut o: Vec<Observation> = (1..=3u8)
        .map(|a| {
            on_prefix(
                at(obs("RU", Platform::Whatsapp, a, 100.0, 0.0), 10, 12389),
                a,
            )
        })
        .collect();
    let lone = on_prefix(
        at(obs("RU", Platform::Whatsapp, 9, 500.0, 0.5), 3, 12389),
        9,
    );
    o.push(lone.clone());
    let other_net = on_prefix(at(obs("RU", Platform::Whatsapp, 8, 700.0, 0.7), 5, 8359), 8);
    o.push(other_net.clone());
    let count =
        |axes: &[Axis], f: &Filter| -> u64 { both(&o, axes, f, &k3).iter().map(|c| c.count).sum() };
    let since = |h: i64| Filter {
        since_ms: Some(T0 + h * HOUR_MS),
        ..Filter::default()
    };
    let until = |h: i64| Filter {
        until_ms: Some(T0 + h * HOUR_MS),
        ..Filter::default()
    };
    // (a) Two queries an hour apart (either bound, with or without the ASN axis) answer the same:
    // without the hour axis a range is whole days. The network's day cell (4 agents) is
    // published, so its lone agent is in it, but no shift of the range takes it out.
    for axes in [&[Axis::Country][..], &[Axis::Asn], &[Axis::Platform]] {
        let whole = count(axes, &Filter::default());
        for h in [1, 3, 4, 10, 11, 23] {
            assert_eq!(count(axes, &since(h)), whole, "{axes:?} since +{h} h");
            assert_eq!(count(axes, &until(h)), whole, "{axes:?} until +{h} h");
        }
        // A day later: nothing; the difference is the whole day.
        assert_eq!(count(axes, &since(24)), 0);
    }
    // With the hour axis: hour 10 has 3 agents, but the block's other hours (the lone agent at
    // 3) are below k, so no hour of the block is published: the day cell minus the published
    // hours would have been the lone agent.
    let hours = both(&o, &[Axis::Hour], &Filter::default(), &k3);
    assert!(hours.is_empty(), "{hours:?}");
    // Had the lone agent tested with two others at hour 3, both hours would be published and
    // differences of hours and days are unions of hours that meet k.
    let mut o2 = o.clone();
    for a in [21u8, 22] {
        o2.push(on_prefix(
            at(obs("RU", Platform::Whatsapp, a, 90.0, 0.0), 3, 12389),
            a,
        ));
    }
    let hours = both(&o2, &[Axis::Hour], &Filter::default(), &k3);
    assert_eq!(
        hours.iter().map(|c| c.count).collect::<Vec<_>>(),
        vec![3, 3]
    );
    // (b) A country cell minus its published network cells: the second network's lone agent is
    // below k on its own, and the country's small-network remainder (that agent alone) is below
    // k too, so it is in no cell: country − Σ networks = 0.
    let country: u64 = count(&[Axis::Country], &Filter::default());
    let networks: u64 = count(&[Axis::Asn], &Filter::default());
    assert_eq!((country, networks), (4, 4));
    let only_small = Filter {
        asn: Some(8359),
        ..Filter::default()
    };
    assert_eq!(count(&[Axis::Country], &only_small), 0);
    // Three small networks of one agent each make a remainder that meets k: published in the
    // country cell, never by network, so country − Σ networks is those three together.
    let mut o3 = o.clone();
    for (a, asn) in [(31u8, 64501), (32, 64502)] {
        o3.push(on_prefix(
            at(obs("RU", Platform::Whatsapp, a, 50.0, 0.0), 7, asn),
            a,
        ));
    }
    let country: u64 = both(&o3, &[Axis::Country], &Filter::default(), &k3)
        .iter()
        .map(|c| c.count)
        .sum();
    let by_net = both(&o3, &[Axis::Asn], &Filter::default(), &k3);
    assert_eq!(by_net.len(), 1, "only AS12389 meets k");
    let networks: u64 = by_net.iter().map(|c| c.count).sum();
    assert_eq!(
        country - networks,
        3,
        "the remainder: three agents on three prefixes"
    );
}

fn in_region(mut o: Observation, subdivision: &str) -> Observation {
    o.subdivision = subdivision.into();
    o
}

/// One agent of AS12389 (RU) on a prefix of its own, in `subdivision`.
fn ru_agent(a: u8, subdivision: &str) -> Observation {
    on_prefix(
        in_region(
            obs("RU", Platform::Whatsapp, a, 100.0 + f64::from(a), 0.0),
            subdivision,
        ),
        a,
    )
}

/// Region cells (#17 item 3) are the region atoms of blocks that meet k: a block's
/// subdivisions that meet k, when its other subdivisions together meet k too or are none.
#[test]
fn region_cells_publish_only_region_atoms_that_meet_k() {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let regions = |o: &[Observation], axes: &[Axis], f: &Filter| -> Vec<(String, u64)> {
        both(o, axes, f, &k3)
            .iter()
            .map(|c| (c.region.clone().unwrap_or_default(), c.agents))
            .collect()
    };
    let all = Filter::default();
    // Three in Moscow, three in St Petersburg, one in Krasnodar, one network.
    let mut o: Vec<Observation> = (1..=3)
        .map(|a| ru_agent(a, "RU-MOW"))
        .chain((4..=6).map(|a| ru_agent(a, "RU-SPE")))
        .collect();
    o.push(ru_agent(7, "RU-KDA"));
    // The country (and the network) cell has all seven, as it would without subdivisions.
    assert_eq!(both(&o, &[Axis::Country], &all, &k3)[0].agents, 7);
    assert_eq!(both(&o, &[Axis::Asn], &all, &k3)[0].agents, 7);
    // No region is published: the country minus its regions would be the lone agent.
    assert!(regions(&o, &[Axis::Region], &all).is_empty());
    let mow = Filter {
        region: Some("RU-MOW".into()),
        ..Filter::default()
    };
    assert!(both(&o, &[Axis::Country], &mow, &k3).is_empty());
    // Two more without a known subdivision: the rest (Krasnodar's one and the two) meets k, so
    // Moscow and St Petersburg are published; the rest is in no region cell.
    for a in [8, 9] {
        o.push(ru_agent(a, ""));
    }
    assert_eq!(
        regions(&o, &[Axis::Region], &all),
        vec![("RU-MOW".into(), 3), ("RU-SPE".into(), 3)]
    );
    let cells = both(&o, &[Axis::Country], &mow, &k3);
    assert_eq!((cells.len(), cells[0].agents), (1, 3), "the region filter");
    let kda = Filter {
        region: Some("RU-KDA".into()),
        ..Filter::default()
    };
    assert!(both(&o, &[Axis::Country], &kda, &k3).is_empty());
    // Two more in Krasnodar: every part meets k on its own, the unknown one (two agents) does
    // not, and alone it is the rest: nothing regional again.
    for a in [10, 11] {
        o.push(ru_agent(a, "RU-KDA"));
    }
    assert!(regions(&o, &[Axis::Region], &all).is_empty());
    // A third unknown one: every part meets k, the unknown part is published as the country.
    o.push(ru_agent(12, ""));
    assert_eq!(
        regions(&o, &[Axis::Region], &all),
        vec![
            ("RU".into(), 3),
            ("RU-KDA".into(), 3),
            ("RU-MOW".into(), 3),
            ("RU-SPE".into(), 3)
        ]
    );
    assert_eq!(
        regions(&o, &[Axis::Region, Axis::Asn], &all).len(),
        4,
        "one network"
    );
    // Three agents of Moscow behind one prefix are one prefix: Moscow does not meet k.
    let one_prefix: Vec<Observation> = o
        .iter()
        .map(|x| match x.subdivision.as_str() {
            "RU-MOW" => on_prefix(x.clone(), 1),
            _ => x.clone(),
        })
        .collect();
    assert!(regions(&one_prefix, &[Axis::Region], &all).is_empty());
    // Regions by hour: the region atoms' hours, each under the same rule.
    let hourly: Vec<Observation> = o
        .iter()
        .map(|x| {
            let mut x = x.clone();
            if x.subdivision == "RU-SPE" {
                x.started_at_ms += 5 * HOUR_MS;
            }
            x
        })
        .collect();
    let cells = both(&hourly, &[Axis::Hour, Axis::Region], &all, &k3);
    let got: Vec<(String, String, u64)> = cells
        .iter()
        .map(|c| (c.hour.clone().unwrap(), c.region.clone().unwrap(), c.agents))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.contains(&("2025-11-28T05:00:00Z".into(), "RU-SPE".into(), 3)));
    // A region filter with the hour axis: only that region's hours.
    let cells = both(&hourly, &[Axis::Hour], &mow, &k3);
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].agents, 3);
    // Three small networks of one agent each, all in Moscow: their remainder meets k, and its
    // Moscow atom is in the Moscow cell without the ASN axis, never with it.
    let mut small = Vec::new();
    for (a, asn) in [(31u8, 64501), (32, 64502), (33, 64503)] {
        let mut x = ru_agent(a, "RU-MOW");
        x.asn = asn;
        small.push(x);
    }
    assert_eq!(
        regions(&small, &[Axis::Region], &all),
        vec![("RU-MOW".into(), 3)]
    );
    assert!(regions(&small, &[Axis::Region, Axis::Asn], &all).is_empty());
    let by_asn = Filter {
        asn: Some(64501),
        ..mow.clone()
    };
    assert!(both(&small, &[Axis::Region], &by_asn, &k3).is_empty());
}

/// An hourly query that neither groups nor filters by region publishes a block's hours whole:
/// the region atom (3 agents in Moscow) and the rest together (3 agents in three other
/// subdivisions, none meeting k alone, all three together meeting it), in the sketched cells and
/// in the exact reference alike. One hour of one block: 6 reports of 6 agents on 6 prefixes.
#[test]
fn an_hourly_query_without_regions_publishes_the_region_atoms_and_the_rest_together() {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let mut o: Vec<Observation> = (1..=3).map(|a| ru_agent(a, "RU-MOW")).collect();
    o.push(ru_agent(4, "RU-SPE"));
    o.push(ru_agent(5, "RU-KDA"));
    o.push(ru_agent(6, ""));
    let cells = both(&o, &[Axis::Country, Axis::Hour], &Filter::default(), &k3);
    let got: Vec<(Option<String>, Option<String>, u64, u64)> = cells
        .iter()
        .map(|c| (c.country.clone(), c.hour.clone(), c.count, c.agents))
        .collect();
    assert_eq!(
        got,
        vec![(Some("RU".into()), Some("2025-11-28T00:00:00Z".into()), 6, 6)]
    );
}

/// No subdivisions known (Country and ASN databases only, or stores from before): every
/// query that does not ask for regions answers as it did before regions existed, and the
/// region axis gives each country's published data as the country alone.
#[test]
fn without_subdivisions_regions_are_their_countries() {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let mut o: Vec<Observation> = (1..=4).map(|a| ru_agent(a, "")).collect();
    o.push(on_prefix(obs("DE", Platform::Whatsapp, 20, 50.0, 0.0), 20));
    let countries = both(&o, &[Axis::Country], &Filter::default(), &k3);
    let regions = both(&o, &[Axis::Region], &Filter::default(), &k3);
    assert_eq!(countries.len(), 1);
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].region.as_deref(), Some("RU"));
    assert_eq!(
        (regions[0].count, regions[0].agents),
        (countries[0].count, countries[0].agents)
    );
}

/// The differencing rule of #15 item 4 with regions: over a varied day of many agents in
/// several regions, networks and hours, the observations behind every cell that any of many
/// queries publishes are collected ([`exact_members`]); for every published cell and every
/// query, the cells of that query inside it (a country's regions, a region's networks, a day's
/// hours) leave, taken off it together, nothing or at least k agents on k prefixes. Sketched
/// cells agree with the exact ones on the way (`both`).
#[test]
fn differences_of_published_cells_with_regions_never_single_out_an_agent() {
    // A small deterministic generator (no dependency): xorshift.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let subs = ["RU-MOW", "RU-SPE", "RU-KDA", ""];
    let asns = [12389, 8359, 64501, 64502];
    let mut o = Vec::new();
    for a in 1..=40u8 {
        // Most agents stay in one region and network for the day; some move.
        let (sub, asn) = (next(4) as usize, next(4) as usize);
        for t in 0..3 {
            let (sub, asn) = if next(5) == 0 {
                (next(4) as usize, next(4) as usize)
            } else {
                (sub, asn)
            };
            let mut x = ru_agent(a, subs[sub]);
            x.asn = asns[asn];
            // Some share a prefix with the agent before.
            x = on_prefix(x, if a % 5 == 0 { a - 1 } else { a });
            x.started_at_ms = T0 + (next(6) as i64) * HOUR_MS + i64::from(t) * 60_000;
            o.push(x);
        }
    }
    let (regional, hourly, nested) = assert_no_difference_singles_out(&o);
    assert!(
        regional >= 5 && hourly >= 5,
        "{regional} regional, {hourly} hourly cells"
    );
    assert!(
        nested > 50,
        "only {nested} nested pairs: the data is too thin"
    );
    // Hours are divided within region atoms, not beside them: Moscow's three agents at 10:00
    // and one of them again at 14:00 with two of St Petersburg's, whose other three tested at
    // 12:00. By block, every hour meets k; but the Moscow cell minus its 10:00 hour would be
    // the one agent at 14:00. Within Moscow (and within St Petersburg) the other hours are
    // below k, so no hour is published at all.
    let at = |a: u8, sub: &str, hour: i64| {
        let mut x = ru_agent(a, sub);
        x.started_at_ms = T0 + hour * HOUR_MS;
        x
    };
    let crafted = vec![
        at(1, "RU-MOW", 10),
        at(2, "RU-MOW", 10),
        at(3, "RU-MOW", 10),
        at(1, "RU-MOW", 14),
        at(7, "RU-SPE", 14),
        at(8, "RU-SPE", 14),
        at(4, "RU-SPE", 12),
        at(5, "RU-SPE", 12),
        at(6, "RU-SPE", 12),
    ];
    let (regional, hourly, _) = assert_no_difference_singles_out(&crafted);
    assert!(
        regional > 0,
        "Moscow and St Petersburg are published by day"
    );
    assert_eq!(hourly, 0);
}

/// For every cell that any of many queries publishes over `o`, and every query: the cells of
/// that query strictly inside it, taken off it together, leave nothing or at least k (3) agents
/// on 3 prefixes. Returns (regional cells, hourly cells, pairs checked).
fn assert_no_difference_singles_out(o: &[Observation]) -> (usize, usize, usize) {
    let k3 = Policy {
        min_agents: 3,
        ..Policy::default()
    };
    let region = |r: &str| Filter {
        region: Some(r.into()),
        ..Filter::default()
    };
    let mut filters = vec![Filter::default(), region("RU-MOW"), region("RU-SPE")];
    filters.push(Filter {
        asn: Some(12389),
        ..Filter::default()
    });
    filters.push(Filter {
        asn: Some(8359),
        ..region("RU-KDA")
    });
    for h in [1, 3, 12] {
        filters.push(Filter {
            since_ms: Some(T0 + h * HOUR_MS),
            ..Filter::default()
        });
        filters.push(Filter {
            until_ms: Some(T0 + h * HOUR_MS),
            ..region("RU-MOW")
        });
    }
    let axes_sets: [&[Axis]; 10] = [
        &[],
        &[Axis::Country],
        &[Axis::Region],
        &[Axis::Asn],
        &[Axis::Region, Axis::Asn],
        &[Axis::Hour],
        &[Axis::Hour, Axis::Region],
        &[Axis::Hour, Axis::Asn],
        &[Axis::Day, Axis::Region],
        &[Axis::Platform, Axis::Region],
    ];
    // (query number, the cell, its observations by address).
    let mut published: Vec<(usize, String, BTreeSet<usize>)> = Vec::new();
    let mut queries = 0;
    for axes in axes_sets {
        for f in &filters {
            both(o, axes, f, &k3);
            for (key, members) in exact_members(o, axes, f, &k3) {
                let set: BTreeSet<usize> = members
                    .iter()
                    .map(|m| std::ptr::from_ref(*m) as usize)
                    .collect();
                published.push((queries, format!("{axes:?} {f:?} {key:?}"), set));
            }
            queries += 1;
        }
    }
    let by_addr: BTreeMap<usize, &Observation> = o
        .iter()
        .map(|x| (std::ptr::from_ref(x) as usize, x))
        .collect();
    let mut nested = 0;
    for (_, qa, a) in &published {
        for q in 0..queries {
            // The cells of query `q` strictly inside `a`, together.
            let inside: Vec<&(usize, String, BTreeSet<usize>)> = published
                .iter()
                .filter(|(n, _, b)| *n == q && b.len() < a.len() && b.is_subset(a))
                .collect();
            if inside.is_empty() {
                continue;
            }
            nested += 1;
            let mut rest = a.clone();
            for (_, _, b) in &inside {
                rest.retain(|p| !b.contains(p));
            }
            if rest.is_empty() {
                continue;
            }
            let rest: Vec<&Observation> = rest.iter().map(|p| by_addr[p]).collect();
            let agents: BTreeSet<[u8; 8]> = rest
                .iter()
                .map(|x| {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&x.agent[..8]);
                    p
                })
                .collect();
            let prefixes: BTreeSet<[u8; 8]> = rest.iter().map(|x| x.prefix()).collect();
            assert!(
                agents.len() >= 3 && prefixes.len() >= 3,
                "{qa}\nminus the cells inside it of\n{}\nleaves {} agents on {} prefixes",
                inside[0].1,
                agents.len(),
                prefixes.len()
            );
        }
    }
    let regional = published
        .iter()
        .filter(|(_, q, _)| q.contains("region: Some(("))
        .count();
    let hourly = published
        .iter()
        .filter(|(_, q, _)| q.contains("hour: Some("))
        .count();
    (regional, hourly, nested)
}

/// T0's hour, 1_764_288_000_000 / 3_600_000, and its day, / 24.
const T0_HOUR: i64 = 490_080;
const T0_DAY: i64 = 20_420;

#[test]
fn hours_are_big_endian_with_the_sign_bit_flipped_so_byte_order_is_time_order() {
    assert_eq!(T0 / HOUR_MS, T0_HOUR);
    // 490 080 = 0x07_7A60.
    assert_eq!(ordered_i64(T0_HOUR), [0x80, 0, 0, 0, 0, 0x07, 0x7a, 0x60]);
    assert_eq!(ordered_i64(0), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        ordered_i64(-1),
        [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(ordered_i64(i64::MIN), [0; 8]);
    assert_eq!(ordered_i64(i64::MAX), [0xff; 8]);
    // Hours before the epoch read back too, and sort before it.
    let k = obs("RU", Platform::Max, 9, 1.0, 0.0).cell_key();
    let mut earlier = Vec::new();
    for hour in [i64::MIN, -5, -1, 0, T0_HOUR] {
        let at = CellKey { hour, ..k };
        assert_eq!(CellKey::from_bytes(&at.to_bytes()), Some(at), "{hour}");
        earlier.push(at.to_bytes());
    }
    assert!(earlier.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_cell_key_and_the_cap_keys_are_laid_out_byte_by_byte() {
    let mut o = obs("RU", Platform::Max, 9, 1.0, 0.0);
    o.subdivision = "RU-MOW".into();
    let k = o.cell_key();
    assert_eq!(k.day(), T0_DAY);
    assert_eq!(k.country_str(), "RU");
    // Hour, country, subdivision, ASN 12389 = 0x3065, Max = 4, platform arm = 0, voice = 0.
    let hour = [0x80, 0, 0, 0, 0, 0x07, 0x7a, 0x60];
    let mut want = hour.to_vec();
    want.extend_from_slice(b"RUMOW");
    want.extend_from_slice(&[0, 0, 0x30, 0x65, 4, 0, 0]);
    assert_eq!(k.to_bytes().to_vec(), want);
    // The caps: day 20 420 = 0x4FC4, country, ASN, platform, arm, kind, then the agent key
    // (or the prefix); no hour, no subdivision.
    let mut cap = vec![0x80, 0, 0, 0, 0, 0, 0x4f, 0xc4];
    cap.extend_from_slice(b"RU");
    cap.extend_from_slice(&[0, 0, 0x30, 0x65, 4, 0, 0]);
    let mut with_agent = cap.clone();
    with_agent.extend_from_slice(&[9; 32]);
    assert_eq!(CapKey::bytes(&k, &o.agent).to_vec(), with_agent);
    let mut with_prefix = cap;
    with_prefix.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        PrefixCapKey::bytes(&k, &[1, 2, 3, 4, 5, 6, 7, 8]).to_vec(),
        with_prefix
    );
    assert_eq!((CAP_KEY_LEN, PREFIX_CAP_KEY_LEN), (49, 25));
}

#[test]
fn shares_are_of_the_judged_tests_and_none_without_any() {
    let none = VerdictCounts::default();
    assert_eq!(none.judged(), 0);
    assert_eq!(none.differentiated_share(), None);
    assert_eq!(none.blocked_share(), None);
    // 1 + 3 + 4 = 8 judged; 4 of 8 differentiated, 1 of 8 blocked.
    let v = VerdictCounts {
        none: 1,
        inconclusive: 3,
        differentiated: 4,
        blocked: 1,
        no_reference: 2,
    };
    assert_eq!(v.judged(), 8);
    assert_eq!(v.differentiated_share(), Some(0.5));
    assert_eq!(v.blocked_share(), Some(0.125));
}

#[test]
fn a_cell_shows_each_axis_value_as_the_api_does() {
    let key = GroupKey {
        day: Some(T0_DAY),
        hour: Some(T0_HOUR + 1),
        country: Some(*b"RU"),
        region: Some((*b"RU", *b"MOW")),
        asn: Some(12389),
        platform: Some(Platform::Telegram),
        arm: Some(Role::Control),
        kind: Some(StreamKind::Video),
    };
    let c = Cell::new(
        &key,
        1,
        1,
        [None; FIGURE_COUNT],
        VerdictCounts::default(),
        FilingCounts::default(),
    );
    let shown: Vec<String> = Axis::ALL.iter().map(|a| c.axis_text(*a)).collect();
    assert_eq!(
        shown,
        [
            "2025-11-28",
            "2025-11-28T01:00:00Z",
            "RU",
            "RU-MOW",
            "12389",
            "telegram",
            "control",
            "video"
        ]
    );
    let bare = Cell::new(
        &GroupKey::default(),
        0,
        0,
        [None; FIGURE_COUNT],
        VerdictCounts::default(),
        FilingCounts::default(),
    );
    for a in Axis::ALL {
        assert_eq!(bare.axis_text(a), "", "{a}");
    }
    assert_eq!(day_string(-1), "1969-12-31");
    assert_eq!(hour_string(-1), "1969-12-31T23:00:00Z");
}

#[test]
fn a_prefix_is_the_eight_byte_tag_or_else_the_agent_key() {
    let agent = [0xab; 32];
    let tagged = |tag: Option<&str>| Filing {
        prefix_tag: tag.map(str::to_string),
        ..Filing::default()
    };
    assert_eq!(
        prefix_of(&tagged(Some("0011223344556677")), &agent),
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]
    );
    // Too short, too long, not hex, none: the agent key's first 8 bytes.
    for tag in [
        Some("00112233"),
        Some("001122334455667788"),
        Some("zz11223344556677"),
        None,
    ] {
        assert_eq!(prefix_of(&tagged(tag), &agent), [0xab; 8], "{tag:?}");
    }
}

#[test]
fn axes_print_and_parse_by_their_api_names() {
    let names = [
        "day", "hour", "country", "region", "asn", "platform", "arm", "kind",
    ];
    for (a, name) in Axis::ALL.into_iter().zip(names) {
        assert_eq!(a.to_string(), name);
        assert_eq!(name.parse::<Axis>(), Ok(a));
    }
    assert_eq!(relative_error(), 0.01);
}

#[test]
fn hour_bounds_and_whole_days_by_hand() {
    const DAY: i64 = 24 * HOUR_MS;
    let f = Filter {
        since_ms: Some(T0 + 5 * HOUR_MS + 1),
        until_ms: Some(T0 + 50 * HOUR_MS + 30 * 60_000),
        ..Filter::default()
    };
    assert_eq!(f.since_hour(), Some(T0_HOUR + 5));
    assert_eq!(f.until_hour(), Some(T0_HOUR + 51));
    let d = f.whole_days();
    assert_eq!((d.since_ms, d.until_ms), (Some(T0), Some(T0 + 3 * DAY)));
    // Bounds already on the hour and on the day stay where they are.
    let exact = Filter {
        since_ms: Some(T0 + 24 * HOUR_MS),
        until_ms: Some(T0 + 48 * HOUR_MS),
        ..Filter::default()
    };
    assert_eq!(exact.since_hour(), Some(T0_HOUR + 24));
    assert_eq!(exact.until_hour(), Some(T0_HOUR + 48));
    let d = exact.whole_days();
    assert_eq!(
        (d.since_ms, d.until_ms),
        (Some(T0 + DAY), Some(T0 + 2 * DAY))
    );
    assert_eq!(Filter::default().whole_days(), Filter::default());
    assert_eq!(Filter::default().kind_or_default(), StreamKind::Voice);
    let video = Filter {
        kind: Some(StreamKind::Video),
        ..Filter::default()
    };
    assert_eq!(video.kind_or_default(), StreamKind::Video);
}

#[test]
fn a_plan_reads_whole_days_from_day_cells_and_the_edges_from_fine_cells() {
    // Hours 490 085 (T0 + 5 h) to 490 131 (T0 + 50 h 30 min, rounded up): whole days from
    // 490 104 (the next midnight) to 490 128 (the last midnight before the end).
    let f = Filter {
        since_ms: Some(T0 + 5 * HOUR_MS),
        until_ms: Some(T0 + 50 * HOUR_MS + 30 * 60_000),
        ..Filter::default()
    };
    let plan = Plan::of(&[Axis::Country], &f);
    assert_eq!(
        plan,
        Plan {
            fine: [
                Some((T0_HOUR + 5, T0_HOUR + 24)),
                Some((T0_HOUR + 48, T0_HOUR + 51))
            ],
            days: Some((T0_HOUR + 24, T0_HOUR + 48)),
        }
    );
    // With the hour axis, or without a whole day, everything is fine cells.
    let hourly = Plan {
        fine: [Some((T0_HOUR + 5, T0_HOUR + 51)), None],
        days: None,
    };
    assert_eq!(Plan::of(&[Axis::Hour], &f), hourly);
    assert_eq!(Plan::hourly(&f), hourly);
    let within_a_day = Filter {
        since_ms: Some(T0 + HOUR_MS),
        until_ms: Some(T0 + 24 * HOUR_MS),
        ..Filter::default()
    };
    assert_eq!(
        Plan::of(&[], &within_a_day),
        Plan {
            fine: [Some((T0_HOUR + 1, T0_HOUR + 24)), None],
            days: None,
        }
    );
    // On day boundaries there are no edges; unbounded, every day.
    let days = Filter {
        since_ms: Some(T0),
        until_ms: Some(T0 + 48 * HOUR_MS),
        ..Filter::default()
    };
    assert_eq!(
        Plan::of(&[], &days),
        Plan {
            fine: [None, None],
            days: Some((T0_HOUR, T0_HOUR + 48)),
        }
    );
    assert_eq!(
        Plan::of(&[], &Filter::default()),
        Plan {
            fine: [None, None],
            days: Some((i64::MIN, i64::MAX)),
        }
    );
}

#[test]
fn a_filter_matches_a_fine_cell_on_every_field_it_names() {
    let mut o = obs("RU", Platform::Telegram, 1, 1.0, 0.0);
    o.subdivision = "RU-MOW".into();
    // Hour T0_HOUR, RU, MOW, AS12389, telegram, platform arm, voice.
    let k = o.cell_key();
    let all = Filter::default();
    assert!(all.matches(&k, &[]));
    let yes_no = |yes: Filter, no: Filter| {
        assert!(yes.matches(&k, &[]), "{yes:?}");
        assert!(!no.matches(&k, &[]), "{no:?}");
    };
    let f = Filter::default;
    let text = |s: &str| Some(s.to_string());
    yes_no(
        Filter {
            country: text("ru"),
            ..f()
        },
        Filter {
            country: text("DE"),
            ..f()
        },
    );
    yes_no(
        Filter {
            region: text("RU-MOW"),
            ..f()
        },
        Filter {
            region: text("DE-BE"),
            ..f()
        },
    );
    yes_no(
        Filter {
            asn: Some(12389),
            ..f()
        },
        Filter {
            asn: Some(3320),
            ..f()
        },
    );
    yes_no(
        Filter {
            platform: Some(Platform::Telegram),
            ..f()
        },
        Filter {
            platform: Some(Platform::Max),
            ..f()
        },
    );
    yes_no(
        Filter {
            arm: Some(Role::Platform),
            ..f()
        },
        Filter {
            arm: Some(Role::Control),
            ..f()
        },
    );
    yes_no(
        Filter {
            kind: Some(StreamKind::Voice),
            ..f()
        },
        Filter {
            kind: Some(StreamKind::Video),
            ..f()
        },
    );
    // Since the cell's own hour, yes; since the next, no. Until the next hour, yes; until
    // its own, no.
    yes_no(
        Filter {
            since_ms: Some(T0),
            ..f()
        },
        Filter {
            since_ms: Some(T0 + HOUR_MS),
            ..f()
        },
    );
    yes_no(
        Filter {
            until_ms: Some(T0 + 1),
            ..f()
        },
        Filter {
            until_ms: Some(T0),
            ..f()
        },
    );
    // A region filter reads its whole country; which subdivision is its own is apart.
    let spb = Filter {
        region: text("RU-SPE"),
        ..f()
    };
    assert!(spb.matches(&k, &[]));
    assert!(!spb.matches_region(&k));
    assert!(Filter {
        region: text("RU-MOW"),
        ..f()
    }
    .matches_region(&k));
    assert!(!Filter {
        region: text("RU-XX-1"),
        ..f()
    }
    .matches_region(&k));
    assert!(all.matches_region(&k));
    // Without an arm or a kind: platform arms and voice only, unless it is an axis; a named
    // arm or kind holds whatever the axes.
    let control = CellKey {
        arm: Role::Control,
        ..k
    };
    assert!(!all.matches(&control, &[]));
    assert!(all.matches(&control, &[Axis::Arm]));
    assert!(!Filter {
        arm: Some(Role::Platform),
        ..f()
    }
    .matches(&control, &[Axis::Arm]));
    let video = CellKey {
        kind: StreamKind::Video,
        ..k
    };
    assert!(!all.matches(&video, &[]));
    assert!(all.matches(&video, &[Axis::Kind]));
    assert!(!Filter {
        kind: Some(StreamKind::Voice),
        ..f()
    }
    .matches(&video, &[Axis::Kind]));
    // Regional: grouped or filtered by region.
    assert!(!all.regional(&[Axis::Country]));
    assert!(all.regional(&[Axis::Country, Axis::Region]));
    assert!(Filter {
        region: text("RU-MOW"),
        ..f()
    }
    .regional(&[]));
}

#[test]
fn an_observation_carries_its_agent_key_and_a_stream_that_sent_nothing_gives_no_figure() {
    let r = CallReport::example();
    let o = Observation::from_report(&stored_report(), &r);
    assert!(!o.is_empty());
    assert!(o.iter().all(|x| x.agent == [5; 32]));
    assert!(o[0].figures.iter().any(Option::is_some));
    // A key of another length (a damaged record) reads as the zero key, never a panic.
    let mut odd = stored_report();
    odd.signed.key = vec![5; 31];
    let o = Observation::from_report(&odd, &r);
    assert!(o.iter().all(|x| x.agent == [0; 32]));
    // A stream that sent no probe, though neither blocked nor refused: no figure.
    let mut idle = CallReport::example();
    idle.streams[0].packets_sent = 0;
    let o = Observation::from_report(&stored_report(), &idle);
    assert_eq!(o[0].figures, [None; FIGURE_COUNT]);
}
