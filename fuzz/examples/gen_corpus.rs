//! Writes the seed corpus, `corpus/<target>/seed-*`, from the proto crate's own encoders.
//!
//! `cargo run --example gen_corpus` (from `fuzz/`). Deterministic: running it again rewrites the
//! same files.

use callwatch_collector::domain::{CellKey, CellState};
use callwatch_collector::domain::sketch::Sketch;
use callwatch_proto::probe::{
    Accept, AttestQuery, Attestation, Close, CloseAck, Open, Packet, Probe, Reject, RejectReason, Reply,
};
use callwatch_proto::report::{
    ArmComparison, Burst, IpdvUpDown, JitterBuffer, OneWayDelay, Quantiles, Stalls, Stats,
    TimerStats, UpDown,
};
use callwatch_proto::upload::{encode_frame, ReportStatus, Request, Response};
use callwatch_proto::{CallReport, Platform, Role, SignedReport, Verdict, VerdictDetail};
use std::path::{Path, PathBuf};

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    // Every seed must pass its own target's checks.
    assert!(callwatch_fuzz::run(target, bytes));
    std::fs::write(dir(target).join(format!("seed-{name}")), bytes).unwrap();
}

fn with(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

/// A report with every optional part filled, so the seeds cover the whole schema.
fn full_report() -> CallReport {
    let mut r = CallReport::example();
    r.platform = Platform::Whatsapp;
    r.verdict = Some(Verdict::Inconclusive);
    let cmp = ArmComparison {
        platform_median: 0.02,
        control_median: 0.01,
        p_value: 0.2,
        effect: 0.01,
        significant: false,
    };
    r.verdict_detail = Some(VerdictDetail {
        method: "mann-whitney-u per 1 s window; holm over 3 metrics".into(),
        window_ms: 1000,
        windows: 10,
        loss: cmp,
        delay: cmp,
        jitter: cmp,
        reason: "no metric differed significantly".into(),
        rule: Some(callwatch_proto::report::VerdictRule::NotWorse),
        onset: Some(callwatch_proto::report::Onset {
            at_ms: 5_000,
            p_value: 0.3,
            effect: 1.5,
        }),
        relay: Some(callwatch_proto::report::RelayComparison {
            relay_sent: 10,
            relay_answered: 0,
            reference_sent: 10,
            reference_answered: 10,
            p_value: 5.4e-6,
        }),
    });
    let stats = Stats {
        min: 1.0,
        mean: 2.0,
        median: 2.0,
        p95: 3.0,
        p99: 4.0,
        max: 5.0,
    };
    let s = &mut r.streams[0];
    s.owd_ms = Some(OneWayDelay {
        up: stats,
        down: stats,
        reference: "relative-to-path-minimum".into(),
        clock_offset_ms: -3.25,
        clock_offset_error_ms: 5.0,
    });
    s.ipdv_ms = Some(IpdvUpDown {
        up: Quantiles { p50: 0.5, p95: 2.0 },
        down: Quantiles { p50: 0.6, p95: 2.5 },
    });
    s.burst = Some(Burst {
        count: 3,
        mean_len: 1.5,
        max_len: 2,
        gap_density: 0.01,
        burst_density: 0.5,
        gilbert_p: 0.01,
        gilbert_q: 0.6,
        burst_ratio: 1.6,
    });
    s.jitter_buffer = Some(JitterBuffer {
        fixed_40ms: 0.02,
        fixed_60ms: 0.015,
        fixed_100ms: 0.01,
        adaptive: 0.012,
        adaptive_delay_ms: 45.0,
    });
    s.stalls = Some(Stalls {
        count: 1,
        longest_ms: 80.0,
    });
    s.timer = Some(TimerStats {
        mean_error_us: 12.0,
        p99_error_us: 80.0,
        late_sends: 0,
    });
    s.mos_basis = Some("g107 opus row; constants not ITU-published".into());
    let mut control = s.clone();
    control.role = Role::Control;
    control.jitter_ms = Some(UpDown { up: 0.5, down: 0.7 });
    r.streams.push(control);
    let claim = callwatch_proto::attest::Claim {
        report_id: r.id.0,
        country: *b"RU",
        asn: 12389,
        hour: callwatch_proto::attest::unix_hour(r.started_at),
        subdivision: Some(*b"SPE"),
        token_digest: None,
    };
    let (key_id, sig) = claim.sign(&ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]));
    r.attestation = callwatch_proto::attest::RegionAttestation::from_signed(&claim, &key_id, &sig);
    // The attested subdivision needs schema 2.
    r.schema = r.lowest_schema();
    r
}

fn probe_seeds() {
    let cookie = [0xA5; 16];
    let packets = [
        Packet::Open(Open {
            session: 0x0102_0304_0506_0708,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        }),
        Packet::Accept(Accept {
            session: 9,
            cookie,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
            reflector_time_us: 5_000_000_000,
            features: 0,
            seal_key_id: [0; 4],
        }),
        Packet::Reject(Reject {
            session: 9,
            reason: RejectReason::RateLimited,
        }),
        Packet::Probe(Probe {
            session: 9,
            cookie,
            seq: 17,
            sent_us: 123_456_789,
            len: 172,
        }),
        Packet::Reply(Reply {
            session: 9,
            seq: 17,
            sent_us: 123_456_789,
            reflector_rx_us: 5_000_000_100,
            reflector_tx_us: 5_000_000_120,
            reflector_received: 18,
            reflector_drops: 0,
            len: 172,
        }),
        Packet::Close(Close {
            session: 9,
            cookie,
            packets_sent: 500,
        }),
        Packet::CloseAck(CloseAck {
            session: 9,
            reflector_received: 495,
        }),
        Packet::AttestQuery(AttestQuery {
            session: 9,
            cookie,
            report_id: [7; 16],
            with_token: true,
            with_subdivision: true,
        }),
        Packet::Attestation(Attestation {
            session: 9,
            report_id: [7; 16],
            country: *b"RU",
            asn: 12389,
            hour: 488_888,
            key_id: [1; 8],
            signature: [2; 64],
            token: Some([3; callwatch_proto::pathtoken::PATH_TOKEN_LEN]),
            subdivision: Some(*b"SPE"),
        }),
    ];
    let names = [
        "open",
        "accept",
        "reject",
        "probe",
        "reply",
        "close",
        "close-ack",
        "attest-token-query-subdivision",
        "attestation-token-subdivision",
    ];
    for (p, name) in packets.iter().zip(names) {
        write("probe_packet", name, &p.encode());
    }
    // A probe in every built-in profile's platform framing, as a reflector receives it.
    for profile in callwatch_proto::profile::profiles() {
        let f = &profile.framing;
        let core_len = f.core_len_for_wire(200).unwrap_or(172);
        let core = Packet::Probe(Probe {
            session: 9,
            cookie,
            seq: 3,
            sent_us: 60_000,
            len: core_len as u16,
        })
        .encode();
        let mut wire = Vec::new();
        f.wrap(&core, &mut wire);
        write(
            "probe_packet",
            &format!("{}-{}", profile.platform, f.name()),
            &wire,
        );
    }
}

fn signed(report: &CallReport, seed: u8) -> SignedReport {
    SignedReport::sign(report, &ed25519_dalek::SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn upload_and_report_seeds() {
    let a = signed(&CallReport::example(), 1);
    let b = signed(&full_report(), 2);
    let req = Request::Upload {
        reports: vec![a.clone(), b.clone()],
    };
    let frame = encode_frame(&req).unwrap();
    write("upload_frame", "request-frame", &frame);
    write("upload_frame", "request-body", &frame[4..]);
    let resp = Response::Ack {
        statuses: vec![
            ReportStatus::Accepted,
            ReportStatus::Duplicate,
            ReportStatus::Rejected {
                reason: "bad signature".into(),
            },
        ],
    };
    let frame = encode_frame(&resp).unwrap();
    write("upload_frame", "ack-frame", &frame);
    write("upload_frame", "ack-body", &frame[4..]);
    let err = Response::Error {
        code: 3,
        reason: "busy".into(),
    };
    write(
        "upload_frame",
        "error-body",
        &encode_frame(&err).unwrap()[4..],
    );

    for (s, name) in [(&a, "example"), (&b, "full")] {
        write(
            "signed_report",
            &format!("postcard-{name}"),
            &with(0, &postcard::to_allocvec(s).unwrap()),
        );
        write(
            "signed_report",
            &format!("json-{name}"),
            &with(1, &serde_json::to_vec(s).unwrap()),
        );
        write("signed_report", &format!("body-{name}"), &with(2, &s.body));
    }
}

fn config_seeds() {
    let example = include_str!("../../packaging/agent.example.toml");
    write("agent_config", "example", example.as_bytes());
    let mut cfg = callwatch_agent::config::ConfigFile::new(
        "127.0.0.1:4433".into(),
        "ab".repeat(32),
        Some("127.0.0.1:40401".into()),
    );
    write("agent_config", "init", cfg.to_toml().as_bytes());
    cfg.quiet_hours = Some("23:00-07:00".into());
    cfg.utc_offset = "-05:30".into();
    cfg.budget_per_day = Some("50MB".into());
    cfg.budget_per_month = Some("1.5 GiB".into());
    cfg.rotate_key_every = Some("30d".into());
    cfg.size = Some(172);
    cfg.relay_servers
        .insert(Platform::Whatsapp, vec!["stun.example.net:3478".into()]);
    cfg.bind = Some("192.0.2.10".parse().unwrap());
    write("agent_config", "every-key", cfg.to_toml().as_bytes());
}

fn query_seeds() {
    for (name, q) in [
        ("day", "axis_x=day"),
        (
            "full",
            "axis_x=country&axis_y=platform&format=csv&country=ru&asn=AS12389&platform=whatsapp&arm=control&since=2026-11-01&until=2026-12-01T00%3A00%3A00Z",
        ),
        ("hour-asn", "axis_x=hour&axis_y=asn&since=2026-11-28T10:30:00%2B03:00"),
        ("reports", "since=1700000000000&limit=500"),
        ("reports-rfc3339", "since=2026-11-28T00:00:00Z"),
    ] {
        write("api_query", name, q.as_bytes());
    }
}

fn sketch_seeds() {
    let mut s = Sketch::new();
    for v in [0.0, 1e-9, 0.5, 11.5, 12.0, 250.0, -3.0, 1e6] {
        s.add(v);
    }
    write(
        "sketch_and_cells",
        "sketch",
        &with(0, &postcard::to_allocvec(&s).unwrap()),
    );
    write(
        "sketch_and_cells",
        "sketch-empty",
        &with(0, &postcard::to_allocvec(&Sketch::new()).unwrap()),
    );
    let mut c = CellState {
        count: 3,
        ..CellState::default()
    };
    for a in 0..3u8 {
        c.agents.insert([a; 8]);
        c.figures[0].add(10.0 + f64::from(a));
        c.figures[3].add(0.01);
    }
    c.verdicts.differentiated = 1;
    c.verdicts.none = 2;
    write(
        "sketch_and_cells",
        "cell",
        &with(1, &postcard::to_allocvec(&c).unwrap()),
    );
    let k = CellKey {
        hour: 493_000,
        country: *b"RU",
        subdivision: *b"MOW",
        asn: 12389,
        platform: Platform::Telegram,
        arm: Role::Control,
        kind: callwatch_proto::report::StreamKind::Voice,
    };
    write("sketch_and_cells", "cell-key", &with(2, &k.to_bytes()));
    let values: Vec<u8> = [1.0f64, 2.5, 1e-7, -4.0, 1e300, 0.33]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write("sketch_and_cells", "values", &with(3, &values));
}

/// Inputs found by search that open a session and get probes reflected and a close acked.
fn reflector_seeds() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut found = 0;
    for _ in 0..200_000 {
        let len = 64 + (x % 700) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let s = callwatch_fuzz::drive_reflector(&bytes);
        if s.probes_reflected >= 2 && s.opens >= 1 {
            write("reflector_core", &format!("session-{found}"), &bytes);
            found += 1;
            if found == 4 {
                return;
            }
        }
    }
    eprintln!("only {found} reflector seeds found");
}

fn main() {
    probe_seeds();
    upload_and_report_seeds();
    config_seeds();
    query_seeds();
    sketch_seeds();
    reflector_seeds();
    for t in callwatch_fuzz::TARGETS {
        let n = std::fs::read_dir(dir(t)).unwrap().count();
        println!("{t}: {n} seeds");
    }
}
