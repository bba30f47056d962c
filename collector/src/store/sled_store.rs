//! The embedded default store: reports keyed by agent key ‖ report id, and an index by arrival
//! time (received ms ‖ report key) for paging exports. Both are written in one transaction.

use super::{InsertOutcome, ReportKey, ReportStore, StoreError, StoredReport};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    reports: sled::Tree,
    by_time: sled::Tree,
}

/// Index key: arrival time (big-endian, offset so that order is numeric order) ‖ report key.
fn time_key(received_at_ms: i64, key: &ReportKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(56);
    k.extend_from_slice(&((received_at_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&key.to_bytes());
    k
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
        let by_time = db.open_tree("by_time").map_err(backend)?;
        Ok(SledStore {
            db,
            reports,
            by_time,
        })
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
            // Insert-if-absent and the time index in one transaction: two connections racing
            // with the same report store it once, and the index never lacks a stored report.
            let id = key.to_bytes();
            let index = time_key(report.received_at_ms, key);
            let result = (&self.reports, &self.by_time).transaction(|(reports, by_time)| {
                if reports.get(id)?.is_some() {
                    return Ok(InsertOutcome::Duplicate);
                }
                reports.insert(&id[..], value.as_slice())?;
                by_time.insert(index.as_slice(), &[][..])?;
                Ok::<_, ConflictableTransactionError<()>>(InsertOutcome::Inserted)
            });
            let outcome = match result {
                Ok(o) => o,
                Err(TransactionError::Storage(e)) => return Err(backend(e)),
                Err(TransactionError::Abort(())) => {
                    return Err(StoreError::Backend("insert aborted".into()))
                }
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

    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let start = ((since_ms as u64) ^ (1 << 63)).to_be_bytes();
        for item in self.by_time.range(start..) {
            let (k, _) = item.map_err(backend)?;
            let Some(report_key) = k.get(8..) else {
                return Err(StoreError::Corrupt {
                    key: hex::encode(&k),
                    what: "time index key too short".into(),
                });
            };
            let v = self
                .reports
                .get(report_key)
                .map_err(backend)?
                .ok_or_else(|| StoreError::Corrupt {
                    key: hex::encode(report_key),
                    what: "indexed report is missing".into(),
                })?;
            let report: StoredReport =
                postcard::from_bytes(&v).map_err(|e| StoreError::Corrupt {
                    key: hex::encode(report_key),
                    what: e.to_string(),
                })?;
            if !f(report)? {
                break;
            }
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
        let mut in_order = vec![];
        s.for_each_since(i64::MIN, &mut |r| {
            in_order.push(r.signed.key[0]);
            Ok(true)
        })
        .unwrap();
        assert_eq!(in_order.len(), 3, "every stored report is indexed once");
        let mut seen = 0;
        s.for_each(&mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 3);
    }
}
