//! The synthetic report mix of the store benchmarks (`callwatch-load aggregate` and
//! `store-size`), and a file that caches it signed.
//!
//! Report `j` of the mix comes from agent `j mod agents` (real Ed25519 keys, seeded by the
//! agent's number), is filed under one of 10 countries × 4 networks by its agent key, tests
//! platform `j mod 5`, started at a random minute of the 28 days before the mix's `now`, every
//! seventh with a differentiated verdict, and arrives `j` ms after `now`. The random minutes
//! come from one seeded stream, so the mix is a function of (`reports`, `agents`, `now`).
//!
//! Signing ten million reports takes minutes of one core; a corpus file keeps them signed so a
//! benchmark can load the same reports again: a zstd stream of a header line
//! (`callwatch-corpus 1 <reports> <agents> <now ms>`) and then, per report, its body's length
//! (u32 little-endian), the exact signed body, the 32-byte key and the 64-byte signature. What
//! the store needs besides (the region, the arrival time, the parse) is derived again on
//! reading, the same way.

use anyhow::{bail, ensure, Context, Result};
use callwatch_collector::domain::{ReportKey, StoredReport, VerifiedReport};
use callwatch_proto::report::CallReport;
use callwatch_proto::{Platform, SignedReport};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::seed::synthetic_report;

/// The countries of the mix.
pub const COUNTRIES: [&str; 10] = ["RU", "DE", "IR", "TR", "BR", "US", "IN", "CN", "UA", "KZ"];

/// The mix's agents: `n` Ed25519 keys, seeded by their number.
pub fn agents(n: usize) -> Vec<SigningKey> {
    (0..n as u64)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i + 1).to_be_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect()
}

/// The mix's report stream: reports in order, from a seeded random stream.
pub struct Mix {
    agents: Vec<SigningKey>,
    rng: rand::rngs::StdRng,
    now: chrono::DateTime<chrono::Utc>,
    next: usize,
}

impl Mix {
    /// The mix of `agents` agents as of `now` (whole milliseconds), from its first report.
    pub fn new(agents: usize, now_ms: i64) -> Result<Mix> {
        ensure!(agents > 0, "the mix needs at least one agent");
        let now = chrono::DateTime::from_timestamp_millis(now_ms)
            .with_context(|| format!("{now_ms} ms is not a time"))?;
        Ok(Mix {
            agents: self::agents(agents),
            rng: rand::rngs::StdRng::seed_from_u64(11),
            now,
            next: 0,
        })
    }

    /// Its "now" (ms): its reports started in the 28 days before.
    pub fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    /// Goes on from report `j` (a store filled that far before), with the random stream
    /// where it is: the reports after differ in their start times from an unbroken fill's.
    pub fn skip_to(&mut self, j: usize) {
        self.next = j;
    }

    /// The next report, signed.
    pub fn next_signed(&mut self) -> Result<SignedReport> {
        let j = self.next;
        self.next += 1;
        let signer = &self.agents[j % self.agents.len()];
        let platform = Platform::ALL[j % 5];
        let started = self.now - chrono::Duration::minutes(self.rng.gen_range(10..60 * 24 * 28));
        let r = synthetic_report(
            &mut self.rng,
            j as u32,
            platform,
            started,
            j.is_multiple_of(7),
        );
        SignedReport::sign(&r, signer).context("signing a synthetic report")
    }

    /// The next report, as ingest hands it to a store.
    pub fn next_verified(&mut self) -> Result<VerifiedReport> {
        let j = self.next;
        let signed = self.next_signed()?;
        stored(j, signed, self.now.timestamp_millis())
    }
}

/// Report `j` of a mix whose `now` is `now_ms`, from its signed bytes: filed under its agent's
/// country and network, arriving `j` ms after `now`, parsed.
pub fn stored(j: usize, signed: SignedReport, now_ms: i64) -> Result<VerifiedReport> {
    let agent: [u8; 32] = signed
        .key
        .as_slice()
        .try_into()
        .with_context(|| format!("report {j}: a key of {} bytes", signed.key.len()))?;
    let report: CallReport = serde_json::from_slice(&signed.body)
        .with_context(|| format!("report {j}: the body does not parse"))?;
    let c = agent[7] as usize % COUNTRIES.len();
    Ok(VerifiedReport::new(
        ReportKey {
            agent,
            id: report.id,
        },
        StoredReport {
            signed,
            region: callwatch_collector::geo::Region {
                country: COUNTRIES[c].into(),
                asn: 1000 + (agent[6] as u32 % 4),
                subdivision: String::new(),
            },
            received_at_ms: now_ms.saturating_add(j as i64),
            filing: Default::default(),
        },
        report,
    ))
}

const MAGIC: &str = "callwatch-corpus";
const VERSION: u32 = 1;
/// The largest body a corpus record may declare (the protocol's limit is far below).
const MAX_BODY: usize = 1 << 20;

/// What a corpus file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusHeader {
    pub reports: usize,
    pub agents: usize,
    pub now_ms: i64,
}

/// Writes the mix of `agents` agents as of `now_ms`, `reports` of them, to `path` (through a
/// temporary file renamed at the end, so a file at `path` is always whole); `progress` is
/// called with the count written every 100,000 reports.
pub fn write(path: &Path, header: CorpusHeader, mut progress: impl FnMut(usize)) -> Result<()> {
    let tmp = path.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut z = zstd::Encoder::new(BufWriter::new(file), 3)?;
    writeln!(
        z,
        "{MAGIC} {VERSION} {} {} {}",
        header.reports, header.agents, header.now_ms
    )?;
    let mut mix = Mix::new(header.agents, header.now_ms)?;
    for j in 0..header.reports {
        let s = mix.next_signed()?;
        let len = u32::try_from(s.body.len()).context("a body over 4 GiB")?;
        z.write_all(&len.to_le_bytes())?;
        z.write_all(&s.body)?;
        z.write_all(&s.key)?;
        z.write_all(&s.signature)?;
        if (j + 1) % 100_000 == 0 {
            progress(j + 1);
        }
    }
    let mut w = z.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// A corpus file being read, report by report.
pub struct Reader {
    input: BufReader<zstd::Decoder<'static, BufReader<std::fs::File>>>,
    pub header: CorpusHeader,
    next: usize,
    name: String,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
        let mut input = BufReader::new(
            zstd::Decoder::new(file).with_context(|| format!("{name}: not a zstd stream"))?,
        );
        let mut line = Vec::new();
        (&mut input)
            .take(200)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {name}"))?;
        let text = String::from_utf8_lossy(&line);
        let fields: Vec<&str> = text.split_whitespace().collect();
        let header = match fields.as_slice() {
            [magic, version, reports, agents, now] if *magic == MAGIC => {
                ensure!(
                    version.parse::<u32>().ok() == Some(VERSION),
                    "{name}: corpus version {version}, this tool reads {VERSION}"
                );
                let parse = |s: &str, what: &str| {
                    s.parse::<i64>()
                        .with_context(|| format!("{name}: its header's {what} is {s:?}"))
                };
                CorpusHeader {
                    reports: usize::try_from(parse(reports, "report count")?)?,
                    agents: usize::try_from(parse(agents, "agent count")?)?,
                    now_ms: parse(now, "time")?,
                }
            }
            _ => bail!("{name} is not a callwatch corpus (its first line is {text:?})"),
        };
        Ok(Reader {
            input,
            header,
            next: 0,
            name,
        })
    }

    /// The next report's signed bytes, or `None` after the last one the header announced.
    pub fn next_signed(&mut self) -> Result<Option<SignedReport>> {
        if self.next >= self.header.reports {
            return Ok(None);
        }
        let j = self.next;
        let name = &self.name;
        let cut = |e: std::io::Error| {
            anyhow::anyhow!(
                "{name}: report {j} of {} is cut short ({e})",
                self.header.reports
            )
        };
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(cut)?;
        let len = u32::from_le_bytes(len) as usize;
        ensure!(
            len <= MAX_BODY,
            "{name}: report {j} declares a {len}-byte body"
        );
        let mut body = vec![0u8; len];
        let mut key = vec![0u8; 32];
        let mut signature = vec![0u8; 64];
        self.input.read_exact(&mut body).map_err(cut)?;
        self.input.read_exact(&mut key).map_err(cut)?;
        self.input.read_exact(&mut signature).map_err(cut)?;
        self.next += 1;
        Ok(Some(SignedReport {
            body,
            key,
            signature,
        }))
    }

    /// The next report as ingest hands it to a store.
    pub fn next_verified(&mut self) -> Result<Option<VerifiedReport>> {
        let j = self.next;
        match self.next_signed()? {
            Some(s) => Ok(Some(stored(j, s, self.header.now_ms)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    /// A corpus of `reports` reports of `agents` agents written in a fresh folder.
    fn written(
        reports: usize,
        agents: usize,
    ) -> (tempfile::TempDir, std::path::PathBuf, CorpusHeader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.zst");
        let header = CorpusHeader {
            reports,
            agents,
            now_ms: NOW,
        };
        write(&path, header, |_| {}).unwrap();
        (dir, path, header)
    }

    #[test]
    fn a_corpus_reads_back_the_very_reports_the_mix_makes() {
        let (_dir, path, header) = written(30, 7);
        assert!(!path.with_extension("partial").exists());
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.header, header);
        let mut mix = Mix::new(7, NOW).unwrap();
        for j in 0..30 {
            let (a, b) = (
                r.next_verified().unwrap().unwrap(),
                mix.next_verified().unwrap(),
            );
            assert_eq!(a.stored.signed, b.stored.signed, "report {j}");
            assert_eq!(a.key, b.key);
            assert_eq!(a.stored.region, b.stored.region);
            assert_eq!(a.stored.received_at_ms, NOW + j as i64);
            // Real signatures over the exact bytes, by agent j mod 7.
            let report = a.stored.signed.verify().unwrap();
            assert_eq!(report, a.report);
            assert_eq!(a.key.agent, agents(7)[j % 7].verifying_key().to_bytes());
            assert_eq!(report.platform, Platform::ALL[j % 5]);
        }
        assert!(r.next_signed().unwrap().is_none());
    }

    #[test]
    fn a_cut_or_foreign_file_is_refused_with_its_name() {
        let (dir, path, _) = written(5, 2);
        // The same stream, its last report cut: four read, the fifth names itself.
        let mut raw = Vec::new();
        zstd::Decoder::new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        let cut = dir.path().join("cut.zst");
        std::fs::write(&cut, zstd::encode_all(&raw[..raw.len() - 10], 3).unwrap()).unwrap();
        let mut r = Reader::open(&cut).unwrap();
        for _ in 0..4 {
            r.next_signed().unwrap().unwrap();
        }
        let e = r.next_signed().unwrap_err().to_string();
        assert!(e.contains("cut.zst") && e.contains("report 4 of 5"), "{e}");
        // Not a corpus, not zstd, a newer version.
        let other = dir.path().join("other.zst");
        std::fs::write(&other, zstd::encode_all(&b"hello\n"[..], 3).unwrap()).unwrap();
        let e = Reader::open(&other).err().unwrap().to_string();
        assert!(e.contains("not a callwatch corpus"), "{e}");
        std::fs::write(&other, b"plain text").unwrap();
        assert!(Reader::open(&other).is_err());
        let newer = format!("{MAGIC} 2 5 2 {NOW}\n");
        std::fs::write(&other, zstd::encode_all(newer.as_bytes(), 3).unwrap()).unwrap();
        let e = Reader::open(&other).err().unwrap().to_string();
        assert!(e.contains("corpus version 2"), "{e}");
        assert!(Reader::open(&dir.path().join("missing")).is_err());
    }
}
