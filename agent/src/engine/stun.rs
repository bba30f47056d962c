//! The relay-path arms: a few STUN Binding requests (RFC 8489) spread over the test, to a
//! platform's own STUN/TURN server and, the same way, to the reflector host as its neutral
//! reference; sans I/O. Third-party servers get a handful of requests per test, never a
//! voice-rate stream (the engine chooses the spacing, see `RELAY_REQUESTS`).
//!
//! A reflector of ours cannot stand in for the platform's infrastructure: a network may treat
//! traffic to the platform's relays differently from traffic to anyone else. Any STUN server
//! answers a Binding request, so sending one every interval measures that path's RTT, loss and
//! RTT variation the same way as the other arms. A STUN server keeps no count of what it
//! received and no timestamps, so this arm's loss is round-trip loss (reported as `loss_up`, with
//! `packets_reflected` null) and it has no one-way figures.

use super::session::{ArmSession, Progress, SessionError};
use crate::metrics::{ProbeRecord, ReplyRecord, StreamRecord};

// The STUN numbers are the protocol's, in `callwatch_proto::framing`, beside the reflector's.
use callwatch_proto::framing::{
    STUN_ATTR_SOFTWARE, STUN_BINDING_ERROR, STUN_BINDING_REQUEST, STUN_BINDING_SUCCESS,
    STUN_HEADER_LEN, STUN_MAGIC_COOKIE,
};
/// What the SOFTWARE attribute says, naming the tool honestly to the server. Long enough that the request outgrows the reflector's Binding response with an IPv6
/// XOR-MAPPED-ADDRESS (44 bytes): the reflector never answers with more than it received.
const SOFTWARE: &[u8] = b"callwatch-agent call-quality measurement";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StunConfig {
    pub interval_ms: u16,
    pub duration_ms: u32,
    pub grace_ms: u32,
}

pub struct StunSession {
    cfg: StunConfig,
    /// Random per session: the last 8 bytes of every transaction id.
    tag: [u8; 8],
    start_us: Option<u64>,
    count: u32,
    record: StreamRecord,
    received: u32,
    last_rtt_ms: Option<f64>,
    done: bool,
}

impl StunSession {
    pub fn new(cfg: StunConfig, tag: [u8; 8]) -> Self {
        let interval_us = cfg.interval_ms.max(1) as u64 * 1000;
        StunSession {
            cfg,
            tag,
            start_us: None,
            count: ((cfg.duration_ms as u64 * 1000) / interval_us).max(1) as u32,
            record: StreamRecord {
                interval_us,
                ..StreamRecord::default()
            },
            received: 0,
            last_rtt_ms: None,
            done: false,
        }
    }

    fn due_us(&self, seq: u32) -> Option<u64> {
        self.start_us
            .map(|s| s + seq as u64 * self.record.interval_us)
    }

    fn end_us(&self) -> Option<u64> {
        self.due_us(self.count.saturating_sub(1))
            .map(|t| t + self.cfg.grace_ms as u64 * 1000)
    }

    /// A Binding request whose transaction id is `seq` (4 bytes) followed by the session tag.
    pub fn binding_request(&self, seq: u32) -> Vec<u8> {
        let attr_len = SOFTWARE.len().div_ceil(4) * 4;
        let mut m = Vec::with_capacity(STUN_HEADER_LEN + 4 + attr_len);
        m.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&self.tag);
        m.extend_from_slice(&STUN_ATTR_SOFTWARE.to_be_bytes());
        m.extend_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
        m.extend_from_slice(SOFTWARE);
        m.resize(STUN_HEADER_LEN + 4 + attr_len, 0);
        m
    }

    /// The sequence number of a Binding response to one of our requests, if it is one.
    fn response_seq(&self, d: &[u8]) -> Option<u32> {
        let header = d.get(..STUN_HEADER_LEN)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        if kind != STUN_BINDING_SUCCESS && kind != STUN_BINDING_ERROR {
            return None;
        }
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != STUN_MAGIC_COOKIE {
            return None;
        }
        if header[12..20] != self.tag {
            return None;
        }
        Some(u32::from_be_bytes([
            header[8], header[9], header[10], header[11],
        ]))
    }
}

impl ArmSession for StunSession {
    fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let start = *self.start_us.get_or_insert(now_us);
        let seq = self.record.probes.len() as u32;
        if seq >= self.count {
            if self.end_us().is_some_and(|end| now_us >= end) {
                self.done = true;
            }
            return None;
        }
        let due = start + seq as u64 * self.record.interval_us;
        if now_us < due {
            return None;
        }
        let request = self.binding_request(seq);
        self.record.probes.push(ProbeRecord {
            seq,
            scheduled_us: due,
            sent_us: now_us,
            len: request.len() as u16,
            reply: None,
        });
        Some(request)
    }

    fn poll_timeout(&self) -> Option<u64> {
        if self.done {
            return None;
        }
        let seq = self.record.probes.len() as u32;
        if seq < self.count {
            Some(self.due_us(seq).unwrap_or(0))
        } else {
            self.end_us()
        }
    }

    fn handle_datagram(&mut self, now_us: u64, datagram: &[u8]) {
        let Some(seq) = self.response_seq(datagram) else {
            return;
        };
        let in_time = self.end_us().is_none_or(|end| now_us <= end) && !self.done;
        let Some(probe) = self.record.probes.get_mut(seq as usize) else {
            return;
        };
        if probe.reply.is_some() {
            self.record.duplicates += 1;
        } else if !in_time {
            self.record.late += 1;
        } else {
            // No server timestamps: place the server at the midpoint, so RTT is exact and the
            // (unknowable) one-way split is symmetric. One-way figures are dropped from the
            // report for this arm.
            let rtt = now_us.saturating_sub(probe.sent_us);
            let mid = probe.sent_us + rtt / 2;
            probe.reply = Some(ReplyRecord {
                reflector_rx_us: mid,
                reflector_tx_us: mid,
                received_us: now_us,
            });
            self.received += 1;
            self.last_rtt_ms = Some(rtt as f64 / 1e3);
            self.record.arrival_order.push(seq);
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn progress(&self) -> Progress {
        let (due, overdue) = super::session::due_and_overdue(&self.record.probes);
        Progress {
            sent: self.record.probes.len() as u32,
            total: self.count,
            received: self.received,
            last_rtt_ms: self.last_rtt_ms,
            due,
            overdue,
        }
    }

    /// Never an error: a relay that answers nothing is itself the finding (100 % loss to the
    /// platform's infrastructure), and is reported as such.
    fn finish(self: Box<Self>) -> Result<StreamRecord, SessionError> {
        Ok(self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(req: &[u8]) -> Vec<u8> {
        let mut r = req[..STUN_HEADER_LEN].to_vec();
        r[0..2].copy_from_slice(&STUN_BINDING_SUCCESS.to_be_bytes());
        r[2..4].copy_from_slice(&0u16.to_be_bytes());
        r
    }

    #[test]
    fn sends_binding_requests_on_schedule_and_matches_responses() {
        let cfg = StunConfig {
            interval_ms: 20,
            duration_ms: 100,
            grace_ms: 50,
        };
        let mut s = StunSession::new(cfg, [9; 8]);
        let first = s.poll_transmit(1_000).unwrap();
        assert_eq!(&first[0..2], &STUN_BINDING_REQUEST.to_be_bytes());
        assert_eq!(&first[4..8], &STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(first.len() % 4, 0);
        assert_eq!(
            u16::from_be_bytes([first[2], first[3]]) as usize,
            first.len() - 20
        );
        assert!(s.poll_transmit(1_500).is_none());
        assert_eq!(s.poll_timeout(), Some(21_000));
        s.handle_datagram(3_000, &response(&first));
        s.handle_datagram(3_100, &response(&first)); // duplicate
        let mut other = response(&first);
        other[15] ^= 1; // not our tag
        s.handle_datagram(3_200, &other);
        let mut now = 21_000;
        while !s.is_done() {
            while s.poll_transmit(now).is_some() {}
            now = s.poll_timeout().unwrap_or(now);
        }
        let rec = Box::new(s).finish().unwrap();
        assert_eq!(rec.probes.len(), 5);
        let reply = rec.probes[0].reply.unwrap();
        assert_eq!(reply.received_us, 3_000);
        assert_eq!(reply.reflector_rx_us, 2_000);
        assert_eq!(rec.duplicates, 1);
        assert!(rec.probes[1].reply.is_none());
    }

    #[test]
    fn no_answer_at_all_is_total_loss_not_an_error() {
        let cfg = StunConfig {
            interval_ms: 20,
            duration_ms: 40,
            grace_ms: 10,
        };
        let mut s = StunSession::new(cfg, [1; 8]);
        let mut now = 0;
        while !s.is_done() {
            while s.poll_transmit(now).is_some() {}
            now = s.poll_timeout().unwrap_or(now);
        }
        let rec = Box::new(s).finish().unwrap();
        assert_eq!(rec.probes.len(), 2);
        assert!(rec.probes.iter().all(|p| p.reply.is_none()));
    }
}
