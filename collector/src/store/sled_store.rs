//! The embedded default store: one sled tree keyed by agent key ‖ report id.

use super::{InsertOutcome, ReportKey, ReportStore, StoreError, StoredReport};
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    reports: sled::Tree,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // We flush explicitly before acknowledging; the periodic flush is only a backstop.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", dir.display())))?;
        let reports = db.open_tree("reports").map_err(backend)?;
        Ok(SledStore { db, reports })
    }
}

impl ReportStore for SledStore {
    fn insert_batch(
        &self,
        batch: &[(ReportKey, StoredReport)],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (key, report) in batch {
            let value = postcard::to_allocvec(report)
                .map_err(|e| StoreError::Backend(format!("encoding report: {e}")))?;
            // Insert-if-absent is atomic, so two connections racing with the same report store it
            // once and one of them is told "duplicate".
            let outcome = match self
                .reports
                .compare_and_swap(key.to_bytes(), None as Option<&[u8]>, Some(value))
                .map_err(backend)?
            {
                Ok(()) => InsertOutcome::Inserted,
                Err(_) => InsertOutcome::Duplicate,
            };
            outcomes.push(outcome);
        }
        // Durable before anyone is told: sled otherwise flushes on its own schedule.
        self.db.flush().map_err(backend)?;
        Ok(outcomes)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.reports.iter() {
            let (k, v) = item.map_err(backend)?;
            let report: StoredReport =
                postcard::from_bytes(&v).map_err(|e| StoreError::Corrupt {
                    key: hex::encode(&k),
                    what: e.to_string(),
                })?;
            f(report)?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.reports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Region;
    use callwatch_proto::{ReportId, SignedReport};

    fn item(agent: u8, id: u8) -> (ReportKey, StoredReport) {
        (
            ReportKey {
                agent: [agent; 32],
                id: ReportId([id; 16]),
            },
            StoredReport {
                signed: SignedReport {
                    body: b"{}".to_vec(),
                    key: vec![agent; 32],
                    signature: vec![0; 64],
                },
                region: Region::unknown(),
                received_at_ms: 1,
            },
        )
    }

    #[test]
    fn deduplicates_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let out = s
                .insert_batch(&[item(1, 1), item(1, 2), item(1, 1)])
                .unwrap();
            assert_eq!(
                out,
                vec![
                    InsertOutcome::Inserted,
                    InsertOutcome::Inserted,
                    InsertOutcome::Duplicate
                ]
            );
            // Same id from another agent is a different report.
            assert_eq!(
                s.insert_batch(&[item(2, 1)]).unwrap(),
                vec![InsertOutcome::Inserted]
            );
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 3);
        let mut seen = 0;
        s.for_each(&mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 3);
    }
}
