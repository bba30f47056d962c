//! Compressed records of the sled store: a report's record ([`StoredReport::to_bytes`], which
//! holds the exact signed bytes) compressed whole with zstd, with a dictionary trained on the
//! store's own reports. Decompressing gives back the record byte for byte, so the signed bytes
//! are never re-encoded.
//!
//! A compressed record is `0x00`, a layout byte, the dictionary's id (u32 BE; 0 = none), the
//! record's length (u32 BE), then one zstd frame of the record — layout 1: without the 32 bytes
//! of the agent key that the record's own key in the tree starts with (random bytes, which
//! compress not at all), put back in place when read; layout 0: the whole record, for one whose
//! key is not its tree key's. A record of earlier releases starts with the postcard length
//! of the signed body, which is never 0 (an empty body is no report, and was never stored), so
//! the two read side by side. Dictionaries are kept in the store under their id and never
//! replaced: a record names the one it was compressed with, so a new dictionary never breaks
//! reading an old record.
//!
//! [`StoredReport::to_bytes`]: crate::domain::StoredReport::to_bytes

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// First byte of a compressed record.
pub const TAG: u8 = 0x00;
/// Bytes before the zstd frame: tag, layout, dictionary id, length.
const HEADER: usize = 10;
/// Layouts of the compressed bytes.
const WHOLE: u8 = 0;
const KEY_ELIDED: u8 = 1;
/// An agent key's length, and its postcard length prefix (a varint: one byte).
const KEY_LEN: usize = 32;
/// The largest record decompressed: a bound on what bad bytes can make us allocate. Reports
/// are a few KB; the collector refuses uploads far below this.
pub const MAX_RECORD: usize = 16 << 20;
/// zstd level for records: with a dictionary, higher levels gain little on records this small.
pub const LEVEL: i32 = 9;
/// Size of a trained dictionary.
pub const DICT_SIZE: usize = 32 << 10;

/// The dictionaries a store holds, prepared: by id for reading, and the newest for writing.
#[derive(Default)]
pub struct Dictionaries {
    read: RwLock<HashMap<u32, Arc<zstd::dict::DecoderDictionary<'static>>>>,
    /// The newest dictionary's id and raw bytes.
    write: RwLock<Option<(u32, Arc<Vec<u8>>)>>,
    /// Compression contexts for reuse, each with the dictionary of the id beside it loaded:
    /// making a context costs more than compressing a record with it.
    contexts: Mutex<Vec<(u32, zstd::bulk::Compressor<'static>)>>,
}

/// Contexts kept for reuse: about one per thread that compresses at once.
const CONTEXTS_KEPT: usize = 16;

impl Dictionaries {
    /// Adds dictionary `id` (its raw bytes); the newest added becomes the one records are
    /// compressed with. Bytes zstd cannot prepare as a dictionary are an error (zstd's binding
    /// panics on them; that is caught here).
    pub fn add(&self, id: u32, raw: &[u8]) -> Result<(), String> {
        // The encoder's preparation is only a check here: contexts load the raw bytes.
        let prepared = std::panic::catch_unwind(|| {
            (
                zstd::dict::DecoderDictionary::copy(raw),
                zstd::dict::EncoderDictionary::copy(raw, LEVEL),
            )
        });
        let (dec, _) = prepared.map_err(|_| format!("dictionary {id} is not one zstd reads"))?;
        self.read
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(dec));
        let mut w = self.write.write().unwrap_or_else(|e| e.into_inner());
        if w.as_ref().is_none_or(|(have, _)| *have < id) {
            *w = Some((id, Arc::new(raw.to_vec())));
        }
        Ok(())
    }

    /// The id of the dictionary records are compressed with (0: none yet).
    pub fn current(&self) -> u32 {
        self.write
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |(id, _)| *id)
    }

    /// Compresses a record stored under an agent key (the first 32 bytes of its tree key)
    /// with the newest dictionary (none when there is none yet).
    pub fn compress(&self, agent: &[u8], plain: &[u8]) -> Result<Vec<u8>, String> {
        let dict = self.write.read().unwrap_or_else(|e| e.into_inner()).clone();
        let len = u32::try_from(plain.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_RECORD)
            .ok_or_else(|| format!("a record of {} bytes is too large", plain.len()))?;
        let id = dict.as_ref().map_or(0, |(id, _)| *id);
        let kept = {
            let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
            // Contexts of an older dictionary are dropped as they come up.
            contexts.retain(|(have, _)| *have == id);
            contexts.pop()
        };
        let mut c = match kept {
            Some((_, c)) => c,
            None => {
                let mut c = match &dict {
                    Some((_, raw)) => zstd::bulk::Compressor::with_dictionary(LEVEL, raw),
                    None => zstd::bulk::Compressor::new(LEVEL),
                }
                .map_err(|e| format!("zstd: {e}"))?;
                // The header keeps the length and the dictionary: the frame need not repeat
                // them.
                for p in [
                    zstd::zstd_safe::CParameter::ContentSizeFlag(false),
                    zstd::zstd_safe::CParameter::DictIdFlag(false),
                ] {
                    c.set_parameter(p).map_err(|e| format!("zstd: {e}"))?;
                }
                c
            }
        };
        let (layout, payload) = payload(agent, plain);
        let frame = c.compress(&payload).map_err(|e| format!("zstd: {e}"))?;
        {
            let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
            if contexts.len() < CONTEXTS_KEPT {
                contexts.push((id, c));
            }
        }
        let mut out = Vec::with_capacity(HEADER + frame.len());
        out.push(TAG);
        out.push(layout);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&frame);
        Ok(out)
    }

    /// The record `stored` holds: itself when it is not compressed (a record of an earlier
    /// release), else decompressed. Errors on bad bytes, an unknown dictionary, or a length
    /// other than the one recorded; never panics.
    pub fn decompress<'a>(
        &self,
        agent: &[u8],
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, String> {
        if stored.first() != Some(&TAG) {
            return Ok(std::borrow::Cow::Borrowed(stored));
        }
        let header = stored
            .get(..HEADER)
            .ok_or("compressed record shorter than its header")?;
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (layout, id, len) = (header[1], word(2), word(6) as usize);
        if len > MAX_RECORD {
            return Err(format!("compressed record says {len} bytes"));
        }
        let payload_len = match layout {
            WHOLE => len,
            KEY_ELIDED if agent.len() == KEY_LEN => len
                .checked_sub(KEY_LEN)
                .ok_or("compressed record shorter than its key")?,
            KEY_ELIDED => return Err("no agent key to put back into the record".into()),
            other => return Err(format!("unknown record layout {other}")),
        };
        let dict =
            if id == 0 {
                None
            } else {
                let found = self
                    .read
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .cloned();
                Some(found.ok_or_else(|| {
                    format!("compressed with dictionary {id}, which the store lacks")
                })?)
            };
        let mut d = match &dict {
            None => zstd::bulk::Decompressor::new(),
            Some(dict) => zstd::bulk::Decompressor::with_prepared_dictionary(dict),
        }
        .map_err(|e| format!("zstd: {e}"))?;
        let mut plain = d
            .decompress(&stored[HEADER..], payload_len)
            .map_err(|e| format!("zstd: {e}"))?;
        if layout == KEY_ELIDED {
            let at = key_at(&plain).ok_or("compressed record has no place for its key")?;
            plain.splice(at..at, agent.iter().copied());
        }
        if plain.len() != len {
            return Err(format!(
                "compressed record gave {} bytes, not {len}",
                plain.len()
            ));
        }
        Ok(std::borrow::Cow::Owned(plain))
    }
}

/// The dictionary a stored record was compressed with (0: none); `None` when it is not
/// compressed (or too short to say).
pub fn dictionary_of(stored: &[u8]) -> Option<u32> {
    match stored {
        [TAG, _, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Where a record's agent key starts: after the postcard varint length and the bytes of the
/// signed body, and the key's own length prefix (which must say 32).
fn key_at(record: &[u8]) -> Option<usize> {
    let (body_len, used) = varint(record)?;
    let prefix = used.checked_add(usize::try_from(body_len).ok()?)?;
    (record.get(prefix) == Some(&(KEY_LEN as u8))).then_some(prefix + 1)
}

/// A postcard (LEB128) u64 at the start of `b`, and its length in bytes.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What is compressed of a record stored under `agent`: the record without its agent key when
/// that key is `agent` ([`KEY_ELIDED`]), else the whole record.
pub fn payload<'a>(agent: &[u8], plain: &'a [u8]) -> (u8, std::borrow::Cow<'a, [u8]>) {
    match key_at(plain) {
        Some(at) if agent.len() == KEY_LEN && plain.get(at..at + KEY_LEN) == Some(agent) => {
            let mut out = Vec::with_capacity(plain.len() - KEY_LEN);
            out.extend_from_slice(&plain[..at]);
            out.extend_from_slice(&plain[at + KEY_LEN..]);
            (KEY_ELIDED, std::borrow::Cow::Owned(out))
        }
        _ => (WHOLE, std::borrow::Cow::Borrowed(plain)),
    }
}

/// Trains a dictionary on sample records.
pub fn train(samples: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    zstd::dict::from_samples(samples, DICT_SIZE).map_err(|e| format!("training a dictionary: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::StoredReport;
    use crate::geo::Region;
    use callwatch_proto::{CallReport, ReportId, SignedReport};
    use proptest::prelude::*;

    /// Bytes that look random (keys, signatures), from a seed.
    pub(crate) fn noise(seed: u32, n: usize) -> Vec<u8> {
        let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A record as the store keeps it, of report `i` with a random key and signature.
    fn record(i: u32) -> (Vec<u8>, Vec<u8>) {
        let mut r = CallReport::example();
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        r.id = ReportId(id);
        for s in &mut r.streams {
            s.loss_up = Some(f64::from(i % 13) / 100.0);
        }
        let key = noise(i % 50, 32);
        let stored = StoredReport {
            signed: SignedReport {
                body: serde_json::to_vec(&r).unwrap(),
                key: key.clone(),
                signature: noise(i + 1000, 64),
            },
            region: Region::new("RU", 12389),
            received_at_ms: i64::from(i),
            filing: Default::default(),
        };
        (key, stored.to_bytes().unwrap())
    }

    fn trained() -> Dictionaries {
        let samples: Vec<Vec<u8>> = (0..300)
            .map(|i| {
                let (key, plain) = record(i);
                payload(&key, &plain).1.into_owned()
            })
            .collect();
        let d = Dictionaries::default();
        d.add(1, &train(&samples).unwrap()).unwrap();
        d
    }

    #[test]
    fn records_come_back_byte_for_byte_with_and_without_a_dictionary() {
        let none = Dictionaries::default();
        let with = trained();
        assert_eq!(with.current(), 1);
        for i in 0..50 {
            let (key, plain) = record(1000 + i);
            for d in [&none, &with] {
                let stored = d.compress(&key, &plain).unwrap();
                assert_eq!(dictionary_of(&stored), Some(d.current()));
                assert_eq!(stored[1], KEY_ELIDED, "the agent key is left out");
                assert!(stored.len() < plain.len());
                assert_eq!(d.decompress(&key, &stored).unwrap().as_ref(), &plain[..]);
                // Under another agent key the record is kept whole, and still exact.
                let other = noise(999, 32);
                let whole = d.compress(&other, &plain).unwrap();
                assert_eq!(whole[1], WHOLE);
                assert_eq!(d.decompress(&other, &whole).unwrap().as_ref(), &plain[..]);
            }
            // What was compressed without a dictionary reads where one exists, and back.
            let stored = none.compress(&key, &plain).unwrap();
            assert_eq!(with.decompress(&key, &stored).unwrap().as_ref(), &plain[..]);
        }
    }

    #[test]
    fn a_record_of_an_earlier_release_reads_as_itself() {
        let (key, plain) = record(3);
        assert_ne!(plain[0], TAG, "a record never starts with 0");
        assert_eq!(dictionary_of(&plain), None);
        let d = trained();
        assert!(matches!(
            d.decompress(&key, &plain).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_later_dictionary_leaves_earlier_records_readable() {
        let first = trained();
        let (key, plain) = record(5);
        let stored = first.compress(&key, &plain).unwrap();
        let samples: Vec<Vec<u8>> = (500..800).map(|i| record(i).1).collect();
        first.add(2, &train(&samples).unwrap()).unwrap();
        assert_eq!(first.current(), 2);
        assert_eq!(
            first.decompress(&key, &stored).unwrap().as_ref(),
            &plain[..]
        );
        assert_eq!(
            dictionary_of(&first.compress(&key, &plain).unwrap()),
            Some(2)
        );
        // A store without dictionary 1 says so.
        let lacking = Dictionaries::default();
        let e = lacking.decompress(&key, &stored).unwrap_err();
        assert!(e.contains("dictionary 1"), "{e}");
    }

    #[test]
    fn damaged_records_are_errors() {
        let d = trained();
        let (key, plain) = record(9);
        let stored = d.compress(&key, &plain).unwrap();
        // Cut anywhere.
        for n in 1..stored.len() {
            assert!(d.decompress(&key, &stored[..n]).is_err(), "cut at {n}");
        }
        // A length it does not have, or one beyond the bound.
        for len in [plain.len() as u32 - 1, plain.len() as u32 + 1, u32::MAX] {
            let mut bad = stored.clone();
            bad[6..10].copy_from_slice(&len.to_be_bytes());
            assert!(d.decompress(&key, &bad).is_err(), "length {len}");
        }
        let mut bad = stored.clone();
        bad[1] = 9;
        assert!(d.decompress(&key, &bad).is_err(), "unknown layout");
        // No key to put back.
        assert!(d.decompress(&key[..31], &stored).is_err());
    }

    #[test]
    fn a_damaged_dictionary_is_an_error_not_a_panic() {
        // zstd's dictionary magic, then entropy tables that are not.
        let mut bad = vec![0x37, 0xA4, 0x30, 0xEC, 1, 0, 0, 0];
        bad.extend(noise(3, 200));
        let d = Dictionaries::default();
        assert!(d.add(1, &bad).is_err());
        assert_eq!(d.current(), 0, "nothing half added");
        let (key, plain) = record(1);
        let stored = d.compress(&key, &plain).unwrap();
        assert_eq!(d.decompress(&key, &stored).unwrap().as_ref(), &plain[..]);
    }

    proptest! {
        #[test]
        fn decompressing_any_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            layout in 0u8..3,
            id in 0u32..3,
        ) {
            let d = trained();
            let mut stored = vec![TAG, layout];
            stored.extend_from_slice(&id.to_be_bytes());
            stored.extend_from_slice(&bytes);
            let _ = d.decompress(&noise(1, 32), &stored);
            let _ = d.decompress(&noise(1, 32), &bytes);
        }
    }
}
