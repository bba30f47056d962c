//! The reflector's amplification factor (bytes out / bytes in) for every kind of hostile input,
//! on the collector's own sans-IO reflector: each class must stay at or below 1.0. The table it
//! prints with `--nocapture` is the one in RELIABILITY.md.

use callwatch_collector::reflector::{Limits, Reflector};
use callwatch_proto::framing::STUN_MAGIC_COOKIE;
use callwatch_proto::probe::{Accept, Close, Open, Packet, Probe};
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
