//! The reflector's amplification factor (bytes out / bytes in) for every kind of hostile input,
//! on the collector's own sans-IO reflector: each class must stay at or below 1.0. The table it
//! prints with `--nocapture` is the one in RELIABILITY.md.

use callwatch_agent::engine::call::{CallRandom, CallTest};
use callwatch_agent::engine::TestSpec;
use callwatch_proto::framing::{Framing, Preamble, STUN_MAGIC_COOKIE};
use callwatch_proto::probe::{Accept, Close, CountQuery, Open, Packet, Probe};
use callwatch_proto::profile::profile;
use callwatch_proto::Platform;
use callwatch_reflector::{Limits, Reflector};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;

const T0: u64 = 10_000_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn open_bytes(session: u64) -> Vec<u8> {
    Packet::Open(Open {
        session,
        interval_ms: 20,
        size: 172,
        duration_ms: 10_000,
    })
    .encode()
}

fn accept(r: &mut Reflector, now: u64, src: SocketAddr, session: u64) -> Accept {
    match Packet::decode(&r.handle(now, src, &open_bytes(session)).unwrap()).unwrap() {
        Packet::Accept(a) => a,
        other => panic!("{other:?}"),
    }
}

/// A Telegram arm's reflector hello with the tags of test `seed`.
fn hello(seed: u64) -> Vec<u8> {
    let tg = profile(Platform::Telegram);
    let framing = tg.framing.for_test(seed);
    tg.preamble
        .as_ref()
        .unwrap()
        .datagram(&framing, seed, 0)
        .unwrap()
}

/// A Signal arm's TURN Allocate request of test `seed`.
fn allocate(seed: u64) -> Vec<u8> {
    let preamble = profile(Platform::Signal).preamble.as_ref().unwrap();
    assert!(matches!(preamble, Preamble::TurnAllocate { .. }));
    preamble
        .datagram(&Framing::Raw, seed, 1_760_000_000)
        .unwrap()
}

fn probe(cookie: [u8; 16], session: u64, seq: u32, len: u16) -> Vec<u8> {
    Packet::Probe(Probe {
        session,
        cookie,
        seq,
        sent_us: 1,
        len,
    })
    .encode()
}

/// What a reflector did with one class of input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fed {
    datagrams: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Datagrams `handle` answered at all (the driver sends exactly these).
    answered: u64,
    dropped_bad_cookie: u64,
    dropped_expired: u64,
}

/// Feeds `inputs` (time, source, datagram) to a fresh reflector; counts what came back.
fn run(prepare: impl FnOnce(&mut Reflector) -> Vec<(u64, SocketAddr, Vec<u8>)>) -> Fed {
    let mut r = Reflector::new([9; 32], Limits::default());
    let inputs = prepare(&mut r);
    let before = r.stats();
    let (mut datagrams, mut answered) = (0, 0);
    for (now, src, d) in inputs {
        datagrams += 1;
        if let Some(out) = r.handle(now, src, &d) {
            answered += 1;
            assert!(out.len() <= d.len(), "an answer longer than its datagram");
        }
    }
    let after = r.stats();
    Fed {
        datagrams,
        bytes_in: after.bytes_in - before.bytes_in,
        bytes_out: after.bytes_out - before.bytes_out,
        answered,
        dropped_bad_cookie: after.dropped_bad_cookie - before.dropped_bad_cookie,
        dropped_expired: after.dropped_expired - before.dropped_expired,
    }
}

/// The rows RELIABILITY.md promises zero bytes for ("The reflector never amplifies": probes
/// with another address's, a forged or a stale cookie), and the counter each must land in.
const ZERO_ROWS: [&str; 3] = [
    "probes with another address's cookie",
    "probes with a forged cookie",
    "probes after the session expired (stale cookie)",
];

#[test]
fn amplification_stays_at_or_below_one_for_every_hostile_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let a = addr("127.0.0.2:40000");
    let b = addr("127.0.0.3:40000");
    let garbage: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let n = rng.gen_range(0..1500);
            (0..n).map(|_| rng.gen()).collect()
        })
        .collect();
    let mut rows: Vec<(&str, Fed)> = Vec::new();
    rows.push((
        "random datagrams (0–1500 B)",
        run(|_| garbage.iter().map(|d| (T0, a, d.clone())).collect()),
    ));
    rows.push((
        "opens, 1000 sessions from one source",
        run(|_| (0..1000).map(|s| (T0 + s, a, open_bytes(s))).collect()),
    ));
    rows.push((
        "probes without a cookie",
        run(|_| {
            (0..1000)
                .map(|s| (T0, a, probe([0; 16], 7, s, 1000)))
                .collect()
        }),
    ));
    rows.push((
        "probes with another address's cookie",
        run(|r| {
            let c = accept(r, T0, a, 7).cookie;
            (0..1000)
                .map(|s| (T0 + 1, b, probe(c, 7, s, 1000)))
                .collect()
        }),
    ));
    rows.push((
        "probes with a forged cookie",
        run(|r| {
            let mut c = accept(r, T0, a, 7).cookie;
            c[0] ^= 1;
            (0..1000)
                .map(|s| (T0 + 1, a, probe(c, 7, s, 1000)))
                .collect()
        }),
    ));
    rows.push((
        "probes after the session expired (stale cookie)",
        run(|r| {
            let c = accept(r, T0, a, 7).cookie;
            let late = T0 + 3_600_000_000;
            (0..1000).map(|s| (late, a, probe(c, 7, s, 1000))).collect()
        }),
    ));
    rows.push((
        "flood of valid probes at one instant",
        run(|r| {
            let c = accept(r, T0, a, 7).cookie;
            (0..5000)
                .map(|s| (T0 + 1, a, probe(c, 7, s, 1000)))
                .collect()
        }),
    ));
    rows.push((
        "closes with a forged cookie",
        run(|r| {
            let _ = accept(r, T0, a, 7);
            (0..1000)
                .map(|s| {
                    let close = Packet::Close(Close {
                        session: 7,
                        cookie: [s as u8; 16],
                        packets_sent: s,
                    });
                    (T0 + 1, a, close.encode())
                })
                .collect()
        }),
    ));
    rows.push((
        "STUN-framed random payloads",
        run(|_| {
            garbage
                .iter()
                .take(1000)
                .map(|d| {
                    let mut f = vec![0x00, 0x01, 0, 0];
                    f.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
                    f.extend_from_slice(d);
                    (T0, a, f)
                })
                .collect()
        }),
    ));
    rows.push((
        "Telegram reflector hellos (40 B), 1000 tags",
        run(|_| (0..1000).map(|s| (T0 + s, a, hello(s))).collect()),
    ));
    rows.push((
        "Telegram hello look-alikes: cut, padded, another special (36–60 B)",
        run(|_| {
            (0..1000)
                .map(|s| {
                    let mut h = hello(s);
                    match s % 3 {
                        0 => h.truncate(36),
                        1 => h.extend([0xFF; 20]),
                        _ => h[28] = 0xFF, // FF FF FF FF: a special packet, no hello
                    }
                    (T0 + s, a, h)
                })
                .collect()
        }),
    ));
    rows.push((
        "TURN Allocate requests (the Signal arm's), IPv4 and IPv6",
        run(|_| {
            (0..1000)
                .map(|s| {
                    let src = if s % 2 == 0 { a } else { addr("[::1]:40000") };
                    (T0 + s, src, allocate(s))
                })
                .collect()
        }),
    ));
    rows.push((
        "TURN Allocate requests cut short (20–96 B)",
        run(|_| {
            (0..1000)
                .map(|s| {
                    let mut m = allocate(s);
                    let keep = 20 + 4 * (s as usize % 20);
                    m.truncate(keep);
                    m[2..4].copy_from_slice(&((keep - 20) as u16).to_be_bytes());
                    (T0 + s, a, m)
                })
                .collect()
        }),
    ));
    rows.push((
        "STUN Binding requests (the relay reference), IPv4 40 B and IPv6 40/44 B",
        run(|_| {
            (0..1000)
                .map(|s| {
                    let (src, len) = match s % 3 {
                        0 => (a, 40),
                        1 => (addr("[::1]:40000"), 40),
                        _ => (addr("[::1]:40000"), 44),
                    };
                    let mut m = vec![0u8; len];
                    m[0..2].copy_from_slice(&1u16.to_be_bytes());
                    m[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
                    m[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
                    m[8..12].copy_from_slice(&(s as u32).to_be_bytes());
                    (T0 + s, src, m)
                })
                .collect()
        }),
    ));
    rows.push((
        "count queries with a forged target cookie",
        run(|r| {
            let c = accept(r, T0, a, 8).cookie;
            let p = accept(r, T0, addr("127.0.0.2:40001"), 9).cookie;
            let _ = r.handle(T0 + 1, addr("127.0.0.2:40001"), &probe(p, 9, 0, 172));
            (0..1000u32)
                .map(|s| {
                    let q = Packet::CountQuery(CountQuery {
                        session: 8,
                        cookie: c,
                        target: 9,
                        target_cookie: [s as u8; 16],
                    });
                    (T0 + 2 + u64::from(s) * 20_000, a, q.encode())
                })
                .collect()
        }),
    ));
    rows.push((
        "an honest 10 s session at 50 packets/s (reference)",
        run(|r| {
            let c = accept(r, T0, a, 7).cookie;
            (0..500)
                .map(|s| (T0 + 1 + s as u64 * 20_000, a, probe(c, 7, s, 172)))
                .collect()
        }),
    ));
    let mut table = vec![
        "| input | bytes in | bytes out | factor |".to_string(),
        "|---|---:|---:|---:|".to_string(),
    ];
    for (what, fed) in &rows {
        let Fed {
            bytes_in,
            bytes_out,
            ..
        } = fed;
        let factor = *bytes_out as f64 / (*bytes_in).max(1) as f64;
        table.push(format!(
            "| {what} | {bytes_in} | {bytes_out} | {factor:.3} |"
        ));
        assert!(
            bytes_out <= bytes_in,
            "{what}: {bytes_out} out for {bytes_in} in"
        );
    }
    println!("{}", table.join("\n"));
    // The table RELIABILITY.md publishes is this one, to the byte (the inputs are seeded).
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../RELIABILITY.md"),
    )
    .unwrap();
    let published: Vec<&str> = doc
        .lines()
        .skip_while(|l| {
            !(l.starts_with("<!-- figures:")
                && l.contains("amplification_stays_at_or_below_one_for_every_hostile_input"))
        })
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(
        published, table,
        "RELIABILITY.md's amplification table differs from what this test measures: replace it \
         with the output of `cargo test -p callwatch-tests --test amplification -- --nocapture`"
    );
    // Zero, not merely at most as much: no datagram at all answers a probe with another
    // address's, a forged or a stale cookie, and each one is counted as a bad cookie (so the
    // silence is the cookie check's, not some other drop's).
    for name in ZERO_ROWS {
        let fed = rows.iter().find(|r| r.0 == name).unwrap().1;
        assert_eq!((fed.answered, fed.bytes_out), (0, 0), "{name}: {fed:?}");
        assert_eq!(fed.dropped_bad_cookie, fed.datagrams, "{name}: {fed:?}");
    }
    // The honest session is answered in full; hostile input mostly not at all.
    let honest = rows.last().unwrap().1;
    assert_eq!(honest.answered, honest.datagrams, "{honest:?}");
    assert_eq!(honest.bytes_out, honest.bytes_in, "{honest:?}");
}

/// A session that was answered, then outlived its cookie: its probes get nothing back, whether
/// its state is still in the table (counted as expired) or already swept (a stale cookie).
#[test]
fn an_expired_session_gets_no_answer_before_or_after_the_sweep() {
    let a = addr("127.0.0.2:40000");
    let limits = Limits::default();
    let mut r = Reflector::new([9; 32], limits);
    let c = accept(&mut r, T0, a, 7).cookie;
    assert!(r.handle(T0 + 1, a, &probe(c, 7, 0, 172)).is_some());
    assert_eq!(r.active_sessions(), 1);
    // Open asked for 10 s; the cookie lives that (rounded up to seconds), one second of clock
    // granularity, and the grace.
    let late = T0 + 11_000_000 + u64::from(limits.cookie_grace_ms) * 1_000 + 1_000_000;
    let before = r.stats();
    for seq in 1..=100 {
        assert_eq!(
            r.handle(late + u64::from(seq), a, &probe(c, 7, seq, 172)),
            None
        );
    }
    r.sweep(late + 200);
    assert_eq!(r.active_sessions(), 0, "the expired session was not swept");
    for seq in 101..=200 {
        assert_eq!(
            r.handle(late + u64::from(seq) + 200, a, &probe(c, 7, seq, 172)),
            None
        );
    }
    let after = r.stats();
    assert_eq!(after.bytes_out, before.bytes_out);
    assert_eq!(after.dropped_expired - before.dropped_expired, 100);
    assert_eq!(after.dropped_bad_cookie - before.dropped_bad_cookie, 100);
}

/// The same promise through the real UDP driver on loopback: for probes with another address's,
/// a forged and a stale cookie, not one datagram comes back. No timeout decides it: after the
/// hostile probes each socket opens a new session, and since the reflector answers one
/// socket's datagrams in order, the first datagram each socket receives must be that `Accept`
/// (any answer to a hostile probe would have come first). The counters say every hostile
/// probe was read and refused by the cookie check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cookies_get_not_one_datagram_back_over_udp() {
    use callwatch_reflector::spawn_reflector;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};
    const N: u32 = 50;
    // Sessions of at most 1 s and no grace, so that a cookie goes stale within 2 s.
    let limits = Limits {
        max_duration_ms: 1_000,
        cookie_grace_ms: 0,
        ..Limits::default()
    };
    let r = spawn_reflector(&[addr("127.0.0.1:0")], limits)
        .await
        .unwrap();
    let to = r.addrs[0];
    let socket = |ip: &str| {
        let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
        s.connect(to).unwrap();
        // Bounds a failure only (a lost reply); the test never waits for this to pass.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let a = socket("127.0.0.1");
    let b = socket("127.0.0.2"); // another address
    let next = |s: &UdpSocket| {
        let mut buf = [0u8; 2048];
        let n = s.recv(&mut buf).expect("no datagram within 10 s");
        Packet::decode(&buf[..n]).unwrap()
    };
    let open = |s: &UdpSocket, session: u64| -> [u8; 16] {
        s.send(&open_bytes(session)).unwrap();
        match next(s) {
            Packet::Accept(acc) if acc.session == session => acc.cookie,
            other => panic!("expected the Accept of session {session}, got {other:?}"),
        }
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Session 7 of `a` is answered: the path works.
    let c7 = open(&a, 7);
    a.send(&probe(c7, 7, 0, 172)).unwrap();
    assert!(matches!(next(&a), Packet::Reply(p) if p.session == 7));
    let bad0 = r.stats().dropped_bad_cookie;

    // Another address's cookie: `b` replays `a`'s.
    for seq in 0..N {
        b.send(&probe(c7, 7, seq, 1000)).unwrap();
    }
    // A forged cookie: `a`'s own for session 9, one bit changed.
    let mut c9 = open(&a, 9);
    c9[12] ^= 1;
    for seq in 0..N {
        a.send(&probe(c9, 9, seq, 1000)).unwrap();
    }
    let _ = open(&b, 20);
    let _ = open(&a, 21);
    assert_eq!(r.stats().dropped_bad_cookie - bad0, 2 * u64::from(N));

    // A stale cookie: session 7's, once the reflector has expired and swept it.
    wait_for("session 7 to expire", &|| r.active_sessions() == 0);
    for seq in 1..=N {
        a.send(&probe(c7, 7, seq, 1000)).unwrap();
    }
    let _ = open(&a, 22);
    let s = r.stats();
    assert_eq!(s.dropped_bad_cookie - bad0, 3 * u64::from(N), "{s:?}");
    assert_eq!(s.probes_reflected, 1, "{s:?}");
    r.shutdown();
}

/// Every datagram every platform arm sends in a whole test — preambles, handshakes, probes,
/// closes, in their per-test dress — is answered with at most as many bytes as it carried.
#[test]
fn no_platform_arm_datagram_is_answered_with_more_bytes_than_it_carried() {
    for platform in [
        Platform::Whatsapp,
        Platform::Telegram,
        Platform::Signal,
        Platform::Max,
        Platform::Generic,
    ] {
        let mut spec = TestSpec::voice(addr("127.0.0.1:40401"), 12_000);
        spec.platform = platform;
        spec.size = None;
        let started = chrono::DateTime::from_timestamp(1_760_000_000, 0).unwrap();
        let mut test = CallTest::new(&spec, CallRandom::from_seed(11), started, 0).unwrap();
        let arms = test.arms();
        let mut r = Reflector::new([4; 32], Limits::default());
        let (mut now, mut sent, mut preambles) = (0u64, 0u64, 0u64);
        // No loss, 1 ms each way: every answer arrives before the next 20 ms step.
        let mut inbox: Vec<(u64, usize, Vec<u8>)> = Vec::new();
        while !test.is_done() && now < 60_000_000 {
            while let Some(t) = test.poll_transmit(now) {
                sent += 1;
                let src = SocketAddr::new(arms[t.arm].peer.ip(), 41_000 + t.arm as u16);
                let before = r.stats().preambles;
                if let Some(out) = r.handle(now + 1_000, src, &t.datagram) {
                    assert!(
                        out.len() <= t.datagram.len(),
                        "{platform}: {} bytes answered with {}",
                        t.datagram.len(),
                        out.len()
                    );
                    inbox.push((now + 2_000, t.arm, out));
                }
                preambles += r.stats().preambles - before;
            }
            let next = test.poll_timeout().unwrap_or(now + 1_000);
            let next = inbox
                .iter()
                .map(|m| m.0)
                .min()
                .map_or(next, |t| t.min(next));
            now = next.max(now + 1);
            for (_, arm, bytes) in inbox.iter().filter(|m| m.0 <= now) {
                test.handle_datagram(*arm, now, bytes);
            }
            inbox.retain(|m| m.0 > now);
        }
        let s = r.stats();
        assert!(s.bytes_out <= s.bytes_in, "{platform}: {s:?}");
        assert_eq!(
            s.dropped_malformed, 0,
            "{platform}: every datagram is known"
        );
        let want_preambles = u64::from(profile(platform).preamble.is_some());
        assert!(
            preambles >= want_preambles && (want_preambles == 1 || preambles == 0),
            "{platform}: {preambles} preambles answered"
        );
        let report = test.finish().unwrap();
        for stream in &report.streams {
            assert_eq!(stream.loss, Some(0.0), "{platform} {:?}", stream.role);
        }
        println!(
            "{platform}: {sent} datagrams, {} B in, {} B out, {preambles} preambles answered",
            s.bytes_in, s.bytes_out
        );
    }
}
