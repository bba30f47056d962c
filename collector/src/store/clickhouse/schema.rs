//! The `reports` table: its columns, the ones added later with the defaults old rows read, and
//! the migration that creates or extends it at open (see the store's module documentation).

use super::client::{lit, Http};
use crate::domain::FIGURE_COUNT;
use crate::store::StoreError;

/// The columns of `reports`, in order, with their types (checked at open).
pub const COLUMNS: [(&str, &str); 24] = [
    ("agent", "String"),
    ("id", "String"),
    ("ver", "UInt64"),
    ("received_at_ms", "Int64"),
    ("arrival", "UInt64"),
    ("started_at_ms", "Int64"),
    ("started_date", "Date"),
    ("hour", "Int64"),
    ("country", "String"),
    ("cc", "FixedString(2)"),
    ("asn", "UInt32"),
    ("platform", "UInt8"),
    ("verdict", "Int8"),
    ("body", "String"),
    ("signature", "String"),
    ("arm", "Array(UInt8)"),
    ("rtt", "Array(Nullable(Float64))"),
    ("jitter_up", "Array(Nullable(Float64))"),
    ("jitter_down", "Array(Nullable(Float64))"),
    ("loss_up", "Array(Nullable(Float64))"),
    ("loss_down", "Array(Nullable(Float64))"),
    ("mos", "Array(Nullable(Float64))"),
    ("stalls", "Array(Nullable(Float64))"),
    ("key", "String"),
];

/// Columns added to `reports` after [`COLUMNS`]: (name, type, default for rows stored before
/// the column existed). The defaults read old rows' signed bodies (see the module
/// documentation); every insert sets the columns itself.
pub const ADDED_COLUMNS: [(&str, &str, &str); 9] = [
    (
        "kind",
        "UInt8",
        "if(visitParamExtractString(body, 'stream_kind') = 'video', 1, 0)",
    ),
    ("rule", "String", "visitParamExtractString(body, 'rule')"),
    (
        "loss",
        "Array(Nullable(Float64))",
        "arrayMap(x -> CAST(NULL, 'Nullable(Float64)'), arm)",
    ),
    ("region_source", "UInt8", "0"),
    ("uploaded_elsewhere", "UInt8", "0"),
    ("hosting", "UInt8", "0"),
    ("prefix_from", "UInt8", "0"),
    ("prefix_tag", "String", "''"),
    ("subdivision", "String", "''"),
];

/// The figure columns, in [`crate::domain::FIGURES`] order.
pub const FIGURE_COLUMNS: [&str; FIGURE_COUNT] = [
    "rtt",
    "jitter_up",
    "jitter_down",
    "loss",
    "loss_up",
    "loss_down",
    "mos",
    "stalls",
];

/// The sorting key of a table made now: the report's identity, its test's UTC day first (a
/// function of the signed body, so every copy of a report has the same), so that one day's
/// rows are one range of the primary key — the aggregate mirror reads a day, and the
/// pre-insert check looks up keys, without scanning the day's whole month.
pub const SORTING_KEY: &str = "(started_date, agent, id)";

/// The sorting key of tables made before [`SORTING_KEY`]: read and written the same, but each
/// day's read scans its month.
pub const OLD_SORTING_KEY: &str = "agent, id";

/// Creates the database and `reports` when missing; adds the columns a table from before
/// [`ADDED_COLUMNS`] lacks; refuses a table that is not ours.
pub fn migrate(http: &Http, db: &str) -> Result<(), StoreError> {
    http.text(&format!("CREATE DATABASE IF NOT EXISTS {db}"))?;
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, ty)| format!("{name} {ty}"))
        .chain(
            ADDED_COLUMNS
                .iter()
                .map(|(name, ty, default)| format!("{name} {ty} DEFAULT {default}")),
        )
        .collect();
    http.text(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.reports ({}) \
         ENGINE = ReplacingMergeTree(ver) PARTITION BY toYYYYMM(started_date) \
         ORDER BY {SORTING_KEY}",
        columns.join(", ")
    ))?;
    let columns = || -> Result<Vec<(String, String)>, StoreError> {
        let text = http.text(&format!(
            "SELECT name, type FROM system.columns WHERE database = {} AND \
             table = 'reports' FORMAT TabSeparated",
            lit(db)
        ))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect())
    };
    let has = |found: &[(String, String)], (name, ty): (&str, &str)| {
        found.iter().any(|(n, t)| n == name && t == ty)
    };
    let lacking = |found: &[(String, String)], wanted: &mut dyn Iterator<Item = (&str, &str)>| {
        let missing: Vec<String> = wanted
            .filter(|c| !has(found, *c))
            .map(|(n, t)| format!("{n} {t}"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "table {db}.reports exists but lacks columns {}; it was made by another \
                 program or version — use another database",
                missing.join(", ")
            )))
        }
    };
    let mut found = columns()?;
    lacking(&found, &mut COLUMNS.iter().copied())?;
    // A table from before the added columns gets them. ClickHouse 18 has no
    // `ADD COLUMN IF NOT EXISTS`: another collector may add one at the same moment, so a
    // failure counts only if the column is still missing afterwards.
    let mut added_any = false;
    for (name, ty, default) in ADDED_COLUMNS {
        if found.iter().any(|(n, _)| n == name) {
            continue;
        }
        let alter = format!("ALTER TABLE {db}.reports ADD COLUMN {name} {ty} DEFAULT {default}");
        if let Err(e) = http.text(&alter) {
            tracing::debug!("adding column {name}: {e}");
        }
        added_any = true;
    }
    if added_any {
        found = columns()?;
        tracing::info!("table {db}.reports: added the columns it lacked");
    }
    lacking(&found, &mut ADDED_COLUMNS.iter().map(|(n, t, _)| (*n, *t)))?;
    let key = http.text(&format!(
        "SELECT sorting_key FROM system.tables WHERE database = {} AND name = 'reports' \
         FORMAT TabSeparated",
        lit(db)
    ))?;
    if key.trim() == OLD_SORTING_KEY {
        tracing::info!(
            "table {db}.reports is sorted by ({OLD_SORTING_KEY}), as made before this release: \
             it works, but every day the aggregate mirror reads scans that day's month; \
             docs/DEPLOYMENT.md says how to copy it into a table sorted by {SORTING_KEY}"
        );
    }
    Ok(())
}
