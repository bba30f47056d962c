//! Storage of raw signed reports, behind a small trait so the backend can be replaced
//! (sled embedded by default; a ClickHouse backend for deployments that outgrow one machine).
//!
//! The one rule every backend keeps: `insert_batch` returns only after the batch is durable, and
//! it deduplicates by (agent key, report id), so a report re-sent after a lost acknowledgement is
//! stored once.

pub mod clickhouse;
pub mod config;
pub mod sled_store;

use crate::aggregate::{Axis, Cell, Filter, Policy};
use crate::geo::Region;
use callwatch_proto::{ReportId, SignedReport};
use serde::{Deserialize, Serialize};

pub use clickhouse::ClickHouseStore;
pub use sled_store::SledStore;

/// A verified report as stored: the exact signed bytes, the region its sender mapped to, and when
/// it arrived. Never an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    pub signed: SignedReport,
    pub region: Region,
    /// Unix milliseconds when the collector received it.
    pub received_at_ms: i64,
}

/// A report's identity for deduplication: the agent's key and the id it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportKey {
    pub agent: [u8; 32],
    pub id: ReportId,
}

impl ReportKey {
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut k = [0u8; 48];
        k[..32].copy_from_slice(&self.agent);
        k[32..].copy_from_slice(&self.id.0);
        k
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Backend(String),
    #[error("stored record {key} is corrupt: {what}")]
    Corrupt { key: String, what: String },
}

/// Durable, deduplicating storage of raw reports.
pub trait ReportStore: Send + Sync {
    /// Inserts each report unless its key is already stored; returns one outcome per report, in
    /// order, after the whole batch is durable.
    fn insert_batch(
        &self,
        batch: &[(ReportKey, StoredReport)],
    ) -> Result<Vec<InsertOutcome>, StoreError>;

    /// Calls `f` for every stored report, in key order. Stops at the first error (a corrupt
    /// record is an error, never silently skipped).
    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Calls `f` for every report received at or after `since_ms` (Unix ms), in order of
    /// arrival, until `f` returns `Ok(false)` or the reports run out.
    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;

    /// The published cells for a query, from the incrementally kept aggregate (see
    /// [`crate::aggregate`]).
    fn aggregate(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError>;

    /// Number of stored reports.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
