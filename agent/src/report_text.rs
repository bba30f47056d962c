//! A call report as a volunteer reads it in a terminal.

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
        v.map(|x| format!("{x:.2} ms"))
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
                .map(|j| format!("{:.2}/{:.2} ms", j.up, j.down))
                .unwrap_or_else(|| "-".into()),
            s.mos
                .map(|m| format!("{m:.2}"))
                .unwrap_or_else(|| "-".into()),
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

/// A fraction as a percentage, or `-` when unknown.
pub fn percent(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}
