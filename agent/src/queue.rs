//! The store-and-forward queue: signed reports wait here, on disk, until the collector has
//! acknowledged them. A report leaves only by [`Queue::remove`], which the uploader calls with
//! the acknowledged entries.

use anyhow::{Context, Result};
use callwatch_proto::SignedReport;
use std::path::Path;

pub struct Queue {
    db: sled::Db,
    reports: sled::Tree,
    corrupt: sled::Tree,
}

impl Queue {
    pub fn open(dir: &Path) -> Result<Queue> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = sled::open(dir).with_context(|| format!("opening queue {}", dir.display()))?;
        let reports = db.open_tree("reports")?;
        let corrupt = db.open_tree("corrupt")?;
        Ok(Queue {
            db,
            reports,
            corrupt,
        })
    }

    /// Appends a report; durable when this returns.
    pub fn push(&self, report: &SignedReport) -> Result<u64> {
        let id = self.db.generate_id()?;
        let value = postcard::to_allocvec(report).context("encoding report for the queue")?;
        self.reports.insert(id.to_be_bytes(), value)?;
        self.db.flush().context("flushing the queue")?;
        Ok(id)
    }

    /// Up to `n` oldest reports with their queue ids. An entry that no longer decodes is moved
    /// aside (kept, counted in [`Queue::corrupt_len`]) instead of blocking the queue forever.
    pub fn oldest(&self, n: usize) -> Result<Vec<(u64, SignedReport)>> {
        let mut out = Vec::with_capacity(n);
        for item in self.reports.iter() {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            match postcard::from_bytes::<SignedReport>(&v) {
                Ok(r) => out.push((id, r)),
                Err(e) => {
                    tracing::warn!("queue entry {id} is corrupt ({e}); moved aside");
                    self.corrupt.insert(&k, v.clone())?;
                    self.reports.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes acknowledged reports; durable when this returns.
    pub fn remove(&self, ids: &[u64]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes());
        }
        self.reports.apply_batch(batch)?;
        self.db.flush().context("flushing the queue")?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    pub fn corrupt_len(&self) -> usize {
        self.corrupt.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: u8) -> SignedReport {
        SignedReport {
            body: vec![n],
            key: vec![1; 32],
            signature: vec![2; 64],
        }
    }

    #[test]
    fn fifo_survives_reopen_and_removes_only_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = {
            let q = Queue::open(dir.path()).unwrap();
            (0..5).map(|n| q.push(&report(n)).unwrap()).collect()
        };
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.len(), 5);
        let first = q.oldest(2).unwrap();
        assert_eq!(
            first.iter().map(|(_, r)| r.body[0]).collect::<Vec<_>>(),
            vec![0, 1]
        );
        q.remove(&[ids[0], ids[1]]).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q.oldest(10).unwrap()[0].1.body, vec![2]);
    }
}
