//! The call report: what one call test measured, in the form that is signed, uploaded and exported.
//!
//! The schema is versioned by [`SCHEMA_VERSION`]. Names carry their unit (`rtt_ms`, `loss_up` as a
//! fraction 0..=1). Figures that could not be computed (no replies at all, say) are `null`, never
//! NaN. A signed body carries only the keys its schema version defines, within the size limits of
//! [`crate::schema`]: a collector refuses any other key (it would store and republish it verbatim).
//! New optional fields come with a new schema version; a collector defers a version newer than it
//! knows instead of refusing it.

use crate::platform::{Platform, Role, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The report schema this build writes, and the newest it accepts.
///
/// The schema evolves additively: a collector accepts every schema from [`OLDEST_SCHEMA`] to
/// [`SCHEMA_VERSION`]; a report in a newer one is *deferred* — not judged, not stored, and kept by
/// the agent for a collector that knows it ([`crate::sign::VerifyError::NewerSchema`],
/// [`crate::upload::ReportStatus::Deferred`]), never rejected and deleted. Collectors refuse a
/// key the declared schema does not define ([`crate::schema`]), so a new field comes with a new
/// version: the field's entry in [`crate::schema::REPORT`] names it in `since`.
///
/// Versions: 1, the first; 2 adds `attestation.subdivision` (an attestation that signs the
/// first-level subdivision). An agent writes the lowest version its report needs
/// ([`CallReport::lowest_schema`]), so a collector of an older release stores every report
/// that does not use the newer fields.
pub const SCHEMA_VERSION: u32 = 2;
/// The oldest report schema this build still accepts.
pub const OLDEST_SCHEMA: u32 = 1;
/// Most streams one report may carry (platform, control, the platform's relay and its neutral
/// reference).
pub const MAX_STREAMS: usize = 4;

pub use crate::id::ReportId;

/// One call test: one or more streams measured side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallReport {
    pub schema: u32,
    pub id: ReportId,
    /// The agent software that made the report, e.g. `callwatch-agent/0.1.0`.
    pub agent_version: String,
    pub platform: Platform,
    /// When the test started. Agents of this release sign it floored to the hour
    /// ([`coarse_start`]): what the aggregates need, and no finer, so that a start time cannot
    /// be matched to a subscriber's flow logs. Earlier agents signed it to the nanosecond.
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    /// Nominal interval between probes.
    pub interval_ms: u32,
    /// Nominal probe size on the wire (UDP payload).
    pub payload_bytes: u32,
    /// `null` while the test had no control arm to compare with.
    pub verdict: Option<Verdict>,
    /// The statistics behind `verdict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_detail: Option<VerdictDetail>,
    /// Voice or video-like stream shape; aggregates never mix the two. Absent in reports made
    /// before it existed, which were voice unless `payload_bytes` says otherwise.
    #[serde(default)]
    pub stream_kind: StreamKind,
    pub streams: Vec<StreamReport>,
    /// Whether the platform arm's probe cores were sealed to the reflector's key (so a DPI box
    /// could not tell them from the platform's payload). `false` in reports made without the
    /// reflector's key, and in every report made before sealing existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probes_sealed: bool,
    /// The reflector was loaded while a stream ran (its kernel dropped datagrams, or it held the
    /// 99th percentile of replies 20 ms or longer): the figures describe the reflector, not the
    /// network. Such a test's verdict is `inconclusive` (rule `reflector-loaded`) and collectors
    /// leave its figures out of aggregates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reflector_loaded: bool,
    /// The path token that came with `attestation` ([`crate::pathtoken`]). Never part of the
    /// report's JSON (not signed, not exported): the agent keeps it beside the signed report
    /// ([`crate::upload::QueuedReport`]) for the collector alone.
    #[serde(skip)]
    pub path_token: Option<crate::pathtoken::PathToken>,
    /// The reflector's signed attestation of the region the probes came from
    /// ([`crate::attest`]); absent when the reflector gave none (and in older reports). The
    /// collector files a report with a valid one under its region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::attest::RegionAttestation>,
}

/// The stream shape a test sent.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum StreamKind {
    #[default]
    Voice,
    Video,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Voice => "voice",
            StreamKind::Video => "video",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one stream as a whole. Everything but `measured` is a finding about the path,
/// not a failure of the test: the report is still made, signed and uploaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamOutcome {
    /// The handshake was answered and replies came back until the end.
    #[default]
    Measured,
    /// The handshake was never answered (every `Open`, or every STUN request, went unanswered).
    Blocked,
    /// The handshake was answered, then replies stopped at `dark_from_ms` and never resumed.
    Dark,
    /// The reflector refused the session (busy, rate limit): says nothing about the network.
    Refused,
}

impl StreamOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Measured => "measured",
            StreamOutcome::Blocked => "blocked",
            StreamOutcome::Dark => "dark",
            StreamOutcome::Refused => "refused",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What one stream (one arm) of a test measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub role: Role,
    /// What became of the stream as a whole (absent in older reports: `measured`).
    #[serde(default)]
    pub outcome: StreamOutcome,
    /// With `outcome = dark`: ms from the stream's first probe to the first probe of the silence
    /// that lasted to the end (0: nothing ever came back after the handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_from_ms: Option<u32>,
    /// Probes the agent sent.
    pub packets_sent: u32,
    /// Probes the reflector says it received (its own count); `null` if it never said.
    pub packets_reflected: Option<u32>,
    /// Distinct replies the agent received in time.
    pub packets_received: u32,
    #[serde(default)]
    pub duplicates: u32,
    /// Replies that arrived after a later sequence number (RFC 4737).
    #[serde(default)]
    pub reordered: u32,
    /// Replies that arrived after the end-of-test grace period (counted as lost).
    #[serde(default)]
    pub late: u32,
    /// Fraction of sent probes whose reply never came back in time (round trip); always known.
    /// Absent in reports made before it existed (then `loss_up` and `loss_down` were both set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Fraction of sent probes that did not reach the reflector; `null` when the reflector's
    /// final count for this stream never reached the agent (the split is then unknown).
    pub loss_up: Option<f64>,
    /// Fraction of reflected probes whose reply did not reach the agent; `null` as `loss_up`.
    pub loss_down: Option<f64>,
    pub rtt_ms: Option<Stats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owd_ms: Option<OneWayDelay>,
    /// RFC 3550 interarrival jitter per direction: the **mean of the running estimate over the
    /// call** (the estimate after each reply, averaged), so it describes the whole call.
    pub jitter_ms: Option<UpDown>,
    /// 95th percentile of the running RFC 3550 estimate over the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_p95_ms: Option<UpDown>,
    /// The running estimate's last value (what RFC 3550 receivers report; describes roughly the
    /// last 16 packets, not the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_final_ms: Option<UpDown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipdv_ms: Option<IpdvUpDown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_buffer: Option<JitterBuffer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalls: Option<Stalls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<Bitrate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerStats>,
    /// ITU-T G.107 E-model rating; `null` when nothing came back.
    pub r_factor: Option<f64>,
    /// Mean opinion score from `r_factor`, 1..=4.5.
    pub mos: Option<f64>,
    /// The reflector's residence time per reply (the kernel received the probe → the reply was
    /// made), ms. Already removed from every delay above; reported so that a loaded reflector
    /// shows as such. Absent when the stream got no reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflector_residence_ms: Option<Stats>,
    /// Datagrams the reflector's kernel dropped on its socket (receive queue full) while this
    /// stream ran: a loaded reflector, which the verdict does not take for the network.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reflector_drops: u32,
    /// How `r_factor` was obtained: codec table row and whether its constants are ITU-published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mos_basis: Option<String>,
}

/// Order statistics of a sample, in the unit the field name gives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub min: f64,
    pub mean: f64,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpDown {
    pub up: f64,
    pub down: f64,
}

/// One-way delay per direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneWayDelay {
    pub up: Stats,
    pub down: Stats,
    /// `"relative-to-path-minimum"` when clocks are not synchronised (the figures are queueing
    /// delay above the smallest delay seen on that direction).
    pub reference: String,
    /// Estimated reflector-minus-agent clock offset, and its error bound (± half the minimum RTT).
    pub clock_offset_ms: f64,
    pub clock_offset_error_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
}

/// |IPDV| (RFC 5481) quantiles per direction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpdvUpDown {
    pub up: Quantiles,
    pub down: Quantiles,
}

/// Burst loss over the round trip (RFC 3611 style, Gmin = 16) and the Gilbert model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Burst {
    /// Runs of consecutive losses.
    pub count: u32,
    pub mean_len: f64,
    pub max_len: u32,
    /// RFC 3611 loss density inside gaps and bursts, as fractions 0..=1.
    pub gap_density: f64,
    pub burst_density: f64,
    /// Gilbert two-state model: p = P(lost | previous received), q = P(received | previous lost).
    pub gilbert_p: f64,
    pub gilbert_q: f64,
    /// BurstR = 1 / (p + q); 1 for random loss, larger for bursty loss.
    pub burst_ratio: f64,
}

/// Fraction of sent packets a playout buffer would have had to discard (lost or late).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JitterBuffer {
    pub fixed_40ms: f64,
    pub fixed_60ms: f64,
    pub fixed_100ms: f64,
    pub adaptive: f64,
    /// Mean playout delay the adaptive buffer chose.
    pub adaptive_delay_ms: f64,
}

/// Stretches of three or more consecutive missing frames: sound cutting out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stalls {
    pub count: u32,
    pub longest_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bitrate {
    pub offered: f64,
    pub delivered_up: f64,
    pub delivered_down: f64,
}

/// How the platform arm was compared with the control arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictDetail {
    /// The method, e.g. `"one-sided, platform worse: … holm over 4 at alpha 0.002; …"`.
    pub method: String,
    /// Length of the windows the series were cut into.
    pub window_ms: u32,
    /// Windows compared (both arms had data).
    pub windows: u32,
    pub loss: ArmComparison,
    pub delay: ArmComparison,
    pub jitter: ArmComparison,
    /// One sentence a person can read: why this verdict.
    pub reason: String,
    /// Which rule decided (absent in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<VerdictRule>,
    /// The onset scan: the split that maximised the platform-minus-control difference and its
    /// permutation p-value, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<Onset>,
    /// The relay comparison: the platform's own servers against a neutral reference server of
    /// the same protocol, when both were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayComparison>,
}

/// The rule of the verdict that decided a test (see the agent's `verdict` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictRule {
    /// The platform handshake went unanswered while the control arm worked.
    Blocked,
    /// The platform arm went dark mid-call while the control arm kept answering.
    Cut,
    /// The platform's own servers did not answer while the neutral reference did.
    PlatformServersUnreachable,
    /// Per-packet loss, worse on the platform arm.
    Loss,
    /// Delay, worse on the platform arm (paired per window).
    Delay,
    /// Delay variation, worse on the platform arm (paired per window).
    Jitter,
    /// A platform-only degradation from a point in the test on (the onset scan).
    Onset,
    /// The control arm got no answers: nothing to compare with.
    NoReference,
    /// Nothing answered at all (the reflector unreachable now; it was reachable before).
    NothingAnswered,
    /// The reflector refused a session for capacity: says nothing about the network.
    ReflectorBusy,
    /// The agent sealed its platform arm to a key the reflector does not hold (a stale
    /// `reflector_key`): that arm's silence says nothing about the network.
    ReflectorKeyMismatch,
    /// The reflector was loaded during the test (it held probes long or its kernel dropped
    /// some): its figures describe the reflector, not the network.
    ReflectorLoaded,
    /// Too few windows with data on both arms to judge.
    TooLittleData,
    /// Both arms degraded alike: the path hides what it does to one kind of traffic.
    DegradedAlike,
    /// The platform arm worse by a meaningful amount, not significantly.
    Suggestive,
    /// The platform arm not worse by a significant, meaningful amount.
    NotWorse,
}

impl VerdictRule {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictRule::Blocked => "blocked",
            VerdictRule::Cut => "cut",
            VerdictRule::PlatformServersUnreachable => "platform-servers-unreachable",
            VerdictRule::Loss => "loss",
            VerdictRule::Delay => "delay",
            VerdictRule::Jitter => "jitter",
            VerdictRule::Onset => "onset",
            VerdictRule::NoReference => "no-reference",
            VerdictRule::NothingAnswered => "nothing-answered",
            VerdictRule::ReflectorBusy => "reflector-busy",
            VerdictRule::ReflectorKeyMismatch => "reflector-key-mismatch",
            VerdictRule::ReflectorLoaded => "reflector-loaded",
            VerdictRule::TooLittleData => "too-little-data",
            VerdictRule::DegradedAlike => "degraded-alike",
            VerdictRule::Suggestive => "suggestive",
            VerdictRule::NotWorse => "not-worse",
        }
    }
}

impl fmt::Display for VerdictRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The onset scan's result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Onset {
    /// ms from the start of the test to the window where the difference starts.
    pub at_ms: u32,
    /// Permutation p-value of the scan's maximum (arm labels flipped within windows).
    pub p_value: f64,
    /// Mean platform-minus-control per-window median RTT from the onset on, ms.
    pub effect: f64,
}

/// The platform's own servers against our neutral reference server, both asked the same
/// few STUN Binding requests.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayComparison {
    pub relay_sent: u32,
    pub relay_answered: u32,
    pub reference_sent: u32,
    pub reference_answered: u32,
    /// One-sided Fisher exact p-value that the relay goes unanswered more often.
    pub p_value: f64,
}

/// One metric's per-window series, platform arm against control arm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmComparison {
    /// Median over windows of the per-window value (loss as a fraction, delay and jitter in ms).
    pub platform_median: f64,
    pub control_median: f64,
    /// One-sided ("platform worse") Mann–Whitney p-value, Holm-adjusted over the 3 metrics; 1 when
    /// there was nothing to compare.
    pub p_value: f64,
    /// Effect size in the metric's unit: platform minus control (difference of means).
    pub effect: f64,
    /// Whether `effect` cleared the metric's floor *and* `p_value` the significance level.
    pub significant: bool,
}

/// How precisely the agent kept its send schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerStats {
    pub mean_error_us: f64,
    pub p99_error_us: f64,
    /// Sends more than half an interval late.
    pub late_sends: u32,
}

impl CallReport {
    /// The lowest schema version that defines every key this report carries (see
    /// [`SCHEMA_VERSION`]): 2 when its attestation signs a subdivision, else 1.
    pub fn lowest_schema(&self) -> u32 {
        match &self.attestation {
            Some(a) if a.subdivision.is_some() => 2,
            _ => OLDEST_SCHEMA,
        }
    }

    /// Checks what a receiver must not take on trust: schema, sizes, ranges, finiteness.
    /// Returns the first problem found, in words an agent can log.
    pub fn validate(&self) -> Result<(), String> {
        if !(OLDEST_SCHEMA..=SCHEMA_VERSION).contains(&self.schema) {
            return Err(format!(
                "schema {} is not supported (expected {OLDEST_SCHEMA}..={SCHEMA_VERSION})",
                self.schema
            ));
        }
        if self.streams.is_empty() || self.streams.len() > MAX_STREAMS {
            return Err(format!(
                "{} streams; a report carries 1..={MAX_STREAMS}",
                self.streams.len()
            ));
        }
        if self.agent_version.len() > 64 {
            return Err("agent_version longer than 64 bytes".into());
        }
        if self.interval_ms == 0 || self.duration_ms == 0 {
            return Err("interval_ms and duration_ms must be positive".into());
        }
        for (i, s) in self.streams.iter().enumerate() {
            s.validate()
                .map_err(|e| format!("stream {i} ({}): {e}", s.role))?;
        }
        Ok(())
    }
}

impl StreamReport {
    fn validate(&self) -> Result<(), String> {
        let fraction = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} is not a fraction in 0..=1"))
            }
        };
        for (name, v) in [
            ("loss", self.loss),
            ("loss_up", self.loss_up),
            ("loss_down", self.loss_down),
        ] {
            if let Some(v) = v {
                fraction(name, v)?;
            }
        }
        if self.loss_up.is_some() != self.loss_down.is_some() {
            return Err("loss_up and loss_down are known together or not at all".into());
        }
        if self.packets_received > self.packets_sent {
            return Err(format!(
                "packets_received {} exceeds packets_sent {}",
                self.packets_received, self.packets_sent
            ));
        }
        if let Some(mos) = self.mos {
            if !(1.0..=4.5).contains(&mos) {
                return Err(format!("mos = {mos} outside 1..=4.5"));
            }
        }
        // JSON cannot carry NaN or infinities (serde_json writes them as null), so a stream that
        // does not survive a round trip through JSON unchanged holds a non-finite figure.
        let survives = serde_json::to_vec(self)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StreamReport>(&bytes).ok())
            .is_some_and(|back| &back == self);
        if !survives {
            return Err("a figure is not a finite number".into());
        }
        if let Some(j) = &self.jitter_buffer {
            for (n, v) in [
                ("jitter_buffer.fixed_40ms", j.fixed_40ms),
                ("jitter_buffer.fixed_60ms", j.fixed_60ms),
                ("jitter_buffer.fixed_100ms", j.fixed_100ms),
                ("jitter_buffer.adaptive", j.adaptive),
            ] {
                fraction(n, v)?;
            }
        }
        if let Some(r) = &self.rtt_ms {
            if r.min < 0.0 || r.min > r.max {
                return Err(format!("rtt_ms min {} / max {} out of order", r.min, r.max));
            }
        }
        Ok(())
    }
}

impl CallReport {
    /// A plausible generic-platform report (one platform arm, 1 % loss, RTT median 11.5 ms,
    /// MOS 4.3), for tests, load tools and documentation. Not a measurement.
    pub fn example() -> CallReport {
        CallReport {
            // The lowest its keys need (no attested subdivision), as an agent writes it.
            schema: OLDEST_SCHEMA,
            id: ReportId([7; 16]),
            agent_version: "callwatch-agent/test".into(),
            platform: Platform::Generic,
            started_at: DateTime::from_timestamp(1_760_000_000, 0).unwrap_or_default(),
            duration_ms: 10_000,
            interval_ms: 20,
            payload_bytes: 172,
            verdict: None,
            verdict_detail: None,
            probes_sealed: false,
            path_token: None,
            reflector_loaded: false,
            attestation: None,
            stream_kind: StreamKind::Voice,
            streams: vec![StreamReport {
                role: Role::Platform,
                outcome: StreamOutcome::Measured,
                dark_from_ms: None,
                packets_sent: 500,
                packets_reflected: Some(495),
                packets_received: 490,
                duplicates: 0,
                reordered: 0,
                late: 0,
                loss: Some(10.0 / 500.0),
                loss_up: Some(0.01),
                loss_down: Some(5.0 / 495.0),
                rtt_ms: Some(Stats {
                    min: 10.0,
                    mean: 12.0,
                    median: 11.5,
                    p95: 15.0,
                    p99: 18.0,
                    max: 20.0,
                }),
                owd_ms: None,
                jitter_ms: Some(UpDown { up: 1.0, down: 2.0 }),
                jitter_p95_ms: None,
                jitter_final_ms: None,
                ipdv_ms: None,
                burst: None,
                jitter_buffer: None,
                stalls: None,
                bitrate_kbps: None,
                timer: None,
                r_factor: Some(90.0),
                mos: Some(4.3),
                reflector_residence_ms: None,
                reflector_drops: 0,
                mos_basis: None,
            }],
        }
    }
}

/// How finely agents sign a test's start: the hour ([`coarse_start`]).
pub const STARTED_AT_RESOLUTION_S: i64 = 3_600;

/// `t` floored to the hour: the start time an agent signs. The hour is the aggregates' finest
/// axis and the reflector's attestation's resolution; nothing finer leaves the machine.
pub fn coarse_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let s = t.timestamp();
    let floored = s - s.rem_euclid(STARTED_AT_RESOLUTION_S);
    DateTime::from_timestamp(floored, 0).unwrap_or(t)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible report, for tests here and in other modules.
    pub fn sample_report() -> CallReport {
        CallReport::example()
    }

    #[test]
    fn a_start_is_signed_to_the_hour() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        assert_eq!(
            coarse_start(t),
            Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap()
        );
        let on = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(coarse_start(on), on);
        // Before 1970 too (floors, never rounds towards zero).
        let old = Utc.with_ymd_and_hms(1969, 12, 31, 23, 30, 0).unwrap();
        assert_eq!(
            coarse_start(old),
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 0, 0).unwrap()
        );
        assert_eq!(
            crate::attest::unix_hour(coarse_start(t)),
            crate::attest::unix_hour(t)
        );
    }

    #[test]
    fn json_uses_contract_names() {
        let v = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["id"], "07".repeat(16));
        assert_eq!(v["platform"], "generic");
        assert_eq!(v["verdict"], serde_json::Value::Null);
        assert!(v["started_at"].as_str().unwrap().starts_with("2025-10-09T"));
        let s = &v["streams"][0];
        assert_eq!(s["role"], "platform");
        for key in [
            "packets_sent",
            "packets_reflected",
            "packets_received",
            "loss_up",
            "loss_down",
            "r_factor",
            "mos",
        ] {
            assert!(s.get(key).is_some(), "missing {key}");
        }
        assert_eq!(s["rtt_ms"]["p95"], 15.0);
        assert_eq!(s["jitter_ms"]["down"], 2.0);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut r = sample_report();
        assert!(r.validate().is_ok());
        // Finite values that need all 17 digits survive the JSON round trip exactly.
        r.streams[0].loss_up = Some(0.1 + 0.2);
        r.streams[0].rtt_ms.as_mut().unwrap().mean = 12.345678901234567;
        assert!(r.validate().is_ok());
        r.streams[0].loss_up = Some(1.5);
        assert!(r.validate().unwrap_err().contains("loss_up"));
        // A split that is half known is no split.
        let mut r = sample_report();
        r.streams[0].loss_down = None;
        assert!(r.validate().unwrap_err().contains("together"));
        // An unknown split is a valid report, and says null, not 0.
        r.streams[0].loss_up = None;
        assert!(r.validate().is_ok());
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["streams"][0]["loss_up"].is_null());
        assert!(v["streams"][0]["loss_down"].is_null());
        let mut r = sample_report();
        r.schema = 99;
        assert!(r.validate().unwrap_err().contains("schema 99"));
        let mut r = sample_report();
        r.streams.clear();
        assert!(r.validate().is_err());
        let mut r = sample_report();
        r.streams[0].mos = Some(f64::NAN);
        assert!(r.validate().is_err());
        // Nested, where JSON would silently turn it into null.
        let mut r = sample_report();
        r.streams[0].jitter_ms = Some(UpDown {
            up: f64::INFINITY,
            down: 1.0,
        });
        assert!(r.validate().unwrap_err().contains("finite"));
    }
}
