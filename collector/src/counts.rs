//! Counters by a short stable label (a rejection reason, an attestation result), as `/metrics`
//! publishes them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counts per label; labels are `&'static str`, so the set is bounded by the code.
#[derive(Debug, Default)]
pub struct LabelCounts(Mutex<BTreeMap<&'static str, u64>>);

impl LabelCounts {
    pub fn add(&self, label: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Prometheus samples: `{key="label"}` and its count, per label.
    pub fn samples(&self, key: &str) -> Vec<(String, u64)> {
        self.snapshot()
            .into_iter()
            .map(|(label, n)| (format!("{{{key}=\"{label}\"}}"), n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_label_and_renders_prometheus_labels() {
        let c = LabelCounts::default();
        c.add("valid");
        c.add("absent");
        c.add("valid");
        assert_eq!(c.snapshot().get("valid"), Some(&2));
        assert_eq!(
            c.samples("result"),
            vec![
                ("{result=\"absent\"}".to_string(), 1),
                ("{result=\"valid\"}".to_string(), 2)
            ]
        );
    }
}
