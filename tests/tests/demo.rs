//! The README's first command, as a test: the whole local deployment produces the aggregate, and
//! the emulated DPI box in front of the Russian networks shows up where it should.

use callwatch_tests::demo::{run_demo, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_deployment_aggregates_by_region_and_platform_and_finds_the_dpi_box() {
    let keep = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        keep: Some(keep.path().join("data")),
        ..DemoConfig::default()
    };
    assert!(cfg.dpi && cfg.agents == 4 && cfg.duration_secs >= 13);
    let result = run_demo(&cfg).await.unwrap();
    let cells = result.by_country["result"].as_array().unwrap();
    let cell = |country: &str, platform: &str| {
        cells
            .iter()
            .find(|c| c["country"] == country && c["platform"] == platform)
            .unwrap_or_else(|| panic!("no {country}/{platform} cell in {cells:?}"))
    };
    assert_eq!(cell("RU", "generic")["count"], 3);
    assert_eq!(cell("RU", "generic")["agents"], 3);
    assert_eq!(cell("DE", "whatsapp")["count"], 1);
    // Every Russian WhatsApp test saw the DPI box; nothing else did.
    assert_eq!(cell("RU", "whatsapp")["differentiated_share"], 1.0);
    assert!(
        cell("RU", "whatsapp")["loss_up"]["median"]
            .as_f64()
            .unwrap()
            > 0.03
    );
    assert_eq!(cell("RU", "telegram")["differentiated_share"], 0.0);
    assert_eq!(cell("DE", "whatsapp")["differentiated_share"], 0.0);
    assert!(
        cell("RU", "generic")["differentiated_share"].is_null(),
        "no control arm"
    );
    let asns: std::collections::BTreeSet<u64> = result.by_asn["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["asn"].as_u64().unwrap())
        .collect();
    assert_eq!(
        asns.into_iter().collect::<Vec<_>>(),
        vec![3320, 8359, 12389, 31213]
    );
    assert!(result.table.contains("By country and platform"));
    assert!(result.table.contains("100 %"));
    // Every column has a header, the verdict shares included; inconclusive tests are shown as
    // such, not as a "0 %" differentiated share alone.
    let header = result.table.lines().nth(2).unwrap_or_default();
    assert!(
        header.contains("differentiated") && header.contains("inconclusive"),
        "{}",
        result.table
    );
    // --keep leaves the data behind: the collector store and each agent's key and queue.
    let data = keep.path().join("data");
    assert!(data.join("collector").join("collector.pin").exists());
    assert!(data.join("agent-4").join("agent.key").exists());
    assert!(data.join("agent-4").join("state.json").exists());
    assert!(result.outcomes.iter().all(|o| o.queued_after == 0));
}
