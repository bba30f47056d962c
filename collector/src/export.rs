//! Raw export, in two forms.
//!
//! - **Full** ([`ExportRecord`]): each stored report as one NDJSON line with everything needed
//!   to verify it offline — the exact signed body (as a JSON string), the agent key and the
//!   signature — the arrival time to the millisecond, and the coarse region the collector placed
//!   it in, with how it was placed there. The operator's `export` command and the HTTP API with
//!   a researcher token ([`crate::token`]) give it.
//! - **Public** ([`PublicRecord`]): what `/api/v1/reports` gives anyone. Nothing that links two
//!   reports of one volunteer or singles one out: no key, no signature, no signed bytes; the
//!   report re-serialized from its parse (only the schema's fields, no attestation, no clock
//!   offset) with its start floored to the hour, the arrival day only, the country, and the ASN only where the
//!   aggregate publishes the report's (day, country, ASN, platform, kind) cell under the k
//!   threshold ([`PublishedCells`], asked of the store).
//!
//! Never an address, in either.

use crate::domain::codes::country_text;
use crate::domain::{
    day_string, Axis, Cell, Filter, Policy, RegionSource, StoredReport, FIGURES, FIGURE_PRECISION,
};
use crate::store::{ReportStore, StoreError};
use callwatch_proto::precision::Precision;
use callwatch_proto::{CallReport, SignedReport};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::BufRead;

/// Milliseconds in a day and an hour.
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// One line of a raw export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// When the collector received the report (RFC 3339, UTC).
    pub received_at: String,
    pub country: String,
    pub asn: u32,
    /// Agent Ed25519 public key, hex.
    pub key: String,
    /// Ed25519 signature over `"callwatch-report-v1\0" || body`, hex.
    pub signature: String,
    /// The report's JSON exactly as signed.
    pub body: String,
    /// Where `country` and `asn` came from: `attested` (a reflector's attestation of the
    /// measured path), `upload` (the upload's address), `unknown` (carried out in a file without
    /// one) or `unrecorded` (stored before the collector recorded it).
    #[serde(default = "unrecorded")]
    pub region_source: String,
    /// Attested in one region, uploaded from another: a VPN or proxy, a change of network
    /// before the upload, or the other address family.
    #[serde(default)]
    pub uploaded_elsewhere: bool,
    /// Filed under a hosting, cloud or VPN provider's network, not a subscriber's line.
    #[serde(default)]
    pub hosting: bool,
    /// The region's first-level subdivision, ISO 3166-2 (`RU-MOW`), from the upload address's
    /// lookup in a City database; absent when unknown. Not in the public records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdivision: String,
}

fn unrecorded() -> String {
    RegionSource::Unrecorded.as_str().into()
}

impl ExportRecord {
    pub fn from_stored(stored: &StoredReport) -> ExportRecord {
        let received = DateTime::<Utc>::from_timestamp_millis(stored.received_at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        ExportRecord {
            received_at: received,
            country: stored.region.country.clone(),
            asn: stored.region.asn,
            key: hex::encode(&stored.signed.key),
            signature: hex::encode(&stored.signed.signature),
            // Bodies are checked whole as UTF-8 at ingest; lossy only guards one stored before
            // that check (invalid bytes in a field the parse then skipped), which exports and
            // then fails offline verification visibly instead of stopping the export.
            body: String::from_utf8_lossy(&stored.signed.body).into_owned(),
            region_source: stored.filing.source.as_str().into(),
            uploaded_elsewhere: stored.filing.uploaded_elsewhere,
            hosting: stored.filing.hosting,
            subdivision: stored.region.subdivision.clone(),
        }
    }

    pub fn to_signed(&self) -> Result<SignedReport, String> {
        Ok(SignedReport {
            body: self.body.as_bytes().to_vec(),
            key: hex::decode(&self.key).map_err(|e| format!("key: {e}"))?,
            signature: hex::decode(&self.signature).map_err(|e| format!("signature: {e}"))?,
        })
    }

    /// The record as one NDJSON line (with its newline).
    pub fn to_line(&self) -> String {
        // Serialising a struct of strings and numbers cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// One page of raw reports received at or after `since_ms`: at least `limit` records (if there
/// are that many), extended to the end of the last record's millisecond so that the next page,
/// from `next_since_ms`, neither repeats nor skips any.
pub fn page(
    store: &dyn ReportStore,
    since_ms: i64,
    limit: usize,
    mut emit: impl FnMut(ExportRecord) -> bool,
) -> Result<Option<i64>, StoreError> {
    page_stored(store, since_ms, limit, |stored| {
        emit(ExportRecord::from_stored(stored))
    })
    .map(|(next, _)| next)
}

/// The paging of [`page`] over stored reports: returns where the next page starts (if any
/// report is left) and the arrival time of the page's last report (if it has one).
fn page_stored(
    store: &dyn ReportStore,
    since_ms: i64,
    limit: usize,
    mut emit: impl FnMut(&crate::domain::StoredReport) -> bool,
) -> Result<(Option<i64>, Option<i64>), StoreError> {
    let mut count = 0usize;
    let mut last_ms = None;
    let mut next = None;
    store.for_each_since(since_ms, &mut |stored| {
        if count >= limit && last_ms != Some(stored.received_at_ms) {
            next = Some(stored.received_at_ms);
            return Ok(false);
        }
        count += 1;
        last_ms = Some(stored.received_at_ms);
        Ok(emit(&stored))
    })?;
    Ok((next, last_ms))
}

/// One line of the public export: a report's measurement without anything that links it to its
/// volunteer's other reports or to a moment finer than the hour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicRecord {
    /// The UTC day the collector received it, `YYYY-MM-DD` (never finer).
    pub received_day: String,
    pub country: String,
    /// The network it is filed under, only when the aggregate publishes its (day, country, ASN,
    /// platform, kind) cell (at least k agents); otherwise `null`.
    pub asn: Option<u32>,
    /// As in [`ExportRecord`].
    pub region_source: String,
    pub uploaded_elsewhere: bool,
    pub hosting: bool,
    /// The report as the collector parsed it, re-serialized: the schema's fields only, its
    /// `started_at` floored to the hour, its `attestation` (which names the ASN) and each
    /// stream's `owd_ms.clock_offset_ms` (a per-machine fingerprint) left out.
    /// Not the signed bytes, and not verifiable: the full export has those. `null` for a
    /// stored body that no longer parses.
    pub report: Option<serde_json::Value>,
}

/// A (day, country, ASN, platform, kind) cell, as the aggregate names it.
type CellName = (String, String, u32, String, String);

/// The (day, country, ASN, platform, kind) cells the store publishes over a range of days under
/// a [`Policy`]: a report's ASN is public only when its cell is one of them. Asked of the store
/// ([`ReportStore::aggregate`]), so the k rules are the aggregate's, whatever they become.
#[derive(Clone, Debug, Default)]
pub struct PublishedCells(HashSet<CellName>);

impl PublishedCells {
    /// The cells published for test days `first_day..=last_day` (days since the epoch).
    pub fn of(
        store: &dyn ReportStore,
        first_day: i64,
        last_day: i64,
        policy: &Policy,
    ) -> Result<PublishedCells, StoreError> {
        let filter = Filter {
            since_ms: Some(first_day.saturating_mul(DAY_MS)),
            until_ms: Some(last_day.saturating_add(1).saturating_mul(DAY_MS)),
            ..Filter::default()
        };
        let axes = [
            Axis::Day,
            Axis::Country,
            Axis::Asn,
            Axis::Platform,
            Axis::Kind,
        ];
        let cells = store.aggregate(&axes, &filter, policy)?;
        Ok(PublishedCells(
            cells
                .iter()
                .filter_map(|c| {
                    Some((
                        c.day.clone()?,
                        c.country.clone()?,
                        c.asn?,
                        c.platform.clone()?,
                        c.kind.clone()?,
                    ))
                })
                .collect(),
        ))
    }

    fn contains(&self, stored: &StoredReport, report: &CallReport) -> bool {
        let day = report.started_at.timestamp_millis().div_euclid(DAY_MS);
        self.0.contains(&(
            day_string(day),
            country_text(&stored.region.country),
            stored.region.asn,
            report.platform.to_string(),
            report.stream_kind.to_string(),
        ))
    }
}

impl PublicRecord {
    /// The public form of a stored report; its ASN shows only when `published` holds its cell.
    pub fn from_stored(stored: &StoredReport, published: &PublishedCells) -> PublicRecord {
        let report = serde_json::from_slice::<CallReport>(&stored.signed.body).ok();
        let asn = report
            .as_ref()
            .filter(|r| published.contains(stored, r))
            .map(|_| stored.region.asn);
        let report = report.and_then(|mut r| {
            let start = r.started_at.timestamp_millis();
            r.started_at =
                DateTime::<Utc>::from_timestamp_millis(start - start.rem_euclid(HOUR_MS))?;
            r.attestation = None;
            let mut v = serde_json::to_value(&r).ok()?;
            // The agent's clock offset from the reflector, to 0.1 µs, is much the same in every
            // report of one machine (it drifts slowly): a fingerprint, not a measurement of the
            // path. The one-way delays themselves stay.
            for s in v["streams"].as_array_mut().into_iter().flatten() {
                if let Some(owd) = s.get_mut("owd_ms").and_then(|o| o.as_object_mut()) {
                    owd.remove("clock_offset_ms");
                }
            }
            Some(v)
        });
        PublicRecord {
            received_day: day_string(stored.received_at_ms.div_euclid(DAY_MS)),
            country: country_text(&stored.region.country),
            asn,
            region_source: stored.filing.source.as_str().into(),
            uploaded_elsewhere: stored.filing.uploaded_elsewhere,
            hosting: stored.filing.hosting,
            report,
        }
    }

    /// The record as one NDJSON line (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// A planned page of the public export ([`plan_public_page`]): where it ends and the cells
/// whose ASN it may show.
#[derive(Clone, Debug)]
pub struct PublicPage {
    /// The first arrival time (Unix ms) after the page: where the next page starts.
    pub end: i64,
    published: PublishedCells,
}

/// Plans one page of the public export: the reports received at or after `since_ms`, paged as
/// [`page`] pages them. Reads the page once to find its end and the days its tests started on,
/// then asks the store once for the cells published over those days. `None`: nothing to page.
pub fn plan_public_page(
    store: &dyn ReportStore,
    since_ms: i64,
    limit: usize,
    policy: &Policy,
) -> Result<Option<PublicPage>, StoreError> {
    #[derive(Deserialize)]
    struct Start {
        started_at: DateTime<Utc>,
    }
    let mut days: Option<(i64, i64)> = None;
    let (next, last_ms) = page_stored(store, since_ms, limit, |stored| {
        if let Ok(s) = serde_json::from_slice::<Start>(&stored.signed.body) {
            let day = s.started_at.timestamp_millis().div_euclid(DAY_MS);
            days = Some(days.map_or((day, day), |(a, b)| (a.min(day), b.max(day))));
        }
        true
    })?;
    let Some(last_ms) = last_ms else {
        return Ok(None);
    };
    let published = match days {
        Some((first, last)) => PublishedCells::of(store, first, last, policy)?,
        None => PublishedCells::default(),
    };
    Ok(Some(PublicPage {
        end: next.unwrap_or(last_ms.saturating_add(1)),
        published,
    }))
}

/// Emits the planned page: every report received from `since_ms` up to `page.end`, as a
/// [`PublicRecord`], until `emit` returns false. (A report that arrived after the plan with an
/// arrival time inside the page is emitted too; its ASN shows only if its cell was published.)
pub fn emit_public_page(
    store: &dyn ReportStore,
    since_ms: i64,
    page: &PublicPage,
    mut emit: impl FnMut(PublicRecord) -> bool,
) -> Result<(), StoreError> {
    store.for_each_since(since_ms, &mut |stored| {
        if stored.received_at_ms >= page.end {
            return Ok(false);
        }
        Ok(emit(PublicRecord::from_stored(&stored, &page.published)))
    })
}

/// What `verify` says of a public record: it cannot be verified, and where the full form is.
pub const PUBLIC_FORM: &str = "this is the public, redacted export (no agent keys, signatures or \
     signed bodies): it cannot be verified. The full export, which can, needs a researcher token \
     from the collector's operator: GET /api/v1/reports?full=true with `Authorization: Bearer \
     <token>` (or the operator's `callwatch-collector export`)";

/// The outcome of checking an export offline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifySummary {
    pub valid: usize,
    /// (line number, reason) of every record that does not verify.
    pub invalid: Vec<(usize, String)>,
}

/// Checks every signature (and report validity) in an NDJSON export. A line of the public
/// form is an error ([`PUBLIC_FORM`], kind `InvalidData`): that export holds nothing to verify.
pub fn verify_export(input: impl BufRead) -> std::io::Result<VerifySummary> {
    let mut summary = VerifySummary::default();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if is_public_line(&line) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: {PUBLIC_FORM}", i + 1),
            ));
        }
        let outcome = serde_json::from_str::<ExportRecord>(&line)
            .map_err(|e| format!("not an export record: {e}"))
            .and_then(|r| r.to_signed())
            .and_then(|s| s.verify().map(|_| ()).map_err(|e| e.to_string()));
        match outcome {
            Ok(()) => summary.valid += 1,
            Err(reason) => summary.invalid.push((i + 1, reason)),
        }
    }
    Ok(summary)
}
/// Whether an export line is a [`PublicRecord`] (an object with `report` and no `signature`).
fn is_public_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
        v.get("report").is_some() && v.get("signature").is_none() && v.get("body").is_none()
    })
}

/// CSV columns, in order: the axes asked for, `count,agents`, `<figure>_p10,_median,_p90` per
/// figure in [`FIGURES`] order, then the verdict counts (`verdict_none`, `verdict_inconclusive`,
/// `verdict_differentiated`, `verdict_blocked`, `verdict_no_reference`) and the shares
/// (`differentiated_share`, `blocked_share`), then the filing counts (`uploaded_elsewhere`,
/// `hosting`). Figures and shares are rounded to their rule in [`callwatch_proto::precision`], as
/// in the JSON.
pub fn cells_csv(cells: &[Cell], axes: &[Axis]) -> String {
    let mut header: Vec<String> = axes.iter().map(|a| a.as_str().to_string()).collect();
    header.extend(["count".into(), "agents".into()]);
    for f in FIGURES {
        header.extend([
            format!("{f}_p10"),
            format!("{f}_median"),
            format!("{f}_p90"),
        ]);
    }
    header.extend([
        "verdict_none".into(),
        "verdict_inconclusive".into(),
        "verdict_differentiated".into(),
        "verdict_blocked".into(),
        "verdict_no_reference".into(),
        "differentiated_share".into(),
        "blocked_share".into(),
        "uploaded_elsewhere".into(),
        "hosting".into(),
    ]);
    let mut out = header.join(",");
    out.push('\n');
    let share = |x: Option<f64>| x.map(|x| Precision::Fraction.text(x)).unwrap_or_default();
    for c in cells {
        let mut row: Vec<String> = axes.iter().map(|a| c.axis_text(*a)).collect();
        row.extend([c.count.to_string(), c.agents.to_string()]);
        for (f, p) in c.figures().into_iter().zip(FIGURE_PRECISION) {
            match f {
                Some(f) => row.extend([p.text(f.p10), p.text(f.median), p.text(f.p90)]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
        }
        row.extend([
            c.verdicts.none.to_string(),
            c.verdicts.inconclusive.to_string(),
            c.verdicts.differentiated.to_string(),
            c.verdicts.blocked.to_string(),
            c.verdicts.no_reference.to_string(),
            share(c.differentiated_share),
            share(c.blocked_share),
            c.filing.uploaded_elsewhere.to_string(),
            c.filing.hosting.to_string(),
        ]);
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::CallReport;

    /// The offline `verify` applies the same strict schema as ingest and `import`: a record
    /// whose body carries a field its schema does not define (one stored before the rule) is
    /// reported with the field's path, and the rest still verify.
    #[test]
    fn offline_verify_names_a_field_the_schema_does_not_define() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        let line = |body: Vec<u8>| {
            ExportRecord::from_stored(&StoredReport {
                signed: SignedReport::sign_body(body, &key),
                region: crate::geo::Region::unknown(),
                received_at_ms: 1,
                filing: Default::default(),
            })
            .to_line()
        };
        let good = serde_json::to_vec(&CallReport::example()).unwrap();
        let mut odd = serde_json::to_value(CallReport::example()).unwrap();
        odd["streams"][0]["hostname"] = "volunteer-laptop".into();
        let input = line(good) + &line(serde_json::to_vec(&odd).unwrap());
        let summary = verify_export(input.as_bytes()).unwrap();
        assert_eq!(summary.valid, 1);
        assert_eq!(summary.invalid.len(), 1);
        let (at, reason) = &summary.invalid[0];
        assert_eq!(*at, 2);
        assert!(reason.ends_with("streams[0].hostname"), "{reason}");
    }

    /// The public form of a report carries its measurement and nothing that links it: no key,
    /// signature or signed bytes, the start to the hour, no attestation, the arrival day; the
    /// ASN only for a published cell. `verify` refuses it, saying what it is.
    #[test]
    fn the_public_form_links_nothing_and_verify_refuses_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        let mut report = CallReport::example();
        report.started_at = "2026-11-28T13:14:15.123456789Z".parse().unwrap();
        let stats = report.streams[0].rtt_ms.unwrap();
        report.streams[0].owd_ms = Some(callwatch_proto::report::OneWayDelay {
            up: stats,
            down: stats,
            reference: "relative-to-path-minimum".into(),
            clock_offset_ms: 1_003_312.009_5,
            clock_offset_error_ms: 0.0255,
        });
        let signed = SignedReport::sign(&report, &key).unwrap();
        let stored = StoredReport {
            signed: signed.clone(),
            region: crate::geo::Region {
                country: "RU".into(),
                asn: 8359,
                subdivision: String::new(),
            },
            received_at_ms: 1_795_829_655_016, // 2026-11-28T15:34:15.016Z
            filing: Default::default(),
        };
        let public = PublicRecord::from_stored(&stored, &PublishedCells::default());
        let line = public.to_line();
        assert_eq!(public.asn, None, "no published cell: no ASN");
        assert_eq!(public.received_day, "2026-11-28");
        assert_eq!(public.country, "RU");
        let r = public.report.as_ref().unwrap();
        assert_eq!(r["started_at"], "2026-11-28T13:00:00Z");
        assert!(r.get("attestation").is_none());
        let owd = &r["streams"][0]["owd_ms"];
        assert!(
            owd.get("clock_offset_ms").is_none() && owd.get("up").is_some(),
            "{owd}"
        );
        for secret in [
            hex::encode(&signed.key),
            hex::encode(&signed.signature),
            "13:14".to_string(),
            "15:34".to_string(),
            "8359".to_string(),
            "1003312".to_string(),
        ] {
            assert!(!line.contains(&secret), "{secret} in {line}");
        }
        let mut published = PublishedCells::default();
        published.0.insert((
            "2026-11-28".into(),
            "RU".into(),
            8359,
            report.platform.to_string(),
            report.stream_kind.to_string(),
        ));
        assert_eq!(
            PublicRecord::from_stored(&stored, &published).asn,
            Some(8359)
        );
        let e = verify_export(line.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("public, redacted export"), "{e}");
        assert!(e.to_string().contains("token"), "{e}");
    }
}
