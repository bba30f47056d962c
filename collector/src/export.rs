//! Raw export: each stored report as one NDJSON line with everything needed to verify it
//! offline — the exact signed body (as a JSON string), the agent key and the signature — and the
//! coarse region the collector placed it in, with how it was placed there. Never an address.

use crate::domain::{Axis, Cell, RegionSource, StoredReport, FIGURES, FIGURE_PRECISION};
use crate::store::{ReportStore, StoreError};
use callwatch_proto::precision::Precision;
use callwatch_proto::SignedReport;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::io::BufRead;

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
        Ok(emit(ExportRecord::from_stored(&stored)))
    })?;
    Ok(next)
}

/// The outcome of checking an export offline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifySummary {
    pub valid: usize,
    /// (line number, reason) of every record that does not verify.
    pub invalid: Vec<(usize, String)>,
}

/// Checks every signature (and report validity) in an NDJSON export.
pub fn verify_export(input: impl BufRead) -> std::io::Result<VerifySummary> {
    let mut summary = VerifySummary::default();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
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
}
