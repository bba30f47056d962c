//! Carry-out files on the collector's side: its carry-out key, and `import`, which opens a file
//! an agent exported (`callwatch_proto::carry`) and ingests its reports by the ingest rules.
//!
//! The key is an X25519 secret kept owner-only in the data folder beside the certificate
//! ([`KEY_FILE`]); its public half is written to [`PUB_FILE`], printed at start, and sent to
//! agents over the pinned upload channel, so an agent learns it with its first upload.
//!
//! An import goes through [`process_batch_attested`], the very code QUIC and TCP uploads go
//! through: signatures, schema, the 10-minute future and 180-day age limits, the reflector
//! attestation rules, and de-duplication by (agent key, report id), so a report uploaded and also
//! imported, or imported twice, is stored once. A report with a valid reflector attestation is
//! filed under the attested region; one without (or with a refused one) under "unknown" (`ZZ`,
//! AS0): the importer's address says nothing of where the tests ran. The upload rate limits
//! (which protect the network listeners from strangers) do not apply to what the operator
//! imports.

use crate::attest::{Arrival, AttestKeys, Filer, PathTokens};
use crate::geo::hosting::HostingAsns;
use crate::ingest::{process_batch_attested, IngestStats, Limiter, RateLimits};
use crate::store::ReportStore;
use anyhow::{Context, Result};
use callwatch_proto::carry::{CarrySecret, Opener, KEY_LEN, MAX_LINE_LEN};
use callwatch_proto::upload::QueuedReport;
use callwatch_proto::upload::{ReportStatus, Response, MAX_BATCH};
use callwatch_reflector::files::write_private;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

/// The collector's carry-out secret key (32 raw bytes, mode 0600).
pub const KEY_FILE: &str = "collector.seal.key";
/// Its public half, 64 hex digits: what agents put in `collector_seal_key`.
pub const PUB_FILE: &str = "collector.seal.pub";

/// Loads the carry-out key from `dir`, making one on first start; (re)writes the public file.
pub fn load_or_create(dir: &Path) -> Result<CarrySecret> {
    let path = dir.join(KEY_FILE);
    let secret = if path.exists() {
        load(dir)?
    } else {
        let mut bytes = [0u8; KEY_LEN];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes[..]);
        write_private(&path, &bytes)?;
        CarrySecret::from_bytes(bytes)
    };
    let pub_path = dir.join(PUB_FILE);
    std::fs::write(&pub_path, format!("{}\n", secret.public()))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(secret)
}

/// Loads the carry-out key of an existing data folder.
pub fn load(dir: &Path) -> Result<CarrySecret> {
    let path = dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (the collector makes it on its first start)",
            path.display()
        )
    })?;
    let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{} is {} bytes, not a {KEY_LEN}-byte carry-out key",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(CarrySecret::from_bytes(bytes))
}

/// What became of one line of an imported file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineResult {
    /// Stored now.
    Accepted,
    /// Stored before (uploaded, or imported earlier).
    Duplicate,
    /// Not stored, and why.
    Rejected(String),
}

/// What an import did, and to which line (1-based, as an editor counts; line 1 is the header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub lines: Vec<(u64, LineResult)>,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
}

/// Reads one line of at most `max` bytes (its `\n` dropped); `Ok(None)` at the end of the file.
/// The flag says whether the line ended in `\n` (a last line without one was cut short).
fn read_line(r: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> Result<Option<bool>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(max as u64 + 2)
        .read_until(b'\n', buf)
        .context("reading the file")?;
    if n == 0 {
        return Ok(None);
    }
    let complete = buf.last() == Some(&b'\n');
    if complete {
        buf.pop();
    }
    Ok(Some(complete))
}

/// Checks a file's shape without storing anything: its header opens with `secret`, and it has
/// exactly as many complete report lines as the header counts. Returns the count.
pub fn check(path: &Path, secret: &CarrySecret) -> Result<u64> {
    let mut r = BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut buf = Vec::new();
    let header = match read_line(&mut r, 1024, &mut buf)? {
        None => anyhow::bail!("{} is empty", path.display()),
        Some(_) => String::from_utf8_lossy(&buf).into_owned(),
    };
    let opener = Opener::new(secret, &header)
        .map_err(|e| anyhow::anyhow!("{}: line 1 (the header): {e}", path.display()))?;
    let want = opener.count();
    let mut lines = 0u64;
    while let Some(complete) = read_line(&mut r, MAX_LINE_LEN, &mut buf)? {
        lines += 1;
        if lines > want {
            anyhow::bail!(
                "{}: more lines than the {want} reports its header counts; not a file `export-queue` \
                 wrote (nothing imported)",
                path.display()
            );
        }
        if !complete {
            anyhow::bail!(
                "{}: truncated: line {} is cut short (the header counts {want} reports; nothing \
                 imported)",
                path.display(),
                lines + 1
            );
        }
    }
    if lines < want {
        anyhow::bail!(
            "{}: truncated: the header counts {want} reports, the file holds {lines} (nothing \
             imported)",
            path.display()
        );
    }
    Ok(want)
}

/// Imports a carry-out file into `store`: first [`check`]s its shape (a wrong key, garbage or a
/// truncated file is refused as a whole and nothing is stored), then opens each report line and
/// ingests them in batches by the ingest rules: region attested by a reflector whose key is in
/// `filer`, else unknown; marked as `filer` decides. `each` hears every line's result
/// as it is known. A store failure stops the import with an error; what was stored before stays
/// (importing the file again is safe: stored reports come back as duplicates).
pub async fn import(
    path: &Path,
    secret: &CarrySecret,
    filer: &Filer,
    store: Arc<dyn ReportStore>,
    mut each: impl FnMut(u64, &LineResult),
) -> Result<ImportSummary> {
    let count = check(path, secret)?;
    let mut r = BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut buf = Vec::new();
    read_line(&mut r, 1024, &mut buf)?;
    let opener = Opener::new(secret, &String::from_utf8_lossy(&buf))
        .map_err(|e| anyhow::anyhow!("{}: line 1 (the header): {e}", path.display()))?;
    let stats = IngestStats::default();
    let limiter = Limiter::new(RateLimits::unlimited());
    let mut summary = ImportSummary::default();
    let mut record = |summary: &mut ImportSummary, line: u64, result: LineResult| {
        match &result {
            LineResult::Accepted => summary.accepted += 1,
            LineResult::Duplicate => summary.duplicate += 1,
            LineResult::Rejected(_) => summary.rejected += 1,
        }
        each(line, &result);
        summary.lines.push((line, result));
    };
    let mut batch: Vec<(u64, QueuedReport)> = Vec::with_capacity(MAX_BATCH);
    for i in 1..=count {
        let line_no = i + 1;
        if read_line(&mut r, MAX_LINE_LEN, &mut buf)?.is_none() {
            anyhow::bail!("{} changed while it was imported", path.display());
        }
        match opener.line(i, &String::from_utf8_lossy(&buf)) {
            Ok(report) => batch.push((line_no, report)),
            Err(e) => record(&mut summary, line_no, LineResult::Rejected(e.to_string())),
        }
        if batch.len() == MAX_BATCH || (i == count && !batch.is_empty()) {
            let (lines, reports): (Vec<u64>, Vec<QueuedReport>) = batch.drain(..).unzip();
            let response = process_batch_attested(
                reports,
                Arrival::Carried,
                filer,
                store.clone(),
                &stats,
                &limiter,
            )
            .await;
            let statuses = match response {
                Response::Ack { statuses } if statuses.len() == lines.len() => statuses,
                Response::Error { reason, .. } => anyhow::bail!(
                    "the store refused lines {}..={}: {reason} ({} reports stored before \
                     stay; importing the file again is safe)",
                    lines[0],
                    lines[lines.len() - 1],
                    summary.accepted
                ),
                other => anyhow::bail!("unexpected answer from ingest: {other:?}"),
            };
            for (line, status) in lines.into_iter().zip(statuses) {
                let result = match status {
                    ReportStatus::Accepted => LineResult::Accepted,
                    ReportStatus::Duplicate => LineResult::Duplicate,
                    ReportStatus::Rejected { reason } => LineResult::Rejected(reason),
                    // Nothing stored; the file can be imported again (by a newer collector, or
                    // once the clock has passed a start that lay ahead of it).
                    ReportStatus::Deferred { reason } => LineResult::Rejected(format!(
                        "{reason} (nothing stored from this line: import the file again later, \
                         or with a newer collector)"
                    )),
                };
                record(&mut summary, line, result);
            }
        }
    }
    Ok(summary)
}

/// `callwatch-collector import`: opens the store of a stopped collector in `data` (or the one
/// `store_args` name), imports `file`, prints one line per report line and a summary.
pub async fn import_command(
    data: &Path,
    store_args: &crate::store::config::StoreArgs,
    hosting: &HostingAsns,
    file: &Path,
) -> Result<ImportSummary> {
    let secret = load(data)?;
    // Check the file before opening (and perhaps waiting on) the store.
    check(file, &secret)?;
    // The attestation keys `serve` accepts: its own reflector's and the registered ones; path
    // tokens open with the same carry-out key.
    let filer = Filer {
        keys: AttestKeys::load(data)?,
        hosting: hosting.clone(),
        paths: Some(Arc::new(PathTokens::new(secret.clone()))),
    };
    let store: Arc<dyn ReportStore> = match crate::store::config::open_for_serve(store_args, None)?
    {
        Some(clickhouse) => clickhouse,
        None => Arc::new(crate::store::config::open_stopped_sled(data)?),
    };
    let summary = import(file, &secret, &filer, store, |line, result| match result {
        LineResult::Accepted => println!("line {line}: accepted"),
        LineResult::Duplicate => println!("line {line}: duplicate (stored before)"),
        LineResult::Rejected(why) => println!("line {line}: rejected: {why}"),
    })
    .await?;
    println!(
        "{}: {} report(s): {} accepted, {} duplicate, {} rejected (region: attested, else unknown)",
        file.display(),
        summary.lines.len(),
        summary.accepted,
        summary.duplicate,
        summary.rejected
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::carry::CarryKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_owner_only_and_its_public_half_published() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let published = std::fs::read_to_string(dir.path().join(PUB_FILE)).unwrap();
        assert_eq!(published.trim().parse::<CarryKey>().unwrap(), a.public());
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a 32-byte"), "{e}");
    }
}
