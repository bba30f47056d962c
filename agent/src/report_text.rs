//! A call report as a volunteer reads it in a terminal.

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
            "{:<9} {:>6} {:>9} {:>8} {:>7.2}% {:>8.2}% {:>10} {:>8} {:>14} {:>5}",
            s.role.as_str(),
            s.packets_sent,
            s.packets_reflected
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            s.packets_received,
            s.loss_up * 100.0,
            s.loss_down * 100.0,
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
    let verdict = report
        .verdict
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| "n/a (no control arm)".into());
    let _ = writeln!(out, "verdict: {verdict}");
    out
}
