//! Mergeable quantile sketch with a relative-error guarantee, after DDSketch
//! (C. Masson, J. E. Rim, H. K. Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch
//! with Relative-Error Guarantees", PVLDB 12(12), 2019).
//!
//! The collector keeps one [`Sketch`] per cell and metric (RTT ms, jitter ms, loss fraction,
//! MOS, stall counts), adds values at ingest and merges cells when it rolls them up.
//!
//! # Error guarantee
//!
//! With α = [`RELATIVE_ACCURACY`] and γ = (1+α)/(1−α), a value `v` with `|v| ≥`
//! [`MIN_INDEXABLE`] falls into bin `i = ceil(ln|v| / ln γ)`, i.e. `γ^(i−1) < |v| ≤ γ^i`, and
//! the bin reports `±2·γ^i/(γ+1)`, which is within `α·|v|` of every value in the bin. Because the
//! bins are ordered like the values, [`Sketch::quantile`] finds the bin holding the value `x` of
//! rank `floor(q·(n−1))` and returns an estimate `x̂` with
//!
//! * `|x̂ − x| ≤ α·|x|` when `|x| ≥ MIN_INDEXABLE` (up to floating-point rounding, ~1e-15
//!   relative);
//! * `|x̂ − x| < MIN_INDEXABLE` otherwise (such values are kept in a zero bucket and reported
//!   as 0).
//!
//! The exact min and max are kept alongside the bins: the lowest and highest ranks (so
//! `quantile(0)` and `quantile(1)`) return them exactly, and other estimates are clamped into
//! `[min, max]`, which never moves them away from the true value.
//!
//! # Collapsing
//!
//! Each sign keeps at most [`MAX_BINS`] bins (the positive store covers `[1e-6, 1e300]` with
//! a third of that at α = 1%, so real metrics never collapse). Beyond that the bins holding the
//! *lowest values* of that sign are folded into one — DDSketch's "collapsing lowest" store: for
//! positive values the lowest bin indices, for negative values (stored by magnitude) the
//! highest-magnitude indices. Collapsed values are only ever over-estimated, and every quantile
//! whose true value lies above the collapsed range — in particular the high quantiles — stays
//! α-accurate. The collapsed state depends only on the multiset of values added, so
//! [`Sketch::merge`] stays exact, commutative and associative even after a collapse.
//!
//! # Storage
//!
//! Bins are sparse sorted `(index, count)` vectors. The serde form (meant for `postcard`) stores
//! each index as the gap from the previous one, so a bin costs two or three bytes and an empty
//! sketch four. Deserialisation validates every invariant (strictly increasing in-range indices,
//! non-zero counts, at most `MAX_BINS` bins, finite ordered min/max present iff non-empty) and
//! rejects anything else, so a deserialised sketch is always well-formed. Equal sketches
//! serialise to equal bytes.
//!
//! # Why not a crate
//!
//! This is one of the few places callwatch keeps its own code where a crate exists
//! (`sketches-ddsketch`): stored cells are read back from disk that may be damaged, so the
//! decoder must check every invariant and refuse the rest, equal sketches must give equal
//! bytes, and a merge must stay exact after collapsing — none of which that crate's serde form
//! (derived, unchecked) or its collapsing promises.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Relative accuracy α: every quantile estimate x̂ of a true value x satisfies |x̂ − x| ≤ α·|x|.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Values with |v| below this go to the zero bucket and are reported as 0.
pub const MIN_INDEXABLE: f64 = 1e-6;
/// Bins kept per sign before the lowest are collapsed (keeps a sketch bounded).
pub const MAX_BINS: usize = 2048;

/// γ = (1+α)/(1−α): consecutive bin boundaries differ by this factor.
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
/// Bin index of [`MIN_INDEXABLE`], the lowest index a bin can have.
const MIN_KEY: i32 = -690;
/// Bin index of `f64::MAX`, the highest index a bin can have.
const MAX_KEY: i32 = 35_488;

/// One sparse store: `(bin index, count)` sorted by strictly increasing index, counts > 0,
/// indices in `MIN_KEY..=MAX_KEY`, at most `MAX_BINS` entries.
type Bins = Vec<(i32, u64)>;

/// A mergeable quantile sketch with relative accuracy [`RELATIVE_ACCURACY`] (see the module
/// documentation for the exact guarantee).
///
/// Equality compares bins, zero bucket, count and exact min/max, so two sketches are equal
/// exactly when they were fed the same values up to bin resolution and have the same extremes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct Sketch {
    /// Positive values by bin index of `v`.
    pos: Bins,
    /// Negative values by bin index of `|v|`.
    neg: Bins,
    /// Values with `|v| < MIN_INDEXABLE`.
    zero: u64,
    /// Total count: `zero` plus all bin counts (saturating).
    count: u64,
    /// Exact `(min, max)`; `Some` iff `count > 0`, both finite, `min <= max`.
    range: Option<(f64, f64)>,
}

impl Sketch {
    /// Creates an empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value; non-finite values are ignored (returns false), else true.
    ///
    /// Values with `|v| <` [`MIN_INDEXABLE`] are counted in the zero bucket; min/max are exact.
    pub fn add(&mut self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        let magnitude = v.abs();
        if magnitude < MIN_INDEXABLE {
            self.zero = self.zero.saturating_add(1);
        } else if v > 0.0 {
            insert(&mut self.pos, key(magnitude));
            collapse_low(&mut self.pos);
        } else {
            insert(&mut self.neg, key(magnitude));
            collapse_high(&mut self.neg);
        }
        self.count = self.count.saturating_add(1);
        self.range = Some(match self.range {
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
            None => (v, v),
        });
        true
    }

    /// Adds `other` into self: the result is exactly the sketch of both value sets (bin counts add).
    ///
    /// The result depends only on the combined values, so merging is exactly commutative and
    /// associative, and equals adding every value to a single sketch — also when bins collapse.
    pub fn merge(&mut self, other: &Sketch) {
        if other.is_empty() {
            return;
        }
        if !other.pos.is_empty() {
            merge_into(&mut self.pos, &other.pos);
            collapse_low(&mut self.pos);
        }
        if !other.neg.is_empty() {
            merge_into(&mut self.neg, &other.neg);
            collapse_high(&mut self.neg);
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.count = self.count.saturating_add(other.count);
        self.range = match (self.range, other.range) {
            (Some((a_lo, a_hi)), Some((b_lo, b_hi))) => Some((a_lo.min(b_lo), a_hi.max(b_hi))),
            (a, b) => a.or(b),
        };
    }

    /// Number of values added (non-finite values are not counted); saturates at `u64::MAX`.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True when no value has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The estimate of the value at rank floor(q·(n−1)) (0-based, values sorted ascending);
    /// None when empty or q outside \[0,1\] / NaN.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles([q]).map(|[v]| v)
    }

    /// [`Sketch::quantile`] of each of `qs`, in one walk over the bins when `qs` ascend (a
    /// published figure asks three of every sketch); None when empty or any `q` is outside
    /// \[0,1\] / NaN.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<[f64; N]> {
        if !qs.windows(2).all(|w| w[0] <= w[1]) {
            let mut out = [0.0; N];
            for (o, q) in out.iter_mut().zip(qs) {
                [*o] = self.quantiles([q])?;
            }
            return Some(out);
        }
        let (lo, hi) = self.range?;
        let mut ranks = [0u64; N];
        for (r, q) in ranks.iter_mut().zip(qs) {
            if !(0.0..=1.0).contains(&q) {
                return None;
            }
            *r = rank(q, self.count)?;
        }
        // The extremes are known exactly. Other ranks, in ascending value order (negatives by
        // decreasing magnitude, zeros, positives), take the value of the first bin whose running
        // count passes them, clamped into [lo, hi]. The walk notes each rank's bin as (sign,
        // index) — sign 0 for the zero bucket, whose index is not read — and the values are
        // computed after it, one `exp` per rank (the compiler may hoist a pure `exp` out of a
        // condition, which in the walk made it one per bin). Ranks past the end (only while
        // `count` is not the sum of the counts, never) keep `hi`, the right answer there.
        let mut found: [Option<(i8, i32)>; N] = [None; N];
        let mut next = 0;
        let mut seen: u64 = 0;
        let bins = (self.neg.iter().rev().map(|&(k, c)| (-1, k, c)))
            .chain(std::iter::once((0, MIN_KEY, self.zero)))
            .chain(self.pos.iter().map(|&(k, c)| (1, k, c)));
        for (sign, k, c) in bins {
            seen = seen.saturating_add(c);
            while next < N && seen > ranks[next] {
                found[next] = Some((sign, k));
                next += 1;
            }
            if next == N {
                break;
            }
        }
        let last = self.count.saturating_sub(1);
        let mut out = [hi; N];
        for ((o, r), at) in out.iter_mut().zip(ranks).zip(found) {
            *o = if r == 0 {
                lo
            } else if r == last {
                hi
            } else {
                let v = match at {
                    None => hi,
                    Some((0, _)) => 0.0,
                    Some((sign, k)) => f64::from(sign) * bin_value(k),
                };
                v.max(lo).min(hi)
            };
        }
        Some(out)
    }

    /// Exact minimum seen, None when empty.
    pub fn min(&self) -> Option<f64> {
        self.range.map(|(lo, _)| lo)
    }

    /// Exact maximum seen, None when empty.
    pub fn max(&self) -> Option<f64> {
        self.range.map(|(_, hi)| hi)
    }
}

/// 0-based rank floor(q·(n−1)) for `q` in `[0, 1]`; None when `n == 0`.
fn rank(q: f64, n: u64) -> Option<u64> {
    let last = n.checked_sub(1)?;
    // `as` saturates (and maps NaN to 0), so this cannot overflow; `min` guards rounding up.
    Some(((q * last as f64).floor() as u64).min(last))
}

/// Bin index of a magnitude `m >= MIN_INDEXABLE`, clamped into `MIN_KEY..=MAX_KEY`.
fn key(m: f64) -> i32 {
    // `as` saturates; the clamp only matters for rounding at the extremes.
    (raw_key(m) as i32).clamp(MIN_KEY, MAX_KEY)
}

/// Unclamped `ceil(ln m / ln γ)`.
fn raw_key(m: f64) -> f64 {
    (m.ln() / GAMMA.ln()).ceil()
}

/// Representative magnitude of bin `k`: `2·γ^k/(γ+1) = (1−α)·γ^k`, computed in log space so the
/// intermediate `γ^k` cannot overflow for the top bin.
fn bin_value(k: i32) -> f64 {
    (f64::from(k) * GAMMA.ln() + (2.0 / (GAMMA + 1.0)).ln()).exp()
}

/// Adds one to bin `k`, keeping `bins` sorted.
fn insert(bins: &mut Bins, k: i32) {
    match bins.binary_search_by_key(&k, |&(bk, _)| bk) {
        Ok(i) => {
            if let Some(bin) = bins.get_mut(i) {
                bin.1 = bin.1.saturating_add(1);
            }
        }
        // `binary_search` returns an insertion point `<= len`, so `insert` cannot panic.
        Err(i) => bins.insert(i, (k, 1)),
    }
}

/// Adds `b`'s bins to `a` (both sorted by index): in place while every index of `b` is one of
/// `a`'s — the usual case once `a` has merged a few cells — and from `b`'s first other index on
/// as [`merge_bins`] of the rest (one walk either way).
fn merge_into(a: &mut Bins, b: &[(i32, u64)]) {
    let mut i = 0;
    for (j, &(k, c)) in b.iter().enumerate() {
        while i < a.len() && a[i].0 < k {
            i += 1;
        }
        match a.get_mut(i) {
            Some(bin) if bin.0 == k => bin.1 = bin.1.saturating_add(c),
            _ => {
                // `j < b.len()`, so the slice is in bounds.
                *a = merge_bins(a, &b[j..]);
                return;
            }
        }
    }
}

/// Sorted union of two stores, adding the counts of equal indices.
fn merge_bins(a: &[(i32, u64)], b: &[(i32, u64)]) -> Bins {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.iter().copied().peekable(), b.iter().copied().peekable());
    loop {
        let next = match (a.peek().copied(), b.peek().copied()) {
            (Some((ka, ca)), Some((kb, cb))) => match ka.cmp(&kb) {
                Ordering::Less => a.next(),
                Ordering::Greater => b.next(),
                Ordering::Equal => {
                    a.next();
                    b.next();
                    Some((ka, ca.saturating_add(cb)))
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => None,
        };
        match next {
            Some(bin) => out.push(bin),
            None => return out,
        }
    }
}

/// Keeps at most `MAX_BINS` bins by folding the lowest-index bins into the lowest kept one.
fn collapse_low(bins: &mut Bins) {
    let Some(excess) = bins.len().checked_sub(MAX_BINS).filter(|&e| e > 0) else {
        return;
    };
    // Bins `0..=excess` become one bin at the index of bin `excess`.
    let folded = bins
        .iter()
        .take(excess + 1)
        .fold(0u64, |acc, &(_, c)| acc.saturating_add(c));
    bins.drain(..excess);
    if let Some(first) = bins.first_mut() {
        first.1 = folded;
    }
}

/// Keeps at most `MAX_BINS` bins by folding the highest-index bins into the highest kept one
/// (for the negative store: the most negative values).
fn collapse_high(bins: &mut Bins) {
    if bins.len() <= MAX_BINS {
        return;
    }
    // Bins `MAX_BINS-1..` become one bin at the index of bin `MAX_BINS-1`.
    let folded = bins
        .iter()
        .skip(MAX_BINS - 1)
        .fold(0u64, |acc, &(_, c)| acc.saturating_add(c));
    bins.truncate(MAX_BINS);
    if let Some(last) = bins.last_mut() {
        last.1 = folded;
    }
}

/// Serialised form. Each store lists `(gap, count)` where `gap` is the bin index minus the
/// previous bin's index (minus `MIN_KEY − 1` for the first), so gaps are small and `>= 1`.
#[derive(Serialize, Deserialize)]
struct Wire {
    zero: u64,
    pos: WireBins,
    neg: WireBins,
    range: WireRange,
}

/// One store as serialised: the sequence of `(gap, count)` of [`Wire`], written from the bins
/// and read straight into them (one vector, each bin checked as it is read: a query decodes
/// thousands of cells of eight sketches each, and an intermediate vector per store was a third
/// of their allocations).
struct WireBins(Bins);

impl Serialize for WireBins {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(gaps(&self.0))
    }
}

impl<'de> Deserialize<'de> for WireBins {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = WireBins;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (gap, count) bins")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WireBins, A::Error> {
                let fail = |e: WireError| serde::de::Error::custom(e);
                let mut bins = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BINS));
                let mut prev = i64::from(MIN_KEY) - 1;
                while let Some((gap, c)) = seq.next_element::<(u32, u64)>()? {
                    if bins.len() == MAX_BINS {
                        return Err(fail(WireError("too many bins")));
                    }
                    prev = next_bin(prev, gap, c).map_err(fail)?;
                    // `next_bin` keeps `MIN_KEY <= prev <= MAX_KEY`, so the cast is exact.
                    bins.push((prev as i32, c));
                }
                Ok(WireBins(bins))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The exact min/max as serialised. In a compact binary form (postcard: the sled store's cells)
/// one value when min = max, as in every cell of one report: variant 2 and the value. Variants
/// 0 (none) and 1 (both values) are byte for byte the `Option<(f64, f64)>` of earlier releases,
/// so their cells read unchanged. In a human-readable form (JSON) always that `Option`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct WireRange(Option<(f64, f64)>);

/// [`WireRange`] in a compact form.
#[derive(Serialize, Deserialize)]
enum CompactRange {
    None,
    Both(f64, f64),
    One(f64),
}

impl Serialize for WireRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.0.serialize(s);
        }
        match self.0 {
            None => CompactRange::None,
            // Equal as bits: -0.0 and 0.0 stay apart.
            Some((lo, hi)) if lo.to_bits() == hi.to_bits() => CompactRange::One(lo),
            Some((lo, hi)) => CompactRange::Both(lo, hi),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for WireRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Option::<(f64, f64)>::deserialize(d).map(WireRange);
        }
        Ok(WireRange(match CompactRange::deserialize(d)? {
            CompactRange::None => None,
            CompactRange::Both(lo, hi) => Some((lo, hi)),
            CompactRange::One(v) => Some((v, v)),
        }))
    }
}

/// Why serialised sketch bytes were rejected.
#[derive(Debug)]
struct WireError(&'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid sketch: {}", self.0)
    }
}

impl Sketch {
    /// Reads a sketch from the front of postcard bytes and returns it with the bytes after it:
    /// the same bytes accepted, the same checks and the same sketch as its `Deserialize`, read
    /// field by field (postcard reading each value; a bin of two one-byte varints read here)
    /// because a query decodes about a million bins and serde's per-element calls through the
    /// sequence were most of that. Any refusal is an error, as there.
    pub fn take_from_postcard(bytes: &[u8]) -> Result<(Sketch, &[u8]), postcard::Error> {
        let mut r = bytes;
        let zero: u64 = take(&mut r)?;
        let pos = take_bins(&mut r)?;
        let neg = take_bins(&mut r)?;
        // The range's variant is a `u32` varint (postcard's enum tag).
        let range = match take::<u32>(&mut r)? {
            0 => None,
            1 => Some(take::<(f64, f64)>(&mut r)?),
            2 => {
                let v: f64 = take(&mut r)?;
                Some((v, v))
            }
            _ => return Err(postcard::Error::SerdeDeCustom),
        };
        let wire = Wire {
            zero,
            pos: WireBins(pos),
            neg: WireBins(neg),
            range: WireRange(range),
        };
        let sketch = Sketch::try_from(wire).map_err(|_| postcard::Error::SerdeDeCustom)?;
        Ok((sketch, r))
    }
}

/// One store's `(gap, count)` sequence from postcard bytes, checked as [`WireBins`] reads it
/// (a longer sequence than a store keeps is refused before its bins are read rather than at
/// the first bin past [`MAX_BINS`]: refused either way).
fn take_bins(r: &mut &[u8]) -> Result<Bins, postcard::Error> {
    let n = take_seq_len(r)?;
    if n > MAX_BINS {
        return Err(postcard::Error::SerdeDeCustom);
    }
    let mut bins = Vec::with_capacity(n);
    let mut prev = i64::from(MIN_KEY) - 1;
    for _ in 0..n {
        // Most bins are two one-byte varints.
        let (gap, c) = match r {
            [g, c, rest @ ..] if (*g | *c) & 0x80 == 0 => {
                *r = rest;
                (u32::from(*g), u64::from(*c))
            }
            _ => take::<(u32, u64)>(r)?,
        };
        prev = next_bin(prev, gap, c).map_err(|_| postcard::Error::SerdeDeCustom)?;
        // `next_bin` keeps `MIN_KEY <= prev <= MAX_KEY`, so the cast is exact.
        bins.push((prev as i32, c));
    }
    Ok(bins)
}

/// A sequence's length as postcard writes it: a varint of the target's `usize`.
pub(crate) fn take_seq_len(r: &mut &[u8]) -> Result<usize, postcard::Error> {
    #[cfg(target_pointer_width = "64")]
    let n: u64 = take(r)?;
    #[cfg(not(target_pointer_width = "64"))]
    let n: u32 = take(r)?;
    usize::try_from(n).map_err(|_| postcard::Error::DeserializeBadVarint)
}

/// The next `T` of postcard bytes, read by postcard itself; `r` moves past it.
fn take<'a, T: Deserialize<'a>>(r: &mut &'a [u8]) -> Result<T, postcard::Error> {
    let (v, rest) = postcard::take_from_bytes(r)?;
    *r = rest;
    Ok(v)
}

/// The `(gap, count)` of each bin: its index minus the previous bin's (minus `MIN_KEY − 1` for
/// the first).
fn gaps(bins: &[(i32, u64)]) -> impl Iterator<Item = (u32, u64)> + '_ {
    let mut prev = i64::from(MIN_KEY) - 1;
    bins.iter().map(move |&(k, c)| {
        let k = i64::from(k);
        // Indices are strictly increasing within `MIN_KEY..=MAX_KEY`, so the gap is in
        // `1..=MAX_KEY-MIN_KEY+1` and fits; the fallback is never taken.
        let gap = u32::try_from(k - prev).unwrap_or(u32::MAX);
        prev = k;
        (gap, c)
    })
}

/// The index of the bin `gap` after `prev`, checked: gaps of at least one, non-empty bins,
/// indices at most `MAX_KEY`.
fn next_bin(prev: i64, gap: u32, count: u64) -> Result<i64, WireError> {
    if gap == 0 {
        return Err(WireError("bin indices not strictly increasing"));
    }
    if count == 0 {
        return Err(WireError("empty bin"));
    }
    let k = prev + i64::from(gap);
    if k > i64::from(MAX_KEY) {
        return Err(WireError("bin index out of range"));
    }
    Ok(k)
}

impl From<Sketch> for Wire {
    fn from(s: Sketch) -> Self {
        Wire {
            zero: s.zero,
            pos: WireBins(s.pos),
            neg: WireBins(s.neg),
            range: WireRange(s.range),
        }
    }
}

impl TryFrom<Wire> for Sketch {
    type Error = WireError;

    fn try_from(w: Wire) -> Result<Self, Self::Error> {
        let (pos, neg) = (w.pos.0, w.neg.0);
        let count = pos
            .iter()
            .chain(&neg)
            .fold(w.zero, |acc, &(_, c)| acc.saturating_add(c));
        match w.range.0 {
            None if count == 0 => {}
            None => return Err(WireError("missing min/max")),
            Some(_) if count == 0 => return Err(WireError("min/max on an empty sketch")),
            Some((lo, hi)) if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
                return Err(WireError("bad min/max"));
            }
            Some(_) => {}
        }
        Ok(Sketch {
            pos,
            neg,
            zero: w.zero,
            count,
            range: w.range.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALPHA: f64 = RELATIVE_ACCURACY;
    const QS: [f64; 5] = [0.0, 0.1, 0.5, 0.9, 1.0];

    /// [`Wire`] with its stores as plain `(gap, count)` vectors: the serialised form written
    /// as it is, for bytes no sketch would write.
    #[derive(Serialize)]
    struct GapWire {
        zero: u64,
        pos: Vec<(u32, u64)>,
        neg: Vec<(u32, u64)>,
        range: WireRange,
    }

    /// A quantile by its own walk from the lowest value, stopping at its rank's bin: the
    /// reference [`Sketch::quantiles`] must equal.
    fn one_walk_per_rank(s: &Sketch, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let (lo, hi) = s.range?;
        let rank = rank(q, s.count)?;
        if rank == 0 {
            return Some(lo);
        }
        if rank == s.count - 1 {
            return Some(hi);
        }
        let clamp = |x: f64| x.max(lo).min(hi);
        let mut seen: u64 = 0;
        for &(k, c) in s.neg.iter().rev() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(clamp(-bin_value(k)));
            }
        }
        seen = seen.saturating_add(s.zero);
        if seen > rank {
            return Some(clamp(0.0));
        }
        for &(k, c) in &s.pos {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(clamp(bin_value(k)));
            }
        }
        Some(hi)
    }

    fn encode_bins(bins: &[(i32, u64)]) -> Vec<(u32, u64)> {
        gaps(bins).collect()
    }

    fn sketch_of(values: &[f64]) -> Sketch {
        let mut s = Sketch::new();
        for &v in values {
            assert!(s.add(v));
        }
        s
    }

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let r = rank(q, sorted.len() as u64).expect("non-empty");
        sorted[r as usize]
    }

    fn tolerance(x: f64) -> f64 {
        if x.abs() < MIN_INDEXABLE {
            MIN_INDEXABLE
        } else {
            ALPHA * x.abs() + 1e-12
        }
    }

    fn check_invariants(s: &Sketch) {
        for (bins, name) in [(&s.pos, "pos"), (&s.neg, "neg")] {
            assert!(bins.len() <= MAX_BINS, "{name} too long");
            assert!(bins.windows(2).all(|w| w[0].0 < w[1].0), "{name} unsorted");
            assert!(bins
                .iter()
                .all(|&(k, c)| c > 0 && (MIN_KEY..=MAX_KEY).contains(&k)));
        }
        let sum = s
            .pos
            .iter()
            .chain(&s.neg)
            .fold(s.zero, |a, &(_, c)| a.saturating_add(c));
        assert_eq!(sum, s.count);
        match s.range {
            None => assert_eq!(s.count, 0),
            Some((lo, hi)) => assert!(s.count > 0 && lo.is_finite() && hi.is_finite() && lo <= hi),
        }
    }

    /// Exercises every method; must not panic on any well-formed sketch.
    fn exercise(s: &Sketch) {
        for q in [0.0, 0.25, 0.5, 0.99, 1.0, -1.0, 2.0, f64::NAN] {
            if let Some(x) = s.quantile(q) {
                assert!(x.is_finite());
            }
        }
        let _ = (s.count(), s.is_empty(), s.min(), s.max());
        let mut m = s.clone();
        m.merge(s);
        m.add(1.0);
        m.add(-1.0);
        check_invariants(&m);
        let bytes = postcard::to_allocvec(s).expect("serialise");
        assert_eq!(
            &postcard::from_bytes::<Sketch>(&bytes).expect("roundtrip"),
            s
        );
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            1 => Just(0.0),
            3 => 0.0..1.0f64,
            3 => 0.0..10_000.0f64,
            2 => (0u32..20).prop_map(f64::from),
            1 => -10_000.0..0.0f64,
            1 => 1.0..4.5f64,
        ]
    }

    fn gap() -> impl Strategy<Value = u32> {
        prop_oneof![6 => 1u32..300, 1 => Just(0u32), 1 => any::<u32>()]
    }

    fn bin_count() -> impl Strategy<Value = u64> {
        prop_oneof![6 => 1u64..5, 1 => Just(0u64), 1 => Just(u64::MAX)]
    }

    fn values(max: usize) -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(value(), 0..max)
    }

    proptest! {
        #[test]
        fn quantiles_within_relative_accuracy(vals in prop::collection::vec(value(), 1..600)) {
            let s = sketch_of(&vals);
            check_invariants(&s);
            prop_assert_eq!(s.count(), vals.len() as u64);
            for q in QS {
                let x = exact(&vals, q);
                let est = s.quantile(q).expect("non-empty");
                prop_assert!((est - x).abs() <= tolerance(x), "q={} exact={} est={}", q, x, est);
            }
        }

        #[test]
        fn fractions_within_relative_accuracy(vals in prop::collection::vec(0.0..1.0f64, 1..300)) {
            let s = sketch_of(&vals);
            for q in QS {
                let x = exact(&vals, q);
                let est = s.quantile(q).expect("non-empty");
                prop_assert!((est - x).abs() <= tolerance(x), "q={} exact={} est={}", q, x, est);
            }
        }

        /// Merging in place gives the sorted union, whether `b`'s indices all lie in `a` (the
        /// in-place path: `b` drawn from `a`'s indices) or not.
        #[test]
        fn merging_bins_in_place_gives_their_sorted_union(
            a in prop::collection::btree_map(-50i32..50, 1u64..1000, 0..40),
            b in prop::collection::btree_map(-50i32..50, 1u64..1000, 0..40),
            pick in prop::collection::vec(any::<bool>(), 40),
        ) {
            let a: Bins = a.into_iter().collect();
            let foreign: Bins = b.into_iter().collect();
            let within: Bins = a
                .iter()
                .zip(&pick)
                .filter(|(_, p)| **p)
                .map(|(&(k, _), _)| (k, 7))
                .collect();
            // Some of `a`'s indices, then others: added in place up to the first other.
            let mut mixed: std::collections::BTreeMap<i32, u64> = within.iter().copied().collect();
            for &(k, c) in &foreign {
                *mixed.entry(k).or_default() += c;
            }
            let mixed: Bins = mixed.into_iter().collect();
            for b in [foreign, within, mixed] {
                let mut m = a.clone();
                merge_into(&mut m, &b);
                let mut want: std::collections::BTreeMap<i32, u64> = a.iter().copied().collect();
                for &(k, c) in &b {
                    *want.entry(k).or_default() += c;
                }
                prop_assert_eq!(m, want.into_iter().collect::<Bins>());
            }
        }

        #[test]
        fn merge_equals_union_and_is_commutative_associative(
            a in values(200), b in values(200), c in values(200)
        ) {
            let (sa, sb, sc) = (sketch_of(&a), sketch_of(&b), sketch_of(&c));
            let mut ab = sa.clone();
            ab.merge(&sb);
            let union: Vec<f64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(&ab, &sketch_of(&union));
            let mut ba = sb.clone();
            ba.merge(&sa);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(&sc);
            let mut bc = sb.clone();
            bc.merge(&sc);
            let mut a_bc = sa.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            check_invariants(&ab_c);
        }

        #[test]
        fn serde_roundtrips(vals in values(300)) {
            let s = sketch_of(&vals);
            let json = serde_json::to_string(&s).expect("json");
            prop_assert_eq!(&serde_json::from_str::<Sketch>(&json).expect("json back"), &s);
            let bytes = postcard::to_allocvec(&s).expect("postcard");
            prop_assert_eq!(&postcard::from_bytes::<Sketch>(&bytes).expect("postcard back"), &s);
            // The bytes (and JSON) of the plain gap vectors the stores were written as.
            let plain = GapWire {
                zero: s.zero,
                pos: encode_bins(&s.pos),
                neg: encode_bins(&s.neg),
                range: WireRange(s.range),
            };
            prop_assert_eq!(bytes, postcard::to_allocvec(&plain).expect("plain"));
            prop_assert_eq!(json, serde_json::to_string(&plain).expect("plain json"));
        }

        #[test]
        fn quantiles_in_one_walk_equal_each_quantile(
            vals in values(300),
            mut qs in prop::array::uniform4(prop_oneof![
                8 => 0.0..=1.0f64,
                2 => Just(0.0),
                2 => Just(1.0),
                1 => Just(f64::NAN),
                1 => Just(-0.25),
                1 => Just(1.5),
            ]),
            sorted in any::<bool>(),
        ) {
            let s = sketch_of(&vals);
            if sorted {
                qs.sort_by(f64::total_cmp);
            }
            let each: Option<Vec<f64>> = qs.iter().map(|&q| one_walk_per_rank(&s, q)).collect();
            let walk = s.quantiles(qs).map(|v| v.to_vec());
            // As bits: the same bin's value, the same clamp.
            let bits = |v: Option<Vec<f64>>| v.map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(bits(walk), bits(each));
        }

        #[test]
        fn arbitrary_wire_never_yields_a_broken_sketch(
            zero in prop_oneof![0u64..3, Just(u64::MAX)],
            pos in prop::collection::vec((gap(), bin_count()), 0..8),
            neg in prop::collection::vec((gap(), bin_count()), 0..8),
            range in prop::option::of(prop_oneof![
                (-1e3..1e3f64, 0.0..1e3f64).prop_map(|(lo, d)| (lo, lo + d)),
                (prop::num::f64::ANY, prop::num::f64::ANY),
            ]),
        ) {
            let range = WireRange(range);
            let bytes = postcard::to_allocvec(&GapWire { zero, pos, neg, range }).expect("wire");
            match postcard::from_bytes::<Sketch>(&bytes) {
                Ok(s) => {
                    check_invariants(&s);
                    exercise(&s);
                }
                Err(e) => prop_assert!(matches!(e, postcard::Error::SerdeDeCustom)),
            }
        }

        /// The hand-read decode takes what `take_from_bytes` takes and leaves the same rest:
        /// sketches' bytes with trailing bytes, with a byte changed, inserted or removed, cut
        /// short, and arbitrary wire forms.
        #[test]
        fn the_hand_read_decode_reads_what_serde_reads(
            vals in values(200),
            tail in prop::collection::vec(any::<u8>(), 0..4),
            at in any::<usize>(),
            byte in any::<u8>(),
            how in 0u8..4,
            pos in prop::collection::vec((gap(), bin_count()), 0..8),
            zero in prop_oneof![0u64..3, Just(u64::MAX)],
        ) {
            let same = |bytes: &[u8]| -> Result<(), TestCaseError> {
                let by_serde = postcard::take_from_bytes::<Sketch>(bytes);
                let by_hand = Sketch::take_from_postcard(bytes);
                prop_assert_eq!(by_hand.as_ref().ok(), by_serde.as_ref().ok(), "{:?}", bytes);
                Ok(())
            };
            let mut bytes = postcard::to_allocvec(&sketch_of(&vals)).expect("postcard");
            bytes.extend_from_slice(&tail);
            same(&bytes)?;
            super::super::damage(&mut bytes, at, byte, how);
            same(&bytes)?;
            let range = WireRange(Some((1.0, 2.0)));
            let wire = GapWire { zero, pos, neg: vec![], range };
            same(&postcard::to_allocvec(&wire).expect("wire"))?;
        }

        #[test]
        fn random_bytes_never_yield_a_broken_sketch(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(s) = postcard::from_bytes::<Sketch>(&bytes) {
                check_invariants(&s);
                exercise(&s);
            }
            let by_hand = Sketch::take_from_postcard(&bytes);
            let by_serde = postcard::take_from_bytes::<Sketch>(&bytes);
            prop_assert_eq!(by_hand.as_ref().ok(), by_serde.as_ref().ok());
        }
    }

    #[test]
    fn key_bounds_match_constants() {
        assert_eq!(raw_key(MIN_INDEXABLE), f64::from(MIN_KEY));
        assert_eq!(raw_key(f64::MAX), f64::from(MAX_KEY));
        assert!(bin_value(MIN_KEY).is_finite() && bin_value(MAX_KEY).is_finite());
        // Representative value is within α of both bin edges.
        for k in [MIN_KEY, -1, 0, 1, 460, MAX_KEY - 1] {
            let (lo, hi) = (GAMMA.powi(k - 1), GAMMA.powi(k));
            let r = bin_value(k);
            assert!((r - lo).abs() <= ALPHA * lo * (1.0 + 1e-9));
            assert!((r - hi).abs() <= ALPHA * hi * (1.0 + 1e-9));
        }
    }

    #[test]
    fn empty_sketch() {
        let s = Sketch::new();
        assert_eq!(s, Sketch::default());
        assert!(s.is_empty());
        assert_eq!(s.count(), 0);
        assert_eq!((s.min(), s.max()), (None, None));
        for q in QS {
            assert_eq!(s.quantile(q), None);
        }
        let mut t = sketch_of(&[1.0, 2.0]);
        let before = t.clone();
        t.merge(&s);
        assert_eq!(t, before);
        let mut e = Sketch::new();
        e.merge(&before);
        assert_eq!(e, before);
        exercise(&s);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut s = sketch_of(&[3.0]);
        let before = s.clone();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!s.add(v));
        }
        assert_eq!(s, before);
        assert_eq!(s.count(), 1);
        let mut e = Sketch::new();
        assert!(!e.add(f64::NAN));
        assert!(e.is_empty());
    }

    #[test]
    fn quantile_rejects_bad_q() {
        let s = sketch_of(&[1.0, 2.0, 3.0]);
        for q in [-0.0001, 1.0001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(s.quantile(q), None);
        }
        assert!(s.quantile(-0.0).is_some());
    }

    #[test]
    fn extremes_are_exact_and_order_spans_signs_and_zero() {
        let vals = [-250.0, -3.0, 0.0, 0.0, 5e-7, 0.02, 7.0, 480.5];
        let s = sketch_of(&vals);
        assert_eq!(s.min(), Some(-250.0));
        assert_eq!(s.max(), Some(480.5));
        assert_eq!(s.quantile(0.0), Some(-250.0));
        assert_eq!(s.quantile(1.0), Some(480.5));
        for (i, &x) in vals.iter().enumerate() {
            let q = i as f64 / (vals.len() - 1) as f64;
            let est = s.quantile(q).expect("non-empty");
            assert!((est - x).abs() <= tolerance(x), "i={i} x={x} est={est}");
        }
        // Zero bucket reports 0.
        assert_eq!(s.quantile(3.0 / 7.0), Some(0.0));
    }

    #[test]
    fn single_value_is_exact() {
        for v in [0.0, 1e-9, 0.37, 4.2, 123.456, -8.5] {
            let s = sketch_of(&[v]);
            for q in QS {
                assert_eq!(s.quantile(q), Some(v));
            }
        }
    }

    /// `n` values, each in its own bin (ratio 1.05 > γ), shuffled deterministically.
    fn spread(n: usize, sign: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| sign * 1.05f64.powi(i as i32)).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..v.len()).rev() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            v.swap(i, (state >> 33) as usize % (i + 1));
        }
        v
    }

    #[test]
    fn collapse_keeps_bins_bounded_and_high_quantiles_accurate() {
        let n = 3000;
        for sign in [1.0, -1.0] {
            let vals = spread(n, sign);
            let s = sketch_of(&vals);
            check_invariants(&s);
            assert_eq!(s.count(), n as u64);
            assert_eq!(s.pos.len() + s.neg.len(), MAX_BINS);
            // Ranks above the collapsed ones (the lowest n - MAX_BINS values) stay accurate.
            for q in [0.4, 0.5, 0.9, 0.99, 1.0] {
                let x = exact(&vals, q);
                let est = s.quantile(q).expect("non-empty");
                assert!(
                    (est - x).abs() <= tolerance(x),
                    "sign={sign} q={q} x={x} est={est}"
                );
            }
            // Collapsed values are only over-estimated.
            for q in [0.0, 0.1, 0.2] {
                let x = exact(&vals, q);
                assert!(s.quantile(q).expect("non-empty") >= x);
            }
            assert_eq!(s.min(), vals.iter().copied().reduce(f64::min));

            // Merging is still exact: any split gives the same sketch as adding everything.
            let (a, rest) = vals.split_at(700);
            let (b, c) = rest.split_at(1500);
            let (sa, sb, sc) = (sketch_of(a), sketch_of(b), sketch_of(c));
            let mut left = sa.clone();
            left.merge(&sb);
            left.merge(&sc);
            let mut right = sc.clone();
            let mut ba = sb.clone();
            ba.merge(&sa);
            right.merge(&ba);
            assert_eq!(left, s);
            assert_eq!(right, s);
            exercise(&s);
        }
    }

    /// A sketch of one value keeps it once in postcard; sketches as earlier releases wrote them
    /// (min and max as an `Option<(f64, f64)>`) read unchanged; JSON keeps that `Option`.
    #[test]
    fn one_value_is_kept_once_and_older_bytes_still_read() {
        #[derive(Serialize)]
        struct Old {
            zero: u64,
            pos: Vec<(u32, u64)>,
            neg: Vec<(u32, u64)>,
            range: Option<(f64, f64)>,
        }
        for values in [
            &[][..],
            &[3.25][..],
            &[-0.0][..],
            &[2.0, 7.5, 7.5][..],
            &[4.0, 4.0][..],
        ] {
            let s = sketch_of(values);
            let old = Old {
                zero: s.zero,
                pos: encode_bins(&s.pos),
                neg: encode_bins(&s.neg),
                range: s.range,
            };
            let old_bytes = postcard::to_allocvec(&old).expect("old");
            assert_eq!(
                postcard::from_bytes::<Sketch>(&old_bytes).expect("old reads"),
                s
            );
            let new_bytes = postcard::to_allocvec(&s).expect("new");
            assert_eq!(
                postcard::from_bytes::<Sketch>(&new_bytes).expect("new reads"),
                s
            );
            let one = s.range.is_some_and(|(lo, hi)| lo.to_bits() == hi.to_bits());
            assert_eq!(
                new_bytes.len() + if one { 8 } else { 0 },
                old_bytes.len(),
                "{values:?}"
            );
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, serde_json::to_string(&old).expect("old json"));
            assert_eq!(
                serde_json::from_str::<Sketch>(&json).expect("json reads"),
                s
            );
        }
    }

    #[test]
    fn saturated_counts_do_not_panic() {
        let wire = GapWire {
            zero: u64::MAX,
            pos: vec![(700, u64::MAX), (1, 5)],
            neg: vec![(1, u64::MAX)],
            range: WireRange(Some((-1.0, 2.0))),
        };
        let bytes = postcard::to_allocvec(&wire).expect("wire");
        let s: Sketch = postcard::from_bytes(&bytes).expect("valid");
        assert_eq!(s.count(), u64::MAX);
        exercise(&s);
        let qs = [0.0, 1e-19, 0.1, 0.5, 0.9, 1.0 - 1e-16, 1.0];
        let each: Vec<_> = qs.iter().map(|&q| one_walk_per_rank(&s, q)).collect();
        assert_eq!(
            s.quantiles(qs).map(|v| v.to_vec()),
            each.into_iter().collect()
        );
        let mut m = s.clone();
        m.merge(&s);
        assert_eq!(m.count(), u64::MAX);
    }

    #[test]
    fn invalid_serialised_sketches_are_rejected() {
        let ok = r#"{"zero":1,"pos":[[700,2],[3,1]],"neg":[],"range":[0.0,1.2]}"#;
        let s: Sketch = serde_json::from_str(ok).expect("valid");
        assert_eq!(s.count(), 4);
        exercise(&s);
        let bad = [
            // duplicate / unsorted bin (gap 0)
            r#"{"zero":0,"pos":[[700,2],[0,1]],"neg":[],"range":[1.0,1.0]}"#,
            // empty bin
            r#"{"zero":0,"pos":[[700,0]],"neg":[],"range":[1.0,1.0]}"#,
            // index beyond MAX_KEY
            r#"{"zero":0,"pos":[[4000000000,1]],"neg":[],"range":[1.0,1.0]}"#,
            // min > max
            r#"{"zero":1,"pos":[],"neg":[],"range":[2.0,1.0]}"#,
            // values but no min/max
            r#"{"zero":1,"pos":[],"neg":[],"range":null}"#,
            // min/max without values
            r#"{"zero":0,"pos":[],"neg":[],"range":[1.0,1.0]}"#,
            // negative gap / wrong types
            r#"{"zero":0,"pos":[[-1,1]],"neg":[],"range":[1.0,1.0]}"#,
            r#"{"zero":0,"pos":"x","neg":[],"range":null}"#,
        ];
        for b in bad {
            assert!(serde_json::from_str::<Sketch>(b).is_err(), "accepted {b}");
        }
        let too_many = GapWire {
            zero: 0,
            pos: vec![(1, 1); MAX_BINS + 1],
            neg: vec![],
            range: WireRange(Some((1.0, 2.0))),
        };
        let bytes = postcard::to_allocvec(&too_many).expect("wire");
        assert!(postcard::from_bytes::<Sketch>(&bytes).is_err());
        assert!(Sketch::take_from_postcard(&bytes).is_err());
        // As many as a store keeps read back.
        let most = GapWire {
            pos: vec![(1, 1); MAX_BINS],
            ..too_many
        };
        let bytes = postcard::to_allocvec(&most).expect("wire");
        let s = postcard::from_bytes::<Sketch>(&bytes).expect("MAX_BINS bins");
        assert_eq!(s.pos.len(), MAX_BINS);
        let (by_hand, rest) = Sketch::take_from_postcard(&bytes).expect("MAX_BINS bins by hand");
        assert_eq!((by_hand, rest), (s, &[][..]));
        assert!(postcard::from_bytes::<Sketch>(&[0xff; 3]).is_err());
    }

    #[test]
    fn serialized_sizes() {
        let empty = postcard::to_allocvec(&Sketch::new()).expect("postcard");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut s = Sketch::new();
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            s.add(5.0 + 495.0 * u);
        }
        let rtt = postcard::to_allocvec(&s).expect("postcard");
        println!(
            "postcard size: empty = {} B, 1000 RTT values 5..500 ms = {} B ({} bins)",
            empty.len(),
            rtt.len(),
            s.pos.len()
        );
        assert_eq!(empty.len(), 4);
        assert!(rtt.len() < 1000);
    }

    /// Varints at their edges (overlong forms, a last byte with bits past the type's, longer
    /// than the type's longest, cut short), as a sketch's zero count (`u64`) and as a bin's gap
    /// (`u32`, past the one-byte fast path): read as serde reads them; and the range's variants.
    #[test]
    fn varints_read_as_postcard_reads_them() {
        let same = |b: &[u8]| {
            let by_serde = postcard::take_from_bytes::<Sketch>(b).ok();
            assert_eq!(Sketch::take_from_postcard(b).ok(), by_serde, "{b:?}");
            by_serde.is_some()
        };
        let u64s: [(&[u8], bool); 8] = [
            (&[0x00], true),
            (&[0x80, 0x00], true),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                true,
            ),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                false,
            ),
            (
                &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                false,
            ),
            (&[0x80], false),
            (&[], false),
            (&[0x7f], true),
        ];
        for (zero, ok) in u64s {
            // No bins; the range given when the zero count is not 0.
            let mut b = zero.to_vec();
            b.extend_from_slice(&[0, 0, 2]);
            b.extend_from_slice(&0.0f64.to_le_bytes());
            let mut empty = zero.to_vec();
            empty.extend_from_slice(&[0, 0, 0]);
            assert_eq!(same(&b) || same(&empty), ok, "{zero:?}");
        }
        let u32s: [(&[u8], bool); 6] = [
            (&[0x81, 0x01], true),
            (&[0xff, 0xff, 0xff, 0xff, 0x0f], false),
            (&[0xff, 0xff, 0xff, 0xff, 0x10], false),
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], false),
            (&[0x81, 0x80, 0x00], true),
            (&[0x81], false),
        ];
        for (gap, ok) in u32s {
            // One bin at that gap (a too large one is out of range: refused either way), count 1.
            let mut b = vec![0, 1];
            b.extend_from_slice(gap);
            b.extend_from_slice(&[1, 0, 2]);
            b.extend_from_slice(&1.5f64.to_le_bytes());
            assert_eq!(same(&b), ok, "{gap:?}");
        }
        // Two values in the zero bucket, then the range's variants: none (refused: values
        // without min/max), both, one, and one past them.
        for variant in 0u8..4 {
            let mut b = vec![2, 0, 0, variant];
            b.extend_from_slice(&1.5f64.to_le_bytes());
            b.extend_from_slice(&1.5f64.to_le_bytes());
            let by_serde = postcard::take_from_bytes::<Sketch>(&b).ok();
            assert_eq!(
                Sketch::take_from_postcard(&b).ok(),
                by_serde,
                "variant {variant}"
            );
            assert_eq!(by_serde.is_some(), variant == 1 || variant == 2);
        }
    }

    #[test]
    fn a_refused_sketch_says_why() {
        for (json, why) in [
            (
                r#"{"zero":0,"pos":[[700,2],[0,1]],"neg":[],"range":[1.0,1.0]}"#,
                "bin indices not strictly increasing",
            ),
            (
                r#"{"zero":0,"pos":[[700,0]],"neg":[],"range":[1.0,1.0]}"#,
                "empty bin",
            ),
            (
                r#"{"zero":0,"pos":[[36180,1]],"neg":[],"range":[1.0,1.0]}"#,
                "bin index out of range",
            ),
            (
                r#"{"zero":1,"pos":[],"neg":[],"range":null}"#,
                "missing min/max",
            ),
            (
                r#"{"zero":0,"pos":[],"neg":[],"range":[1.0,1.0]}"#,
                "min/max on an empty sketch",
            ),
            (
                r#"{"zero":1,"pos":[],"neg":[],"range":[2.0,1.0]}"#,
                "bad min/max",
            ),
        ] {
            let err = serde_json::from_str::<Sketch>(json).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid sketch: {why}")),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn the_lowest_and_highest_bins_read_back() {
        // The first gap counts from MIN_KEY − 1 = −691: MIN_KEY's is 1, MAX_KEY's
        // 35 488 + 691 = 36 179 (one more, 36 180, is out of range: above).
        let s = sketch_of(&[MIN_INDEXABLE, f64::MAX, -f64::MAX]);
        assert_eq!(s.pos, vec![(MIN_KEY, 1), (MAX_KEY, 1)]);
        assert_eq!(s.neg, vec![(MAX_KEY, 1)]);
        assert_eq!(encode_bins(&s.pos), vec![(1, 1), (36_178, 1)]);
        assert_eq!(encode_bins(&s.neg), vec![(36_179, 1)]);
        let bytes = postcard::to_allocvec(&s).expect("postcard");
        assert_eq!(postcard::from_bytes::<Sketch>(&bytes).expect("back"), s);
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(serde_json::from_str::<Sketch>(&json).expect("back"), s);
    }
}
