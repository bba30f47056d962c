//! The dashboard in a real browser: headless Chromium loads `/` from a real collector holding
//! seeded data (through the QUIC ingest path), shows the published region × platform cells and
//! not the one below k, the blocked-call share where the seed has blocked calls, the video-like
//! tests apart from the voice ones, and a real mouse click on a cell renders its time series
//! (`tests/dashboard_click.py`, driving Chromium over the DevTools protocol).
//!
//! Needs `chromium` and `python3` (Debian packages; `.ci/run` installs chromium when missing).

use callwatch_tests::seed::{collector, seed, upload};
use std::process::Command;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// The DOM after the page's scripts ran (Chromium's virtual time runs the fetches to the end).
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--no-sandbox",
            "--headless",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium must be installed (apt-get install chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The grid button of a cell (`RU/whatsapp`), as dumped.
fn button<'a>(dom: &'a str, cell: &str) -> &'a str {
    let at = dom
        .find(&format!(r#"data-cell="{cell}""#))
        .unwrap_or_else(|| panic!("{cell} missing"));
    let end = dom[at..].find("</button>").expect("the button ends");
    &dom[at..at + end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_seeded_cells_and_a_click_opens_the_series() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    upload(&c, &seed()).await;
    let base = format!("http://{}/", c.http_addr);

    let (status, page) = callwatch_tests::http::get(c.http_addr, "/").await.unwrap();
    assert_eq!(status, 200);
    // It loads nothing from elsewhere (the SVG namespace URI is a name, not a fetch).
    for fetch in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(\"http",
        "//cdn",
    ] {
        assert!(
            !page.contains(fetch),
            "the page fetches from elsewhere: {fetch}"
        );
    }
    let (status, spec) = callwatch_tests::http::get(c.http_addr, "/openapi.yaml")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        spec.starts_with("openapi: 3."),
        "{}",
        &spec[..40.min(spec.len())]
    );

    let dom = {
        let url = base.clone();
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    assert!(dom.contains(r#"id="grid""#), "{dom}");
    assert!(
        dom.contains(r#"data-state="ready""#),
        "grid not ready: {dom}"
    );
    for cell in [
        "RU/whatsapp",
        "DE/signal",
        "BR/telegram",
        "IR/generic",
        "TR/whatsapp",
    ] {
        assert!(
            dom.contains(&format!(r#"data-cell="{cell}""#)),
            "{cell} missing"
        );
    }
    assert!(
        !dom.contains(r#"data-cell="BR/signal""#),
        "a cell below k is shown"
    );
    // Russia's WhatsApp cell has blocked calls; Germany's Telegram only tests without a working
    // control arm, which are not blocking.
    assert!(button(&dom, "RU/whatsapp").contains("% blocked"), "{dom}");
    assert!(!button(&dom, "DE/telegram").contains("blocked"), "{dom}");

    // Video-like tests: their own grid, where only the networks that ran them appear.
    let video = {
        let url = format!("{base}#kind=video");
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    assert!(
        video.contains(r#"data-state="ready""#),
        "grid not ready: {video}"
    );
    for cell in ["RU/whatsapp", "RU/telegram", "DE/whatsapp", "DE/telegram"] {
        assert!(
            video.contains(&format!(r#"data-cell="{cell}""#)),
            "{cell} missing"
        );
    }
    for cell in ["IR/generic", "TR/whatsapp", "RU/signal"] {
        assert!(
            !video.contains(&format!(r#"data-cell="{cell}""#)),
            "{cell} has no video tests"
        );
    }
    assert!(video.contains("kind=video"), "the CSV link names the kind");
    // The voice grid's RU/whatsapp cell and the video one differ: never the same tests.
    assert_ne!(button(&video, "RU/whatsapp"), button(&dom, "RU/whatsapp"));

    // A real click (mouse press and release at the first cell's centre) renders its series.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard_click.py");
    let out = {
        let url = base.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(script)
                .arg(&url)
                .args(["--timeout", "60"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(
        out.status.success(),
        "click test failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The series for a chosen cell, platform arm against control arm.
    let dom = {
        let url = format!("{base}#cell=RU/whatsapp");
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    let series = dom
        .split(r#"id="series""#)
        .nth(1)
        .expect("series element present");
    assert!(series.contains(r#"data-cell="RU/whatsapp""#), "{series}");
    assert!(series.contains("control"), "the control arm is drawn");
    assert!(
        series.contains("Blocked calls"),
        "the blocked share is drawn"
    );
    c.shutdown().await;
}
