//! A call report as a volunteer reads it in a terminal, each figure to its published precision
//! (`callwatch_proto::precision`: ms to 0.01, loss to 0.01 %, MOS to 0.01). The report itself
//! keeps full precision.

use callwatch_proto::precision::Precision;
use callwatch_proto::report::StreamOutcome;
use callwatch_proto::CallReport;
use std::fmt::Write;

pub fn summary(report: &CallReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "call test {} ({}), {:.1} s, {} B every {} ms, started {}",
        report.id,
        report.platform,
        report.duration_ms as f64 / 1000.0,
        report.payload_bytes,
        report.interval_ms,
        report.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    let _ = writeln!(
        out,
        "{:<9} {:>6} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8} {:>14} {:>5}",
        "stream",
        "sent",
        "reflected",
        "received",
        "loss up",
        "loss down",
        "rtt median",
        "rtt p95",
        "jitter up/down",
        "MOS"
    );
    let ms = |v: Option<f64>| {
        v.map(|x| format!("{} ms", millis(x)))
            .unwrap_or_else(|| "-".into())
    };
    for s in &report.streams {
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8} {:>14} {:>5}",
            s.role.as_str(),
            s.packets_sent,
            s.packets_reflected
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            s.packets_received,
            percent(s.loss_up),
            percent(s.loss_down),
            ms(s.rtt_ms.map(|r| r.median)),
            ms(s.rtt_ms.map(|r| r.p95)),
            s.jitter_ms
                .map(|j| format!("{}/{} ms", millis(j.up), millis(j.down)))
                .unwrap_or_else(|| "-".into()),
            s.mos.map(mos).unwrap_or_else(|| "-".into()),
        );
    }
    for s in &report.streams {
        match (s.outcome, s.dark_from_ms) {
            (StreamOutcome::Measured, _) => {}
            (StreamOutcome::Dark, Some(t)) => {
                let _ = writeln!(
                    out,
                    "{}: went dark {:.1} s into the stream",
                    s.role,
                    f64::from(t) / 1e3
                );
            }
            // A refusal is the reflector's load, not the network: say so in words.
            (StreamOutcome::Refused, _) => {
                let _ = writeln!(
                    out,
                    "{}: refused: the reflector was busy, which says nothing about your connection",
                    s.role
                );
            }
            (o, _) => {
                let _ = writeln!(out, "{}: {}", s.role, o.as_str());
            }
        }
        if s.loss_up.is_none() && s.packets_sent > 0 && s.packets_received < s.packets_sent {
            let _ = writeln!(
                out,
                "{}: round-trip loss {}; its split into up and down is unknown (the reflector's final count never arrived)",
                s.role,
                percent(s.loss)
            );
        }
    }
    let verdict = report
        .verdict
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| "n/a (no control arm)".into());
    match &report.verdict_detail {
        Some(d) => {
            let rule = d.rule.map(|r| format!(" [{r}]")).unwrap_or_default();
            let _ = writeln!(out, "verdict: {verdict}{rule}: {}", d.reason);
        }
        None => {
            let _ = writeln!(out, "verdict: {verdict}");
        }
    }
    out
}

/// `x` to `p`'s decimals, with every decimal written (`12.30`), as a column of figures shows it;
/// `-` when not finite.
fn fixed(x: f64, p: Precision) -> String {
    p.round(x)
        .map(|r| format!("{r:.*}", p.decimals()))
        .unwrap_or_else(|| "-".into())
}

/// A delay or jitter in ms, to 0.01 ms (`12.35`).
pub fn millis(x: f64) -> String {
    fixed(x, Precision::Millis)
}

/// A MOS, to 0.01 (`4.12`).
pub fn mos(x: f64) -> String {
    fixed(x, Precision::Mos)
}

/// A fraction as a percentage to 0.01 % (the fraction rounded to 0.0001: `8.98%`), or `-` when
/// unknown.
pub fn percent(v: Option<f64>) -> String {
    let p = Precision::Fraction;
    v.and_then(|x| p.round(x))
        .map(|r| format!("{:.*}%", p.decimals().saturating_sub(2), r * 100.0))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_show_their_published_precision() {
        assert_eq!(millis(12.345_678), "12.35");
        assert_eq!(millis(0.1 + 0.2), "0.30");
        assert_eq!(millis(100.0), "100.00");
        assert_eq!(millis(-0.001), "0.00");
        assert_eq!(millis(f64::NAN), "-");
        assert_eq!(mos(4.123_456), "4.12");
        assert_eq!(percent(Some(0.089_803_588_750_917_65)), "8.98%");
        assert_eq!(percent(Some(0.000_666_7)), "0.07%");
        assert_eq!(percent(Some(1.0)), "100.00%");
        assert_eq!(percent(Some(-1e-9)), "0.00%");
        assert_eq!(percent(Some(f64::INFINITY)), "-");
        assert_eq!(percent(None), "-");
    }

    #[test]
    fn the_summary_rounds_and_the_report_keeps_every_digit() {
        let mut r = callwatch_proto::CallReport::example();
        let s = &mut r.streams[0];
        s.rtt_ms.as_mut().unwrap().median = 12.345_678_9;
        s.loss_up = Some(0.089_803_588_750_917_65);
        s.mos = Some(4.123_456_7);
        let text = summary(&r);
        assert!(
            text.contains("12.35 ms") && !text.contains("12.345"),
            "{text}"
        );
        assert!(text.contains("8.98%") && !text.contains("8.980"), "{text}");
        assert!(text.contains("4.12") && !text.contains("4.123"), "{text}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("12.3456789") && json.contains("0.08980358875091765"),
            "{json}"
        );
    }
}
