//! The reflector's amplification factor (bytes out / bytes in) for every kind of hostile input,
//! on the collector's own sans-IO reflector: each class must stay at or below 1.0. The table it
//! prints with `--nocapture` is the one in RELIABILITY.md.

use callwatch_agent::engine::call::{CallRandom, CallTest};
use callwatch_agent::engine::TestSpec;
use callwatch_collector::reflector::{Limits, Reflector};
use callwatch_proto::framing::{Framing, Preamble, STUN_MAGIC_COOKIE};
use callwatch_proto::probe::{Accept, Close, CountQuery, Open, Packet, Probe};
use callwatch_proto::profile::profile;
use callwatch_proto::Platform;
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

/// Feeds `inputs` (time, source, datagram) to a fresh reflector; returns (in, out) bytes.
fn run(prepare: impl FnOnce(&mut Reflector) -> Vec<(u64, SocketAddr, Vec<u8>)>) -> (u64, u64) {
    let mut r = Reflector::new([9; 32], Limits::default());
    let inputs = prepare(&mut r);
    let before = r.stats();
    for (now, src, d) in inputs {
        if let Some(out) = r.handle(now, src, &d) {
            assert!(out.len() <= d.len(), "an answer longer than its datagram");
        }
    }
    let after = r.stats();
    (
        after.bytes_in - before.bytes_in,
        after.bytes_out - before.bytes_out,
    )
}

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
    let mut rows: Vec<(&str, (u64, u64))> = Vec::new();
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
    println!("| input | bytes in | bytes out | factor |\n|---|---:|---:|---:|");
    for (what, (bytes_in, bytes_out)) in &rows {
        let factor = *bytes_out as f64 / (*bytes_in).max(1) as f64;
        println!("| {what} | {bytes_in} | {bytes_out} | {factor:.3} |");
        assert!(
            bytes_out <= bytes_in,
            "{what}: {bytes_out} out for {bytes_in} in"
        );
    }
    // The honest session is answered in full; hostile input mostly not at all.
    let honest = rows.last().unwrap().1;
    assert!(honest.1 as f64 >= 0.99 * honest.0 as f64 - 64.0);
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
