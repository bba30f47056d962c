//! Copying every report from one store into another (`migrate`: sled into ClickHouse).

use super::{InsertOutcome, ReportStore, StoreError};
use crate::domain::VerifiedReport;

/// How far a [`copy_reports`] run got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Reports read from the source.
    pub read: usize,
    /// Reports the destination stored for the first time.
    pub inserted: usize,
    /// Reports the destination already held (an earlier, interrupted run, or another source).
    pub present: usize,
}

/// Copies every report of `from` into `to` in arrival order, `batch` at a time, keeping each
/// report's signed bytes, region and arrival time. Resumable and idempotent without any state of
/// its own: the destination deduplicates by report key, so re-running after an interruption
/// skips what is there and copies the rest. `progress` is called after each batch; returning
/// `false` stops the copy (as an interruption would).
pub fn copy_reports(
    from: &dyn ReportStore,
    to: &dyn ReportStore,
    batch: usize,
    mut progress: impl FnMut(&CopyProgress) -> bool,
) -> Result<CopyProgress, StoreError> {
    let batch = batch.max(1);
    let mut done = CopyProgress::default();
    let mut pending: Vec<VerifiedReport> = Vec::with_capacity(batch);
    let mut flush =
        |pending: &mut Vec<VerifiedReport>, done: &mut CopyProgress| -> Result<bool, StoreError> {
            if pending.is_empty() {
                return Ok(true);
            }
            for outcome in to.insert_batch(pending)? {
                match outcome {
                    InsertOutcome::Inserted => done.inserted += 1,
                    InsertOutcome::Duplicate => done.present += 1,
                }
            }
            pending.clear();
            Ok(progress(done))
        };
    let mut stopped = false;
    from.for_each_since(i64::MIN, &mut |stored| {
        pending.push(VerifiedReport::parse(stored)?);
        done.read += 1;
        if pending.len() >= batch && !flush(&mut pending, &mut done)? {
            stopped = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    if !stopped {
        flush(&mut pending, &mut done)?;
    }
    Ok(done)
}
