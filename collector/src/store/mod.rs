//! Storage of raw signed reports, behind a small trait so the backend can be replaced
//! (sled embedded by default; a ClickHouse backend for deployments that outgrow one machine).
//!
//! The one rule every backend keeps: `insert_batch` returns only after the batch is durable, and
//! it deduplicates by (agent key, report id), so a report re-sent after a lost acknowledgement is
//! stored once.
//!
//! A store is an adapter: it keeps [`VerifiedReport`]s and the fine cells of
//! [`crate::domain`], and answers the domain's queries; what a cell, an observation or a query
//! is belongs to the domain, which imports no store.

pub mod clickhouse;
pub mod compress;
pub mod config;
pub mod copy;
pub mod group;
pub mod sled_store;

use crate::domain::events::EvidenceBook;
use crate::domain::{Axis, Cell, CorruptRecord, Filter, Policy, StoredReport, VerifiedReport};

pub use clickhouse::ClickHouseStore;
pub use copy::{copy_reports, CopyProgress};
pub use sled_store::{RollUpStats, SledStore, TreeSize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    Duplicate,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Backend(String),
    #[error("stored record {key} is corrupt: {what}")]
    Corrupt { key: String, what: String },
}

impl From<CorruptRecord> for StoreError {
    fn from(c: CorruptRecord) -> Self {
        StoreError::Corrupt {
            key: c.key,
            what: c.what,
        }
    }
}

/// Durable, deduplicating storage of raw reports.
pub trait ReportStore: Send + Sync {
    /// Inserts each report unless its key is already stored; returns one outcome per report, in
    /// order, after the whole batch is durable.
    fn insert_batch(&self, batch: &[VerifiedReport]) -> Result<Vec<InsertOutcome>, StoreError>;

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
    /// [`crate::domain`]).
    fn aggregate(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError>;

    /// Adds the events' evidence of hours `[from, to)` to `book`: per hour, country, ASN and
    /// platform, the platform arms of both stream kinds after the caps (the same fine cells the
    /// aggregates merge).
    fn evidence(
        &self,
        from: i64,
        to: i64,
        policy: &Policy,
        book: &mut EvidenceBook,
    ) -> Result<(), StoreError>;

    /// Brings the store's published roll-ups (if it keeps any) up to date for `policy`'s k,
    /// for the UTC days before the one of `now_ms`; the collector calls it every minute.
    /// Queries are exact whether or not it ran; it makes them cheaper.
    fn roll_up(&self, _policy: &Policy, _now_ms: i64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Number of stored reports.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
