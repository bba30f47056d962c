//! Rows of `reports`: how a [`VerifiedReport`] is written ([`Row::of`], from the parse and
//! observations ingest made; the body is not parsed again) and how a stored report is read back
//! ([`ReadRow`]).

use super::HOUR_MS;
use crate::domain::codes::{arm_code, country_text, kind_code, platform_code};
use crate::domain::{
    day_string, Filing, PrefixFrom, Region, RegionSource, StoredReport, VerifiedReport,
};
use crate::store::StoreError;
use callwatch_proto::report::VerdictRule;
use callwatch_proto::{SignedReport, Verdict};
use serde::{Deserialize, Serialize};

/// A verdict's code in the `verdict` column (−1: no verdict).
pub fn verdict_code(v: Option<Verdict>) -> i8 {
    match v {
        None => -1,
        Some(Verdict::None) => 0,
        Some(Verdict::Inconclusive) => 1,
        Some(Verdict::Differentiated) => 2,
    }
}

/// One row of `reports` as inserted.
#[derive(Serialize)]
pub struct Row<'a> {
    pub(super) agent: String,
    pub(super) id: String,
    pub(super) ver: u64,
    pub(super) received_at_ms: i64,
    /// Arrival stamp: µs, strictly increasing per store instance (see [`ClickHouseStore`]).
    pub(super) arrival: u64,
    pub(super) started_at_ms: i64,
    pub(super) started_date: String,
    pub(super) hour: i64,
    pub(super) country: &'a str,
    pub(super) cc: String,
    pub(super) asn: u32,
    pub(super) platform: u8,
    pub(super) verdict: i8,
    pub(super) body: &'a str,
    pub(super) signature: String,
    pub(super) arm: Vec<u8>,
    pub(super) rtt: Vec<Option<f64>>,
    pub(super) jitter_up: Vec<Option<f64>>,
    pub(super) jitter_down: Vec<Option<f64>>,
    pub(super) loss_up: Vec<Option<f64>>,
    pub(super) loss_down: Vec<Option<f64>>,
    pub(super) mos: Vec<Option<f64>>,
    pub(super) stalls: Vec<Option<f64>>,
    /// The signed report's key field (hex); equal to `agent` for every verified report.
    pub(super) key: String,
    /// [`kind_code`] of the report's stream kind.
    pub(super) kind: u8,
    /// The verdict's rule as the report spells it; empty when it has none.
    pub(super) rule: &'static str,
    /// Round-trip loss per arm.
    pub(super) loss: Vec<Option<f64>>,
    /// [`RegionSource::code`] of the report's filing.
    pub(super) region_source: u8,
    pub(super) uploaded_elsewhere: u8,
    pub(super) hosting: u8,
    /// [`PrefixFrom::code`] of the report's filing.
    pub(super) prefix_from: u8,
    /// The keyed prefix tag, empty when none (never exported).
    pub(super) prefix_tag: String,
    /// The region's ISO 3166-2 subdivision (`RU-MOW`), empty when unknown.
    pub(super) subdivision: &'a str,
}

/// One report as read back.
#[derive(Deserialize)]
pub struct ReadRow {
    pub(super) agent: String,
    pub(super) id: String,
    pub(super) received_at_ms: i64,
    pub(super) arrival: u64,
    pub(super) country: String,
    pub(super) asn: u32,
    pub(super) body: String,
    pub(super) signature: String,
    pub(super) key: String,
    pub(super) region_source: u8,
    pub(super) uploaded_elsewhere: u8,
    pub(super) hosting: u8,
    pub(super) prefix_from: u8,
    pub(super) prefix_tag: String,
    pub(super) subdivision: String,
}

impl ReadRow {
    pub fn into_stored(self) -> Result<StoredReport, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            key: format!("{}{}", self.agent, self.id),
            what,
        };
        Ok(StoredReport {
            signed: SignedReport {
                body: self.body.into_bytes(),
                key: hex::decode(&self.key).map_err(|e| corrupt(format!("key: {e}")))?,
                signature: hex::decode(&self.signature)
                    .map_err(|e| corrupt(format!("signature: {e}")))?,
            },
            // Checked again: a code not of the row's country reads as unknown.
            region: Region::new(&self.country, self.asn).with_subdivision(&self.subdivision),
            received_at_ms: self.received_at_ms,
            filing: Filing {
                source: RegionSource::of_code(self.region_source),
                uploaded_elsewhere: self.uploaded_elsewhere != 0,
                hosting: self.hosting != 0,
                prefix_from: PrefixFrom::of_code(self.prefix_from),
                prefix_tag: (!self.prefix_tag.is_empty()).then_some(self.prefix_tag),
            },
        })
    }
}

impl<'a> Row<'a> {
    /// The row of a verified report: its parse and observations as ingest made them (the body
    /// is not parsed again).
    pub fn of(v: &'a VerifiedReport, arrival: u64) -> Result<Row<'a>, StoreError> {
        let (key, report, body, obs) = (&v.key, &v.stored, &v.report, &v.observations);
        let corrupt = |what: String| StoreError::Corrupt {
            key: hex::encode(key.to_bytes()),
            what,
        };
        // Verified bodies are JSON, so UTF-8; the check costs a scan, not a parse.
        let body_text = std::str::from_utf8(&report.signed.body)
            .map_err(|e| corrupt(format!("body is not UTF-8: {e}")))?;
        let started_at_ms = body.started_at.timestamp_millis();
        let hour = started_at_ms.div_euclid(HOUR_MS);
        let figure = |i: usize| obs.iter().map(|o| o.figures[i]).collect::<Vec<_>>();
        Ok(Row {
            agent: hex::encode(key.agent),
            id: hex::encode(key.id.0),
            ver: u64::MAX - arrival,
            received_at_ms: report.received_at_ms,
            arrival,
            started_at_ms,
            started_date: day_string(hour.div_euclid(24)),
            hour,
            country: &report.region.country,
            cc: country_text(&report.region.country),
            asn: report.region.asn,
            platform: platform_code(body.platform),
            verdict: verdict_code(body.verdict),
            body: body_text,
            signature: hex::encode(&report.signed.signature),
            arm: obs.iter().map(|o| arm_code(o.arm)).collect(),
            rtt: figure(0),
            jitter_up: figure(1),
            jitter_down: figure(2),
            loss: figure(3),
            loss_up: figure(4),
            loss_down: figure(5),
            mos: figure(6),
            stalls: figure(7),
            key: hex::encode(&report.signed.key),
            kind: kind_code(body.stream_kind),
            rule: body
                .verdict_detail
                .as_ref()
                .and_then(|d| d.rule)
                .map_or("", VerdictRule::as_str),
            region_source: report.filing.source.code(),
            uploaded_elsewhere: u8::from(report.filing.uploaded_elsewhere),
            hosting: u8::from(report.filing.hosting),
            prefix_from: report.filing.prefix_from.code(),
            prefix_tag: report.filing.prefix_tag.clone().unwrap_or_default(),
            subdivision: &report.region.subdivision,
        })
    }
}
