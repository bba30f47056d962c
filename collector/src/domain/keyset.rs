//! [`KeySet`]: the distinct agents or network prefixes behind a cell, by 8-byte key.
//!
//! A query merges the sets of every cell it reads; at ten million reports a profile of ASN ×
//! platform put about a third of its time in that merging while the sets were `BTreeSet`s (one
//! allocation per node, a `memcmp` per comparison, the whole tree rebuilt by each union). Here a
//! set is one sorted vector of the keys read as big-endian integers — the same order as their
//! bytes — so a union is one pass over two arrays, in place.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Distinct 8-byte keys, in byte order.
///
/// Serialized exactly as serde writes a `BTreeSet<[u8; 8]>` (a sequence of the keys, in
/// order), so stored cells read the same whichever type wrote them; a sequence out of order or
/// with repeats (a damaged store) still reads as the set of its keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet(Vec<u64>);

impl KeySet {
    pub fn new() -> Self {
        KeySet(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `key`; true when it was not there yet.
    pub fn insert(&mut self, key: [u8; 8]) -> bool {
        let k = u64::from_be_bytes(key);
        match self.0.binary_search(&k) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, k);
                true
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn contains(&self, key: &[u8; 8]) -> bool {
        self.0.binary_search(&u64::from_be_bytes(*key)).is_ok()
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = [u8; 8]> + ExactSizeIterator + '_ {
        self.0.iter().map(|k| k.to_be_bytes())
    }

    /// Adds every key of `other`: one backward pass that merges both sorted arrays into this
    /// one's (grown by `other`'s length, then trimmed of the repeats), without a second
    /// allocation.
    pub fn union_with(&mut self, other: &KeySet) {
        let b = &other.0;
        if b.is_empty() {
            return;
        }
        let a = &mut self.0;
        if a.is_empty() {
            a.extend_from_slice(b);
            return;
        }
        // Disjoint ranges: one copy.
        if let (Some(&a_last), Some(&b_first)) = (a.last(), b.first()) {
            if a_last < b_first {
                a.extend_from_slice(b);
                return;
            }
        }
        let n = a.len();
        a.resize(n + b.len(), 0);
        // `i` keys of `a` and `j` of `b` are left to place; `w` is where the merged tail starts.
        let (mut i, mut j, mut w) = (n, b.len(), n + b.len());
        while j > 0 {
            let y = b[j - 1];
            w -= 1;
            if i > 0 && a[i - 1] >= y {
                let x = a[i - 1];
                a[w] = x;
                i -= 1;
                if x == y {
                    j -= 1;
                }
            } else {
                a[w] = y;
                j -= 1;
            }
        }
        // `a[..i]` is already in place; each repeat left one slot between it and the tail.
        if w > i {
            a.copy_within(w.., i);
            a.truncate(a.len() - (w - i));
        }
    }

    /// The set of `keys` (in any order, repeats allowed).
    fn of_unsorted(mut keys: Vec<u64>) -> KeySet {
        if !keys.windows(2).all(|w| w[0] < w[1]) {
            keys.sort_unstable();
            keys.dedup();
        }
        KeySet(keys)
    }
}

impl KeySet {
    /// Reads a set from the front of postcard bytes, as its `Deserialize` would (the length,
    /// then each key's 8 bytes), and returns it with the bytes after it: the keys taken as one
    /// slice instead of eight one-byte reads each (a query decodes hundreds of thousands).
    pub fn take_from_postcard(bytes: &[u8]) -> Result<(KeySet, &[u8]), postcard::Error> {
        let mut rest = bytes;
        let n = super::sketch::take_seq_len(&mut rest)?;
        let len = n
            .checked_mul(8)
            .filter(|len| *len <= rest.len())
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        let (keys, rest) = rest.split_at(len);
        let keys = keys
            .chunks_exact(8)
            .map(|k| {
                let mut b = [0u8; 8];
                b.copy_from_slice(k);
                u64::from_be_bytes(b)
            })
            .collect();
        Ok((KeySet::of_unsorted(keys), rest))
    }
}

impl FromIterator<[u8; 8]> for KeySet {
    fn from_iter<I: IntoIterator<Item = [u8; 8]>>(iter: I) -> Self {
        KeySet::of_unsorted(iter.into_iter().map(u64::from_be_bytes).collect())
    }
}

impl Extend<[u8; 8]> for KeySet {
    fn extend<I: IntoIterator<Item = [u8; 8]>>(&mut self, iter: I) {
        let more: KeySet = iter.into_iter().collect();
        self.union_with(&more);
    }
}

impl Serialize for KeySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for KeySet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = KeySet;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of 8-byte keys")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KeySet, A::Error> {
                // Read straight into the set's own vector; a damaged length claims no more
                // than a bounded capacity up front.
                let mut keys = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(key) = seq.next_element::<[u8; 8]>()? {
                    keys.push(u64::from_be_bytes(key));
                }
                Ok(KeySet::of_unsorted(keys))
            }
        }
        d.deserialize_seq(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn key(n: u64) -> [u8; 8] {
        n.to_be_bytes()
    }

    proptest::proptest! {
        /// Every operation gives what a `BTreeSet` of the same keys gives, and the two
        /// serialize to the same bytes and read each other's.
        #[test]
        fn a_key_set_is_a_btree_set_of_its_keys(
            a in proptest::collection::vec(proptest::prelude::any::<[u8; 8]>(), 0..50),
            b in proptest::collection::vec(proptest::prelude::any::<[u8; 8]>(), 0..50),
            small in proptest::collection::vec(0u64..40, 0..50),
            more in proptest::collection::vec(0u64..40, 0..50),
        ) {
            for (a, b) in [
                (a.clone(), b.clone()),
                (small.iter().map(|n| key(*n)).collect(), more.iter().map(|n| key(*n)).collect()),
            ] {
                let (mut set, mut tree) = (KeySet::new(), BTreeSet::new());
                for k in &a {
                    proptest::prop_assert_eq!(set.insert(*k), tree.insert(*k));
                }
                proptest::prop_assert_eq!(set.len(), tree.len());
                proptest::prop_assert!(set.iter().eq(tree.iter().copied()));
                let other: KeySet = b.iter().copied().collect();
                let other_tree: BTreeSet<[u8; 8]> = b.iter().copied().collect();
                proptest::prop_assert!(other.iter().eq(other_tree.iter().copied()));
                for k in &b {
                    proptest::prop_assert_eq!(set.contains(k), tree.contains(k));
                }
                let mut union = set.clone();
                union.union_with(&other);
                let mut tree_union = tree.clone();
                tree_union.extend(other_tree.iter().copied());
                proptest::prop_assert!(union.iter().eq(tree_union.iter().copied()));
                let mut other_way = other.clone();
                other_way.union_with(&set);
                proptest::prop_assert_eq!(&other_way, &union);
                let mut extended = set.clone();
                extended.extend(b.iter().copied());
                proptest::prop_assert_eq!(&extended, &union);
                let bytes = postcard::to_allocvec(&union).unwrap();
                proptest::prop_assert_eq!(&bytes, &postcard::to_allocvec(&tree_union).unwrap());
                let back: KeySet = postcard::from_bytes(&bytes).unwrap();
                proptest::prop_assert_eq!(&back, &union);
                // Written unsorted with repeats (a damaged store): the set of its keys.
                let raw = postcard::to_allocvec(&b).unwrap();
                let read: KeySet = postcard::from_bytes(&raw).unwrap();
                proptest::prop_assert_eq!(&read, &other);
                // Read by hand from the front of longer bytes, and cut short: as serde reads.
                for bytes in [&bytes, &raw] {
                    let mut longer = bytes.clone();
                    longer.extend_from_slice(&[1, 2, 3]);
                    for cut in [longer.len(), bytes.len(), bytes.len().saturating_sub(1), 0] {
                        let b = &longer[..cut];
                        proptest::prop_assert_eq!(
                            KeySet::take_from_postcard(b).ok(),
                            postcard::take_from_bytes::<KeySet>(b).ok()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unions_at_the_edges() {
        let set = |v: &[u64]| -> KeySet { v.iter().map(|n| key(*n)).collect() };
        let cases: [(&[u64], &[u64], &[u64]); 13] = [
            (&[], &[], &[]),
            (&[7], &[7], &[7]),
            (&[7], &[8], &[7, 8]),
            (&[8], &[7], &[7, 8]),
            (&[1, 2, 3, 4], &[2, 3], &[1, 2, 3, 4]),
            (&[2, 3], &[1, 2, 3, 4], &[1, 2, 3, 4]),
            (&[1, 2, 3], &[3, 4, 5], &[1, 2, 3, 4, 5]),
            (&[1, 2], &[], &[1, 2]),
            (&[], &[1, 2], &[1, 2]),
            (&[1, 2], &[3, 4], &[1, 2, 3, 4]),
            (&[3, 4], &[1, 2], &[1, 2, 3, 4]),
            (&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]),
            (&[1, 5, 9], &[0, 5, 10], &[0, 1, 5, 9, 10]),
        ];
        for (a, b, want) in cases {
            let mut got = set(a);
            got.union_with(&set(b));
            assert_eq!(got, set(want), "{a:?} ∪ {b:?}");
        }
        // Byte order is key order: the top bit set sorts last, as in a BTreeSet of bytes.
        let mut s = KeySet::new();
        s.insert([0xFF, 0, 0, 0, 0, 0, 0, 0]);
        s.insert([0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            s.iter().next(),
            Some([0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        );
    }
}
