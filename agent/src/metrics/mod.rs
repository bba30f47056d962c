//! Call-quality metrics: turns what one probe stream recorded into the figures of a
//! [`StreamReport`].
//!
//! The engine records a [`StreamRecord`] per arm of a call test: every probe the agent sent and,
//! for each, the first in-time reply from the reflector with the reflector's receive and send
//! timestamps. [`stream_report`] is a pure function of that record; it reads no clock and does no
//! I/O, so every figure can be checked against hand-worked records.
//!
//! Two conventions run through all of it:
//! - **Round-trip model.** Quality figures (playout buffer, stalls, E-model, burst loss) describe
//!   the call a volunteer would have through the reflector, mouth → agent → reflector → agent →
//!   ear, with both ends on the volunteer's network: a frame's transit is its round-trip time
//!   with the reflector's hold time removed, and it is missing if its reply is.
//! - **Unsynchronised clocks.** The reflector's clock has its own epoch. Only same-clock intervals
//!   are read as delays; cross-clock transits are compared with each other so the offset cancels
//!   (one-way figures are relative to the path minimum), and all timestamp arithmetic is
//!   wrap-safe (see `clock`).
//!
//! No input makes it panic: empty records, all probes lost, a single probe, or timestamps that wrap
//! or run backwards all give a report that passes `CallReport::validate`, with `null` for what
//! cannot be computed.

mod bitrate;
mod burst;
mod burstgap;
mod clock;
mod emodel;
mod gilbert;
mod ipdv;
mod jitter;
mod loss;
mod owd;
mod playout;
#[cfg(test)]
mod proptests;
mod reorder;
mod stalls;
pub(crate) mod stats;
mod timer;
mod transit;

use callwatch_proto::report::StreamReport;
use callwatch_proto::Role;

/// One probe the agent sent and what became of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeRecord {
    pub seq: u32,
    /// When the schedule said to send it (agent clock, µs).
    pub scheduled_us: u64,
    /// When it was actually sent (agent clock, µs).
    pub sent_us: u64,
    /// Bytes on the wire (UDP payload).
    pub len: u16,
    /// The first reply that arrived within the test (None: lost, or only arrived late).
    pub reply: Option<ReplyRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplyRecord {
    /// Reflector clock (µs, arbitrary epoch, NOT synchronised with the agent's).
    pub reflector_rx_us: u64,
    pub reflector_tx_us: u64,
    /// Agent clock (µs) when the reply arrived.
    pub received_us: u64,
}

/// Everything recorded for one stream (one arm) of a test.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamRecord {
    /// Nominal send interval.
    pub interval_us: u64,
    /// `probes[i].seq == i`, in send order.
    pub probes: Vec<ProbeRecord>,
    /// Sequence numbers of replies in the order they arrived (first copies only, in-time only) – for RFC 4737 reordering.
    pub arrival_order: Vec<u32>,
    pub duplicates: u32,
    /// Replies that arrived after the end-of-test grace period (not counted as received).
    pub late: u32,
    /// The reflector's own count of probes it received in this session, if it told us.
    pub reflector_received: Option<u32>,
    /// The most datagrams the reflector's kernel said it had dropped since the session began.
    pub reflector_drops: u32,
}

/// A stream whose reflector held 1 % of replies at least this long was taken under reflector
/// load: it held probes for a whole voice interval, whatever the network did. (Residence is
/// removed from every delay anyway; the mark says the reflector was struggling. At idle on a busy
/// 2-core machine its p99 is 4–7 ms, see RELIABILITY.md.)
pub const LOADED_RESIDENCE_P99_MS: f64 = 20.0;

/// Whether the reflector was loaded while `report`'s stream ran: its kernel dropped datagrams,
/// or it held the 99th percentile of replies [`LOADED_RESIDENCE_P99_MS`] or longer.
pub fn reflector_loaded(report: &StreamReport) -> bool {
    report.reflector_drops > 0
        || report
            .reflector_residence_ms
            .is_some_and(|r| r.p99 >= LOADED_RESIDENCE_P99_MS)
}

/// The reflector's residence time of every reply of `rec`, ms.
fn residence_ms(rec: &StreamRecord) -> Option<callwatch_proto::report::Stats> {
    stats::summarize(
        rec.probes
            .iter()
            .filter_map(|p| p.reply)
            .map(|r| {
                clock::ms(clock::elapsed_us(r.reflector_rx_us, r.reflector_tx_us).max(0) as f64)
            })
            .collect(),
    )
}

/// [`reflector_loaded`] from a stream's record: `(drops, residence p99 in ms)` when loaded.
pub fn record_loaded(rec: &StreamRecord) -> Option<(u32, f64)> {
    let p99 = residence_ms(rec).map_or(0.0, |r| r.p99);
    (rec.reflector_drops > 0 || p99 >= LOADED_RESIDENCE_P99_MS)
        .then_some((rec.reflector_drops, p99))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Opus,
    G711,
}

/// Every figure of one stream's report.
///
/// - Loss: `loss = (sent − received)/sent` over the round trip, always. `loss_up =
///   (sent − reflected)/sent`, `loss_down = (reflected − received)/reflected`, with the
///   reflector's final count clamped into `received..=sent`. **Without the reflector's final
///   count the split is unknown** and both are `None`: a running count carried by the last reply
///   says nothing of the probes sent after it. `packets_reflected` carries the count unchanged.
/// - `jitter_ms` is the mean of the RFC 3550 running estimate over the call; `jitter_p95_ms` its
///   95th percentile, `jitter_final_ms` its last value.
/// - `rtt_ms`: per reply `(received − sent) − (reflector_tx − reflector_rx)`, in ms.
/// - `owd_ms`, `jitter_ms` (RFC 3550), `ipdv_ms` (RFC 5481): per direction from cross-clock
///   transits, offset-free.
/// - `burst`, `jitter_buffer`, `stalls`, `r_factor`/`mos`: round-trip model (module docs).
/// - `bitrate_kbps`: UDP payload only, over the nominal duration `sent × interval`.
///
/// Percentiles everywhere interpolate linearly between closest ranks (see `stats`).
pub fn stream_report(role: Role, rec: &StreamRecord, codec: Codec) -> StreamReport {
    let transits = transit::Transits::of(&rec.probes);
    let rtt_us = transits.rtt_us();
    let lost: Vec<bool> = rtt_us.iter().map(Option::is_none).collect();
    let received = transits.received().count();
    let delivery = loss::Delivery::new(
        rec.probes.len() as u64,
        received as u64,
        rec.reflector_received,
    );
    let rtt_ms = stats::summarize(
        transits
            .received()
            .map(|t| clock::ms(t.rtt_us as f64))
            .collect(),
    );

    // What the listener misses behind the reference (60 ms) buffer: drives stalls and the E-model.
    let missing = playout::missing_with_fixed_buffer(&rtt_us, playout::REFERENCE_BUFFER_US);
    let missing_count = missing.iter().filter(|&&m| m).count();
    let rating = rtt_ms.map(|rtt| {
        emodel::rate(
            codec,
            rtt.median,
            clock::ms(rec.interval_us as f64),
            100.0 * loss::fraction(missing_count as u64, missing.len() as u64),
            gilbert::Gilbert::fit(&missing).burst_ratio(),
        )
    });

    let jitter = jitter::jitter_summary_ms(&transits);
    StreamReport {
        role,
        outcome: Default::default(),
        dark_from_ms: None,
        packets_sent: saturating_u32(delivery.sent),
        packets_reflected: rec.reflector_received,
        packets_received: saturating_u32(delivery.received),
        duplicates: rec.duplicates,
        reordered: reorder::reordered(&rec.arrival_order),
        late: rec.late,
        // Nothing sent (a blocked handshake): no loss figure rather than a made-up 0.
        loss: (delivery.sent > 0).then(|| delivery.loss()),
        loss_up: delivery.loss_up(),
        loss_down: delivery.loss_down(),
        rtt_ms,
        owd_ms: owd::one_way_delay_ms(&transits),
        jitter_ms: jitter.map(|j| j.mean),
        jitter_p95_ms: jitter.map(|j| j.p95),
        jitter_final_ms: jitter.map(|j| j.last),
        ipdv_ms: ipdv::ipdv_ms(&transits),
        burst: burst::burst(&lost),
        jitter_buffer: playout::jitter_buffer(&rtt_us, rec.interval_us),
        stalls: stalls::stalls(&missing, rec.interval_us),
        bitrate_kbps: bitrate::bitrate_kbps(&rec.probes, &delivery, rec.interval_us),
        timer: timer::timer(&rec.probes, rec.interval_us),
        r_factor: rating.as_ref().map(|r| r.r),
        mos: rating.as_ref().map(|r| r.mos),
        mos_basis: rating.map(|r| r.basis),
        reflector_residence_ms: residence_ms(rec),
        reflector_drops: rec.reflector_drops,
    }
}

/// A count as the report's `u32`, saturating (a stream of 2³² probes is 2.7 years at 20 ms).
fn saturating_u32<T: TryInto<u32>>(n: T) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::report::{CallReport, ReportId, SCHEMA_VERSION};
    use callwatch_proto::Platform;

    /// A CallReport around one stream, as the collector would receive it.
    pub(super) fn validate(stream: StreamReport) -> Result<(), String> {
        CallReport {
            schema: SCHEMA_VERSION,
            id: ReportId([1; 16]),
            agent_version: "callwatch-agent/test".into(),
            platform: Platform::Generic,
            started_at: Default::default(),
            duration_ms: 10_000,
            interval_ms: 20,
            payload_bytes: 160,
            verdict: None,
            verdict_detail: None,
            stream_kind: Default::default(),
            streams: vec![stream],
            probes_sealed: false,
            reflector_loaded: false,
            attestation: None,
            path_token: None,
        }
        .validate()
    }

    /// 20 ms probes of 160 bytes; `rtt_ms[i] = None` for a lost one. Up and down each take half
    /// the round trip; the reflector clock runs 3 s ahead and holds each probe 50 µs.
    pub(super) fn record(rtt_ms: &[Option<u64>]) -> StreamRecord {
        let probes: Vec<ProbeRecord> = rtt_ms
            .iter()
            .enumerate()
            .map(|(i, rtt)| {
                let sent = 5_000_000 + 20_000 * i as u64;
                ProbeRecord {
                    seq: i as u32,
                    scheduled_us: sent,
                    sent_us: sent,
                    len: 160,
                    reply: rtt.map(|rtt| {
                        let half = rtt * 500;
                        let rx = sent + half + 3_000_000;
                        ReplyRecord {
                            reflector_rx_us: rx,
                            reflector_tx_us: rx + 50,
                            received_us: sent + 2 * half + 50,
                        }
                    }),
                }
            })
            .collect();
        StreamRecord {
            interval_us: 20_000,
            arrival_order: probes
                .iter()
                .filter(|p| p.reply.is_some())
                .map(|p| p.seq)
                .collect(),
            reflector_received: None,
            probes,
            ..StreamRecord::default()
        }
    }

    #[test]
    fn clean_g711_path() {
        let rec = record(&[Some(20); 500]);
        let r = stream_report(Role::Control, &rec, Codec::G711);
        validate(r.clone()).unwrap();
        assert_eq!(
            (r.packets_sent, r.packets_received, r.reordered),
            (500, 500, 0)
        );
        // No reflector count in this record: the split is unknown, the round trip is not.
        assert_eq!((r.loss, r.loss_up, r.loss_down), (Some(0.0), None, None));
        let rtt = r.rtt_ms.unwrap();
        assert_eq!((rtt.min, rtt.median, rtt.max), (20.0, 20.0, 20.0));
        assert_eq!(r.jitter_ms.map(|j| (j.up, j.down)), Some((0.0, 0.0)));
        let owd = r.owd_ms.unwrap();
        assert_eq!(
            (owd.clock_offset_ms, owd.clock_offset_error_ms),
            (3000.0, 10.0)
        );
        let jb = r.jitter_buffer.unwrap();
        assert_eq!(
            (jb.fixed_60ms, jb.adaptive, jb.adaptive_delay_ms),
            (0.0, 0.0, 20.0)
        );
        assert_eq!(r.stalls.map(|s| s.count), Some(0));
        // Ta = 20 + 60 + 20 + 0.25 = 100.25 ms: Idd ≈ 1e-14, so R = 93.2, MOS 4.41.
        assert!((r.r_factor.unwrap() - 93.2).abs() < 1e-9);
        assert!((r.mos.unwrap() - 4.409).abs() < 1e-3);
        assert_eq!(r.bitrate_kbps.map(|b| b.offered), Some(64.0));
    }

    #[test]
    fn loss_and_late_frames_reach_every_figure() {
        // 100 probes: 4 lost in a row at 10..14, 3 RTT spikes of 150 ms (late for 60 ms) at 50..53.
        let mut rtt = vec![Some(30); 100];
        for r in &mut rtt[10..14] {
            *r = None;
        }
        for r in &mut rtt[50..53] {
            *r = Some(150);
        }
        let mut rec = record(&rtt);
        rec.reflector_received = Some(98);
        let r = stream_report(Role::Platform, &rec, Codec::Opus);
        validate(r.clone()).unwrap();
        assert_eq!(r.packets_received, 96);
        assert!((r.loss_up.unwrap() - 0.02).abs() < 1e-12);
        assert!((r.loss_down.unwrap() - 2.0 / 98.0).abs() < 1e-12);
        assert!((r.loss.unwrap() - 0.04).abs() < 1e-12);
        let b = r.burst.unwrap();
        assert_eq!((b.count, b.max_len), (1, 4));
        let jb = r.jitter_buffer.unwrap();
        assert!((jb.fixed_60ms - 0.07).abs() < 1e-12);
        assert!((jb.fixed_100ms - 0.07).abs() < 1e-12);
        let s = r.stalls.unwrap();
        assert_eq!((s.count, s.longest_ms), (2, 80.0));
        assert!(r.mos_basis.unwrap().ends_with(";provisional"));
    }

    #[test]
    fn reordering_is_counted_from_arrival_order() {
        let mut rec = record(&[Some(20); 12]);
        rec.arrival_order = vec![0, 1, 2, 3, 7, 8, 9, 10, 4, 5, 6, 11];
        assert_eq!(
            stream_report(Role::Platform, &rec, Codec::Opus).reordered,
            3
        );
    }

    #[test]
    fn empty_record() {
        let r = stream_report(Role::Relay, &StreamRecord::default(), Codec::Opus);
        validate(r.clone()).unwrap();
        assert_eq!((r.packets_sent, r.loss, r.loss_up), (0, None, None));
        assert!(r.rtt_ms.is_none() && r.owd_ms.is_none() && r.jitter_ms.is_none());
        assert!(r.burst.is_none() && r.jitter_buffer.is_none() && r.stalls.is_none());
        assert!(r.bitrate_kbps.is_none() && r.timer.is_none());
        assert!(r.r_factor.is_none() && r.mos.is_none() && r.mos_basis.is_none());
    }

    #[test]
    fn all_lost() {
        let r = stream_report(Role::Platform, &record(&[None; 50]), Codec::G711);
        validate(r.clone()).unwrap();
        assert_eq!((r.loss, r.loss_up, r.loss_down), (Some(1.0), None, None));
        assert!(r.rtt_ms.is_none() && r.jitter_buffer.is_none() && r.mos.is_none());
        let b = r.burst.unwrap();
        assert_eq!((b.count, b.max_len, b.burst_density), (1, 50, 1.0));
        assert_eq!(r.stalls.map(|s| (s.count, s.longest_ms)), Some((1, 1000.0)));
    }

    /// Holds every reply of `rec` `held_us` on the reflector (RTT unchanged).
    fn held(mut rec: StreamRecord, held_us: u64) -> StreamRecord {
        for reply in rec.probes.iter_mut().filter_map(|p| p.reply.as_mut()) {
            reply.received_us += held_us - (reply.reflector_tx_us - reply.reflector_rx_us);
            reply.reflector_tx_us = reply.reflector_rx_us + held_us;
        }
        rec
    }

    /// The residence figures are the replies' reflector hold times (tx − rx), and a stream was
    /// taken under reflector load when the kernel dropped a datagram or the residence p99 is
    /// 20 ms or more — at exactly 20 ms too.
    #[test]
    fn residence_and_reflector_load_by_hand() {
        // 99 replies held 50 µs, the last 30 ms.
        let mut rec = record(&[Some(20); 100]);
        if let Some(reply) = rec.probes[99].reply.as_mut() {
            reply.reflector_tx_us += 30_000 - 50;
            reply.received_us += 30_000 - 50;
        }
        let mut r = stream_report(Role::Platform, &rec, Codec::Opus);
        assert_eq!(r.rtt_ms.map(|s| (s.min, s.max)), Some((20.0, 20.0)));
        let res = r.reflector_residence_ms.unwrap();
        // Sorted: 99 × 0.05 ms, then 30 ms. Median (h = 49.5) and p95 (h = 94.05) fall
        // between equal values; p99: h = 0.99·99 = 98.01 → 0.05 + 0.01·(30 − 0.05) = 0.3495;
        // mean (99·0.05 + 30)/100 = 0.3495.
        assert_eq!(
            (res.min, res.median, res.p95, res.max),
            (0.05, 0.05, 0.05, 30.0)
        );
        assert!((res.p99 - 0.3495).abs() < 1e-9, "{}", res.p99);
        assert!((res.mean - 0.3495).abs() < 1e-9, "{}", res.mean);
        assert!(!reflector_loaded(&r));
        assert_eq!(record_loaded(&rec), None);
        // One datagram dropped by the kernel is load, whatever the residence.
        r.reflector_drops = 1;
        assert!(reflector_loaded(&r));
        rec.reflector_drops = 2;
        let (drops, p99) = record_loaded(&rec).unwrap();
        assert_eq!(drops, 2);
        assert!((p99 - 0.3495).abs() < 1e-9, "{p99}");
        // Every reply held exactly 20 ms: p99 = 20, loaded; 19.999 ms is not.
        for (hold_us, loaded) in [(20_000, true), (19_999, false)] {
            let rec = held(record(&[Some(20); 10]), hold_us);
            let hold_ms = hold_us as f64 / 1000.0;
            let r = stream_report(Role::Platform, &rec, Codec::Opus);
            assert_eq!(r.reflector_residence_ms.map(|s| s.p99), Some(hold_ms));
            assert_eq!(r.rtt_ms.map(|s| s.median), Some(20.0));
            assert_eq!(reflector_loaded(&r), loaded, "{hold_us} µs");
            assert_eq!(record_loaded(&rec), loaded.then_some((0, hold_ms)));
        }
    }

    #[test]
    fn one_packet() {
        let r = stream_report(Role::Platform, &record(&[Some(40)]), Codec::G711);
        validate(r.clone()).unwrap();
        assert_eq!(r.rtt_ms.map(|s| s.p99), Some(40.0));
        assert!(r.jitter_ms.is_none() && r.ipdv_ms.is_none());
        assert!(r.owd_ms.is_some() && r.mos.is_some());
    }
}
