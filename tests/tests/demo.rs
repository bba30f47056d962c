//! The README's first command, as a test: the whole local deployment produces the aggregate.

use callwatch_tests::demo::{run_demo, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_deployment_aggregates_four_agents_by_region_and_platform() {
    let keep = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        agents: 4,
        duration_secs: 1,
        keep: Some(keep.path().join("data")),
        ..DemoConfig::default()
    };
    let result = run_demo(&cfg).await.unwrap();
    let by_country = result.by_country["result"].as_array().unwrap();
    let ru = by_country.iter().find(|c| c["country"] == "RU").unwrap();
    assert_eq!(ru["count"], 3);
    assert_eq!(ru["agents"], 3);
    let de = by_country.iter().find(|c| c["country"] == "DE").unwrap();
    assert_eq!(de["count"], 1);
    let asns: Vec<u64> = result.by_asn["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["asn"].as_u64().unwrap())
        .collect();
    assert_eq!(asns, vec![3320, 8359, 12389, 31213]);
    assert!(result.table.contains("AS12389"));
    assert!(result.table.contains("By country and platform"));
    // --keep leaves the data behind: the collector store and each agent's key and queue.
    let data = keep.path().join("data");
    assert!(data.join("collector").join("collector.pin").exists());
    assert!(data.join("agent-4").join("agent.key").exists());
    assert!(result.outcomes.iter().all(|o| o.queued_after == 0));
}
