//! `export-queue`: the queued signed reports, sealed to the collector's carry-out key in a file a
//! volunteer can carry past a block (`callwatch_proto::carry` has the format;
//! `callwatch-collector import` reads it).
//!
//! Exporting removes nothing: a report leaves the queue only when the collector acknowledges it.
//! A report that was carried out and imported is acknowledged as a duplicate at the next upload
//! that gets through, and only then leaves; nothing acknowledged is lost, and nothing is stored
//! twice (the collector keeps one copy per agent key and report id).

use crate::config::Config;
use crate::queue::Queue;
use crate::state::AgentState;
use anyhow::{Context, Result};
use callwatch_proto::carry::{CarryKey, Sealer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where the collector's carry-out key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `collector_seal_key` in the config.
    Config,
    /// Sent by the collector over the pinned upload channel (kept in the state file).
    Collector,
}

/// The carry-out key to seal to: the config's, else the one the collector sent.
pub fn seal_key(cfg: &Config) -> Result<(CarryKey, KeySource)> {
    if let Some(key) = cfg.collector_seal_key {
        return Ok((key, KeySource::Config));
    }
    let state = AgentState::load(&cfg.state_path())?;
    match state.collector_seal_key {
        Some(hex) => {
            let key = hex
                .parse()
                .map_err(|e| anyhow::anyhow!("the state file's collector_seal_key: {e}"))?;
            Ok((key, KeySource::Collector))
        }
        None => anyhow::bail!(
            "the collector's carry-out key is not known yet: it comes with the first upload that \
             reaches the collector, or set collector_seal_key in the config to the 64 hex digits \
             of the collector's collector.seal.pub (its operator publishes it)"
        ),
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exported {
    pub reports: usize,
    pub key: CarryKey,
    pub source: KeySource,
}

/// Writes every queued report to `file`, sealed to the collector's carry-out key, owner-only
/// (0600). An existing `file` is replaced only with `force`. The queue is left as it was.
/// `Ok(None)`: the queue is empty and nothing was written.
pub fn export_queue(cfg: &Config, file: &Path, force: bool) -> Result<Option<Exported>> {
    let (key, source) = seal_key(cfg)?;
    if file.exists() && !force {
        anyhow::bail!("{} exists; pass --force to replace it", file.display());
    }
    let queue = Queue::open(&cfg.queue_dir).map_err(|e| {
        if format!("{e:#}").contains("lock") {
            anyhow::anyhow!(
                "{e:#} (the agent is running and holds its queue; stop it, export, and start it \
                 again)"
            )
        } else {
            e
        }
    })?;
    let reports = queue.oldest(queue.len())?;
    if reports.is_empty() {
        return Ok(None);
    }
    let mut ephemeral = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut ephemeral[..]);
    let mut sealer = Sealer::new(&key, ephemeral, reports.len() as u64)
        .map_err(|e| anyhow::anyhow!("the collector's carry-out key {key}: {e}"))?;
    // Written beside the target and renamed over it: a file is whole or absent.
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(sealer.header().as_bytes())?;
        for (_, report) in &reports {
            let line = sealer
                .line(report)
                .context("a queued report does not encode")?;
            w.write_all(line.as_bytes())?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", file.display())));
    }
    std::fs::rename(&tmp, file).with_context(|| format!("installing {}", file.display()))?;
    Ok(Some(Exported {
        reports: reports.len(),
        key,
        source,
    }))
}
