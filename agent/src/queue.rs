//! The store-and-forward queue: signed reports wait here, on disk, until the collector has
//! acknowledged them. A report leaves only by [`Queue::remove`], which the uploader calls with
//! the acknowledged entries.

use anyhow::{Context, Result};
use callwatch_proto::upload::QueuedReport;
use callwatch_proto::SignedReport;
use std::path::Path;

/// Whether `e` comes from a full disk (ENOSPC), however sled wrapped it: sled keeps the
/// `io::ErrorKind` of a write error but may re-create the error (losing the OS code).
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    let io_full = |io: &std::io::Error| {
        io.raw_os_error() == Some(libc::ENOSPC)
            || io.kind() == std::io::ErrorKind::StorageFull
            || io.to_string().contains("No space left on device")
    };
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io_full(io);
        }
        if let Some(sled::Error::Io(io)) = c.downcast_ref::<sled::Error>() {
            return io_full(io);
        }
        c.to_string().contains("No space left on device")
    })
}

pub struct Queue {
    db: sled::Db,
    reports: sled::Tree,
    corrupt: sled::Tree,
    meta: sled::Tree,
    dir: std::path::PathBuf,
    /// Entries known to be in `reports` and `corrupt` together; held across every change, so
    /// the recorded count ([`COUNT_FILE`]) follows the trees in order.
    len: std::sync::Mutex<usize>,
}

const DROPPED_KEY: &[u8] = b"dropped_total";
/// File in the queue folder holding a lower bound on the entries the queue holds (waiting and
/// moved aside). Raised after an append is durable, lowered (and synced) before a removal is
/// applied, so it never exceeds what is on disk; a queue that opens with fewer entries than it
/// says lost some to damage, and is refused as damaged rather than opened short.
const COUNT_FILE: &str = "callwatch-queue-count";

fn read_count(dir: &Path) -> Option<usize> {
    std::fs::read_to_string(dir.join(COUNT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Raises the recorded count to `n` after an append is durable. Best effort: a record left
/// lower (a full disk) only weakens the check, it never makes a sound queue look damaged.
fn raise_count(dir: &Path, n: usize) {
    if let Err(e) = write_count(dir, n) {
        tracing::warn!("the queue's count was not recorded: {e:#}");
    }
}

/// Writes `n` as the recorded count, durably (temporary file, sync, rename).
fn write_count(dir: &Path, n: usize) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{COUNT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("recording the queue's count in {}", dir.display()))?;
    f.write_all(n.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(COUNT_FILE))
        .with_context(|| format!("recording the queue's count in {}", dir.display()))?;
    Ok(())
}

impl Queue {
    pub fn open(dir: &Path) -> Result<Queue> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // Every change is flushed explicitly before it is reported done, so sled's background
        // flusher (a wake-up every 500 ms) has nothing to add: off, for an idle agent that
        // really idles.
        // sled panics on some damaged files instead of returning an error; that becomes an
        // error naming the folder, so the agent says what is wrong instead of crashing.
        let opened = std::panic::catch_unwind(|| -> sled::Result<Queue> {
            let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
            let reports = db.open_tree("reports")?;
            let corrupt = db.open_tree("corrupt")?;
            let meta = db.open_tree("meta")?;
            Ok(Queue {
                db,
                reports,
                corrupt,
                meta,
                dir: dir.to_path_buf(),
                len: std::sync::Mutex::new(0),
            })
        });
        let queue = match opened {
            Ok(queue) => queue.with_context(|| format!("opening queue {}", dir.display()))?,
            Err(_) => anyhow::bail!(
                "the queue in {} is damaged (sled could not read it); move the folder aside to \
                 start with an empty queue",
                dir.display()
            ),
        };
        let held = count(&queue.reports) + count(&queue.corrupt);
        if let Some(recorded) = read_count(dir).filter(|r| *r > held) {
            anyhow::bail!(
                "the queue in {} is damaged: it held at least {recorded} reports and {held} can \
                 be read; move the folder aside to start with an empty queue (keep the copy: \
                 the reports that can be read are still in it)",
                dir.display()
            );
        }
        raise_count(dir, held);
        *queue.len.lock().unwrap_or_else(|e| e.into_inner()) = held;
        Ok(queue)
    }

    /// Appends a report without a path token; durable when this returns.
    pub fn push(&self, report: &SignedReport) -> Result<u64> {
        self.push_queued(&QueuedReport::bare(report.clone()))
    }

    /// Appends a report with its path token, if any; durable when this returns.
    pub fn push_queued(&self, report: &QueuedReport) -> Result<u64> {
        let mut len = self.len.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.db.generate_id()?;
        let value = report.to_bytes().context("encoding report for the queue")?;
        self.reports.insert(id.to_be_bytes(), value)?;
        self.db.flush().context("flushing the queue")?;
        *len += 1;
        raise_count(&self.dir, *len);
        Ok(id)
    }

    /// Appends a report, then drops the oldest while more than `cap` wait; returns how many
    /// were dropped (also added to [`Queue::dropped_total`]). Durable when this returns.
    pub fn push_bounded(&self, report: &QueuedReport, cap: usize) -> Result<usize> {
        self.push_queued(report)?;
        let mut len = self.len.lock().unwrap_or_else(|e| e.into_inner());
        let mut over = count(&self.reports).saturating_sub(cap.max(1));
        if over > 0 {
            // Lowered before the entries go: the record never exceeds what is on disk. If it
            // cannot be (a full disk), nothing is dropped this time: one report over the cap
            // is better than a record that would call a sound queue damaged.
            if let Err(e) = write_count(&self.dir, len.saturating_sub(over)) {
                tracing::warn!("the queue stays over its cap for now: {e:#}");
                over = 0;
            }
        }
        let mut dropped = 0usize;
        for _ in 0..over {
            match self.reports.pop_min()? {
                Some(_) => dropped += 1,
                None => break,
            }
        }
        *len = len.saturating_sub(dropped);
        if dropped > 0 {
            let total = self.dropped_total() + dropped as u64;
            self.meta.insert(DROPPED_KEY, &total.to_be_bytes())?;
            self.db.flush().context("flushing the queue")?;
        }
        Ok(dropped)
    }

    /// Reports dropped because the queue was full, over the queue's life.
    pub fn dropped_total(&self) -> u64 {
        self.meta
            .get(DROPPED_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    }

    /// Up to `n` oldest reports with their queue ids. An entry that no longer decodes is moved
    /// aside (kept, counted in [`Queue::corrupt_len`]) instead of blocking the queue forever.
    pub fn oldest(&self, n: usize) -> Result<Vec<(u64, QueuedReport)>> {
        self.oldest_after(None, n)
    }

    /// Like [`Queue::oldest`], but only entries queued after entry `after` (all when `None`):
    /// how an upload pass moves past reports it keeps (deferred by the collector).
    pub fn oldest_after(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, QueuedReport)>> {
        let mut out = Vec::with_capacity(n);
        let from = match after {
            Some(id) => match id.checked_add(1) {
                Some(next) => std::ops::Bound::Included(next.to_be_bytes()),
                None => return Ok(out),
            },
            None => std::ops::Bound::Unbounded,
        };
        for item in self
            .reports
            .range::<[u8; 8], _>((from, std::ops::Bound::Unbounded))
        {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            match QueuedReport::from_bytes(&v) {
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
        let mut len = self.len.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        let mut present = 0usize;
        for id in ids {
            present += usize::from(self.reports.contains_key(id.to_be_bytes())?);
            batch.remove(&id.to_be_bytes());
        }
        // Lowered before the entries go: the record never exceeds what is on disk.
        let after = len.saturating_sub(present);
        write_count(&self.dir, after)?;
        self.reports.apply_batch(batch)?;
        self.db.flush().context("flushing the queue")?;
        *len = after;
        Ok(())
    }

    pub fn len(&self) -> usize {
        count(&self.reports)
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    pub fn corrupt_len(&self) -> usize {
        count(&self.corrupt)
    }
}

/// Entries in `tree`, counted up to the first one that cannot be read (logged). sled's own
/// `Tree::len` is not used: on a damaged page its iterator yields the same error again and
/// again, so `len` never returns and the agent would spin at full CPU.
fn count(tree: &sled::Tree) -> usize {
    let mut n = 0;
    for item in tree.iter().keys() {
        if let Err(e) = item {
            tracing::warn!("the queue is damaged after {n} entries: {e}");
            break;
        }
        n += 1;
    }
    n
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
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let mut dropped = 0;
        for n in 0..7 {
            dropped += q.push_bounded(&QueuedReport::bare(report(n)), 4).unwrap();
        }
        assert_eq!(dropped, 3);
        assert_eq!(q.len(), 4);
        let left: Vec<u8> = q
            .oldest(10)
            .unwrap()
            .iter()
            .map(|(_, r)| r.report.body[0])
            .collect();
        assert_eq!(left, vec![3, 4, 5, 6], "the oldest went first");
        drop(q);
        assert_eq!(Queue::open(dir.path()).unwrap().dropped_total(), 3);
    }

    /// The body of the `n`th report [`a_damaged_queue_is_an_error_naming_its_folder_or_reads_intact`]
    /// queues (2 kB, so 300 of them span many of sled's pages).
    fn big_body(n: u32) -> Vec<u8> {
        n.to_be_bytes().repeat(500)
    }

    /// What a damaged queue gave: an error (its text, with causes), or what it read.
    enum Damaged {
        Error(String),
        Read {
            len: usize,
            aside: usize,
            bodies: Vec<Vec<u8>>,
        },
    }

    /// RELIABILITY.md, "Damage is reported": a damaged queue is an error naming the folder to
    /// move aside, never a panic or a hang; what it still reads is what was queued. 8 KiB of
    /// junk at each tenth of sled's log, each copy opened, counted and read on a thread of its
    /// own (bounded: a hang fails the test instead of stalling it).
    #[test]
    fn a_damaged_queue_is_an_error_naming_its_folder_or_reads_intact() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path()).unwrap();
            for n in 0..300u32 {
                let mut r = report(0);
                r.body = big_body(n);
                q.push(&r).unwrap();
            }
        }
        let originals: Vec<Vec<u8>> = (0..300).map(big_body).collect();
        let len = std::fs::metadata(dir.path().join("db")).unwrap().len();
        let (mut errors, mut short) = (0, Vec::new());
        for tenth in 1..10 {
            let copy = tempfile::tempdir().unwrap();
            for f in ["conf", "db", COUNT_FILE] {
                std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
            }
            {
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(copy.path().join("db"))
                    .unwrap();
                f.seek(SeekFrom::Start(len * tenth / 10)).unwrap();
                f.write_all(&[0xA5; 8192]).unwrap();
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let path = copy.path().to_path_buf();
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| {
                    let q = match Queue::open(&path) {
                        Ok(q) => q,
                        Err(e) => return Damaged::Error(format!("{e:#}")),
                    };
                    let len = q.len();
                    match q.oldest(1000) {
                        Ok(v) => Damaged::Read {
                            len,
                            aside: q.corrupt_len(),
                            bodies: v.into_iter().map(|(_, r)| r.report.body).collect(),
                        },
                        Err(e) => Damaged::Error(format!("{e:#}")),
                    }
                });
                let _ = tx.send(r);
            });
            let outcome = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("at {tenth}/10 the queue hung"))
                .unwrap_or_else(|_| panic!("at {tenth}/10 the queue panicked"));
            match &outcome {
                Damaged::Error(e) => eprintln!("at {tenth}/10: error: {e}"),
                Damaged::Read { len, bodies, .. } => {
                    eprintln!("at {tenth}/10: {len} counted, {} read", bodies.len())
                }
            }
            match outcome {
                Damaged::Error(e) => {
                    errors += 1;
                    let folder = copy.path().display().to_string();
                    assert!(
                        e.contains(&folder)
                            && e.contains("damaged")
                            && e.contains("move the folder aside"),
                        "at {tenth}/10 the error does not name the folder to move aside: {e}"
                    );
                }
                Damaged::Read { len, aside, bodies } => {
                    // Counted up to the first unreadable entry at most; every report read is
                    // one that was queued, intact, oldest first, none twice.
                    assert!(len <= 300, "at {tenth}/10: {len} counted");
                    assert!(
                        bodies.len() <= len,
                        "at {tenth}/10: read {} of {len}",
                        bodies.len()
                    );
                    let positions: Vec<usize> = bodies
                        .iter()
                        .map(|b| {
                            originals.iter().position(|o| o == b).unwrap_or_else(|| {
                                panic!("at {tenth}/10 a report that was never queued")
                            })
                        })
                        .collect();
                    assert!(
                        positions.windows(2).all(|w| w[0] < w[1]),
                        "at {tenth}/10 out of order or twice: {positions:?}"
                    );
                    // Nothing lost without a word: a queue that opens holds every report,
                    // read or moved aside (counted), or it is refused by its recorded count.
                    if bodies.len() + aside < 300 {
                        short.push((tenth, len, aside));
                    }
                }
            }
        }
        assert!(errors > 0, "some overwrite hits live data");
        assert!(
            short.is_empty(),
            "queues that opened short without an error (tenth, counted, aside): {short:?}"
        );
    }

    #[test]
    fn a_queue_that_lost_entries_since_it_last_counted_them_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path()).unwrap();
            for n in 0..3 {
                q.push(&report(n)).unwrap();
            }
            let first = q.oldest(1).unwrap()[0].0;
            q.remove(&[first]).unwrap();
            // Acknowledged and removed: the record follows, and reopening is fine.
            assert_eq!(read_count(dir.path()), Some(2));
            // Gone behind the queue's back, as when sled cuts a damaged log short.
            let id = q.oldest(1).unwrap()[0].0;
            q.reports.remove(id.to_be_bytes()).unwrap();
            q.db.flush().unwrap();
        }
        let e = format!("{:#}", Queue::open(dir.path()).err().expect("refused"));
        assert!(
            e.contains("damaged")
                && e.contains("at least 2 reports and 1 can be read")
                && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        // A queue from before the record opens, and is counted from then on.
        std::fs::remove_file(dir.path().join(COUNT_FILE)).unwrap();
        assert_eq!(Queue::open(dir.path()).unwrap().len(), 1);
        assert_eq!(read_count(dir.path()), Some(1));
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
            first
                .iter()
                .map(|(_, r)| r.report.body[0])
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
        q.remove(&[ids[0], ids[1]]).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q.oldest(10).unwrap()[0].1.report.body, vec![2]);
    }

    #[test]
    fn path_tokens_survive_the_queue_and_entries_of_the_last_release_read_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let with = QueuedReport {
            report: report(1),
            path_token: Some([7; callwatch_proto::pathtoken::PATH_TOKEN_LEN]),
        };
        q.push_queued(&with).unwrap();
        // An entry as the last release wrote it: the signed report alone.
        let id = q.db.generate_id().unwrap();
        q.reports
            .insert(id.to_be_bytes(), postcard::to_allocvec(&report(2)).unwrap())
            .unwrap();
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        let got: Vec<QueuedReport> = q.oldest(10).unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, vec![with, QueuedReport::bare(report(2))]);
        assert_eq!(q.corrupt_len(), 0);
    }
}
