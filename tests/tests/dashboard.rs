//! The dashboard in a real browser: headless Chromium loads `/` from a real collector holding
//! seeded data (through the QUIC ingest path), shows the published region × platform cells and
//! not the one below k, the blocked-call share where the seed has blocked calls, the video-like
//! tests apart from the voice ones, and a real mouse click on a cell renders its time series
//! (`tests/dashboard_click.py`, driving Chromium over the DevTools protocol).
//!
//! The page's logic (`window.callwatchDashboard`: number formatting, the MOS colour thresholds,
//! the ≥ 50 % alarm, cell ids, the URL hash) is exercised in the same browser on the page a real
//! collector serves, and the values the page shows (grid cells, the split by network, a network's
//! series and its table of daily values) are compared with the API's, formatted as the page
//! promises.
//!
//! Needs `chromium` and `python3` (Debian packages; `.ci/run` installs chromium when missing):
//! without them these tests fail.

use callwatch_proto::precision;
use callwatch_tests::seed::{collector, seed, upload};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

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
    // Its raw link is the public, redacted export, and says so.
    let raw = page
        .lines()
        .find(|l| l.contains(r#"id="raw""#))
        .expect("a raw export link");
    assert!(
        raw.contains(r#"href="api/v1/reports""#) && raw.contains("public reports, redacted"),
        "{raw}"
    );
    assert!(
        !page.contains("full=true\""),
        "the page links no full export"
    );
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
    // Its place says it is not shown, not why: "below k" would claim someone tested there.
    assert!(
        dom.contains(">not shown<") && !dom.contains("below k"),
        "{dom}"
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

/// Runs `steps` with `tests/dashboard_click.py --steps` (one headless Chromium; each step a fresh
/// page load, its `wait` expression polled until true or the deadline, then its `eval`
/// expressions evaluated by value) and returns one object of results per step. Fails the test if
/// Chromium is missing, a wait times out, an expression throws, or a page script threw.
fn in_chromium(steps: Value) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard_click.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--steps", "-", "--timeout", "90"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(steps.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dashboard_click.py --steps failed ({}; exit status 2 means no Chromium: \
         apt-get install chromium, or set CHROMIUM): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(got["exceptions"], json!([]), "the page's scripts threw");
    match got["steps"].take() {
        Value::Array(steps) => steps,
        other => panic!("no steps in {other}"),
    }
}

/// `x.toFixed(d)` as JavaScript writes it, for x ≥ 0: the d-decimal number nearest to the exact
/// value of x, an exact tie rounded up (Rust's `{:.d}` rounds an exact tie to even: 3.25 → "3.2"
/// where JavaScript writes "3.3").
fn to_fixed(x: f64, d: usize) -> String {
    assert!(x >= 0.0 && x.is_finite(), "{x}");
    let exact = format!("{x:.1100}"); // every digit of any f64
    let frac = exact.split_once('.').expect("a fraction").1.as_bytes();
    let tie = frac[d] == b'5' && frac[d + 1..].iter().all(|&b| b == b'0');
    let x = if tie {
        x + 0.25 * 10f64.powi(-(d as i32))
    } else {
        x
    };
    format!("{x:.d$}")
}

/// What the page promises for a share: a whole percentage ("37%"), "–" when unknown.
fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| to_fixed(100.0 * x, 0) + "%")
}

/// A figure with d decimals, "–" when unknown.
fn num(x: Option<f64>, d: usize) -> String {
    x.map_or("–".into(), |x| to_fixed(x, d))
}

/// What the page promises for figure `name` as published: every decimal of its rule
/// (`callwatch_proto::precision`), a fraction as a percentage to the same precision; "–" when
/// unknown.
fn published(name: &str, x: Option<f64>) -> String {
    let d = precision::of(name).expect("a published figure").decimals();
    let percent = name.starts_with("loss") || name.ends_with("_share");
    x.map_or("–".into(), |x| {
        if percent {
            to_fixed(100.0 * x, d - 2) + "%"
        } else {
            to_fixed(x, d)
        }
    })
}

/// The colour the legend promises for a median MOS: red below 3.1, amber to 3.6, green from
/// 3.6, grey when unknown.
fn mos_class(m: Option<f64>) -> &'static str {
    match m {
        None => "grey",
        Some(m) if m < 3.1 => "red",
        Some(m) if m < 3.6 => "amber",
        Some(_) => "green",
    }
}

fn median(cell: &Value, figure: &str) -> Option<f64> {
    cell[figure]["median"].as_f64()
}

/// The API's cells of `path`, each with its grid id (`RU/whatsapp`, `RU/AS12389/whatsapp`);
/// `country` for cells that do not name theirs.
async fn api_cells(addr: std::net::SocketAddr, path: &str, country: &str) -> Vec<(String, Value)> {
    let (status, body) = callwatch_tests::http::get(addr, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let cells = body["result"].as_array().expect("result").clone();
    cells
        .into_iter()
        .map(|c| {
            // An ASN × platform query names the country as its filter, not in each cell.
            let country = c["country"].as_str().unwrap_or(country);
            let platform = c["platform"].as_str().expect("platform");
            let id = match c["asn"].as_u64() {
                Some(asn) => format!("{country}/AS{asn}/{platform}"),
                None => format!("{country}/{platform}"),
            };
            (id, c)
        })
        .collect()
}

/// The grid's cells as shown: id, classes and the texts of their parts.
const GRID_CELLS: &str = r#"Array.from(document.querySelectorAll('#grid .cell')).map(b => ({
  cell: b.dataset.cell, class: b.className,
  mos: b.querySelector('.mos').textContent, diff: b.querySelector('.diff').textContent,
  blocked: b.querySelector('.blk') ? b.querySelector('.blk').textContent : null,
  n: b.querySelector('.n .long').textContent}))"#;

/// True once `#grid` left its loading state (false on about:blank, which has no grid).
const GRID_SETTLED: &str =
    "(g => !!g && g.dataset.state !== 'loading')(document.getElementById('grid'))";

/// Checks every cell the page shows against the API's cell of the same id, and that the page
/// shows exactly the API's cells (of those `keep` selects by id, e.g. the `RU/AS…` ones).
fn assert_cells_as_api(shown: &Value, api: &[(String, Value)], keep: impl Fn(&str) -> bool) {
    let shown: Vec<&Value> = shown
        .as_array()
        .expect("an array of cells")
        .iter()
        .filter(|c| keep(c["cell"].as_str().unwrap_or("")))
        .collect();
    let mut shown_ids: Vec<&str> = shown.iter().map(|c| c["cell"].as_str().unwrap()).collect();
    let mut api_ids: Vec<&str> = api.iter().map(|(id, _)| id.as_str()).collect();
    shown_ids.sort();
    api_ids.sort();
    assert_eq!(shown_ids, api_ids, "the page shows the API's cells");
    for (id, c) in api {
        let on_page = shown.iter().find(|s| s["cell"] == json!(id)).unwrap();
        let mos = median(c, "mos");
        let share = c["differentiated_share"].as_f64();
        let blocked = c["blocked_share"].as_f64().filter(|&b| b != 0.0);
        let classes: Vec<&str> = on_page["class"].as_str().unwrap().split(' ').collect();
        assert!(
            classes.contains(&mos_class(mos)),
            "{id}: MOS {mos:?}, {on_page}"
        );
        let alarm = share.is_some_and(|s| s >= 0.5);
        assert_eq!(
            classes.contains(&"alarm"),
            alarm,
            "{id}: share {share:?}, {on_page}"
        );
        let expected = json!({
            "cell": id,
            "class": on_page["class"],
            "mos": num(mos, 1),
            "diff": share.map_or("no verdict".into(), |s| pct(Some(s)) + " diff"),
            "blocked": blocked.map(|b| pct(Some(b)) + " blocked"),
            "n": format!("n {}/{}", c["count"], c["agents"]),
        });
        assert_eq!(on_page, &&expected, "{id}: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_logic_in_chromium() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = format!("http://{}/", c.http_addr);

    // Each case: an expression over L = window.callwatchDashboard, and its value.
    let cases: Vec<(&str, Value)> = vec![
        // The thresholds, and the MOS colour classes either side of them.
        ("[L.MOS_AMBER_FROM, L.MOS_GREEN_FROM, L.ALARM_SHARE]", json!([3.1, 3.6, 0.5])),
        ("L.mosClass(null)", json!("grey")),
        ("L.mosClass(undefined)", json!("grey")),
        ("L.mosClass(0)", json!("red")),
        ("L.mosClass(1)", json!("red")),
        ("L.mosClass(3.0999)", json!("red")),
        ("L.mosClass(3.1)", json!("amber")),
        ("L.mosClass(3.5999)", json!("amber")),
        ("L.mosClass(3.6)", json!("green")),
        ("L.mosClass(4.5)", json!("green")),
        // The alarm: exactly at 50 %.
        ("L.isAlarm(0.4999)", json!(false)),
        ("L.isAlarm(0.5)", json!(true)),
        ("L.isAlarm(1)", json!(true)),
        ("L.isAlarm(0)", json!(false)),
        ("L.isAlarm(null)", json!(false)),
        ("L.isAlarm(undefined)", json!(false)),
        // Shares: whole percentages, an exact half rounded up; "–" when unknown.
        ("L.pct(0)", json!("0%")),
        ("L.pct(0.5)", json!("50%")),
        ("L.pct(1)", json!("100%")),
        ("L.pct(0.004)", json!("0%")),
        ("L.pct(0.005)", json!("1%")),
        ("L.pct(0.125)", json!("13%")),
        ("L.pct(2 / 3)", json!("67%")),
        ("L.pct(0.1234, 1)", json!("12.3%")),
        ("L.pct(null)", json!("–")),
        ("L.pct(undefined)", json!("–")),
        // Loss: one decimal at most, half up, no trailing ".0".
        ("L.lossFmt(0)", json!("0%")),
        ("L.lossFmt(0.05)", json!("5%")),
        ("L.lossFmt(0.0123)", json!("1.2%")),
        ("L.lossFmt(0.0125)", json!("1.3%")),
        ("L.lossFmt(0.2345)", json!("23.5%")),
        ("L.lossFmt(0.00049)", json!("0%")),
        ("L.lossFmt(0.0005)", json!("0.1%")),
        ("L.lossFmt(1)", json!("100%")),
        ("L.lossFmt(null)", json!("–")),
        // The published precision: the page's table is the API's (proto::precision).
        (
            "L.PRECISION",
            Value::Object(
                precision::FIELDS
                    .iter()
                    .map(|(n, p)| (n.to_string(), json!(p.decimals())))
                    .collect(),
            ),
        ),
        ("L.published('rtt_ms', 48.1)", json!("48.10")),
        ("L.published('mos', 4.12)", json!("4.12")),
        ("L.published('loss', 0.0898)", json!("8.98%")),
        ("L.published('loss_up', 0)", json!("0.00%")),
        ("L.published('blocked_share', 0.0333)", json!("3.33%")),
        ("L.published('differentiated_share', 1)", json!("100.00%")),
        ("L.published('stalls', 2)", json!("2")),
        ("L.published('mos', null)", json!("–")),
        ("L.published('colour', 1)", json!("–")),
        // Figures with fixed decimals (toFixed: an exact tie up, 1.005 is below its tie).
        ("L.num(3.14159, 2)", json!("3.14")),
        ("L.num(3.25, 1)", json!("3.3")),
        ("L.num(1.005, 2)", json!("1.00")),
        ("L.num(2, 1)", json!("2.0")),
        ("L.num(0, 1)", json!("0.0")),
        ("L.num(null, 2)", json!("–")),
        ("L.median({median: 3.2, p10: 2})", json!(3.2)),
        ("L.median({})", Value::Null),
        ("L.median(null)", Value::Null),
        ("L.median({median: '3.2'})", Value::Null),
        // Cell ids: parsed in any case, written canonically; a network's AS prefix optional.
        ("L.parseCell('RU/whatsapp')", json!({"country": "RU", "asn": null, "platform": "whatsapp"})),
        ("L.parseCell('RU/AS12389/whatsapp')", json!({"country": "RU", "asn": 12389, "platform": "whatsapp"})),
        ("L.parseCell('ru/as12389/WhatsApp')", json!({"country": "RU", "asn": 12389, "platform": "whatsapp"})),
        ("L.parseCell('Ru/12389/WHATSAPP')", json!({"country": "RU", "asn": 12389, "platform": "whatsapp"})),
        ("L.parseCell('RU/AS0/generic')", json!({"country": "RU", "asn": 0, "platform": "generic"})),
        ("L.cellId('RU', 12389, 'whatsapp')", json!("RU/AS12389/whatsapp")),
        ("L.cellId('RU', null, 'whatsapp')", json!("RU/whatsapp")),
        ("L.cellId('RU', 0, 'generic')", json!("RU/AS0/generic")),
        ("['RU/AS12389/whatsapp', 'RU/AS8359/telegram', 'DE/signal', 'ZZ/AS0/generic'].map(id => \
          (c => L.cellId(c.country, c.asn, c.platform))(L.parseCell(id)))",
         json!(["RU/AS12389/whatsapp", "RU/AS8359/telegram", "DE/signal", "ZZ/AS0/generic"])),
        ("(c => L.cellId(c.country, c.asn, c.platform))(L.parseCell('ru/as12389/WhatsApp'))",
         json!("RU/AS12389/whatsapp")),
        // Garbage: neither two nor three parts.
        ("[L.parseCell(''), L.parseCell(null), L.parseCell(undefined), L.parseCell('RU'), \
          L.parseCell('RU/AS1/whatsapp/x'), L.parseCell('a/b/c/d/e')]",
         json!([null, null, null, null, null, null])),
        // A network that is not "AS" and digits is no cell, never an ASN of NaN.
        ("L.parseCell('RU/ASfoo/whatsapp')", json!(null)),
        ("L.parseCell('RU/AS/whatsapp')", json!(null)),
        // The hash: parsed with defaults for what is missing or unknown ...
        ("L.parseHash('')", json!({"days": 30, "asn": false, "kind": "voice", "res": "day", "cell": null})),
        ("L.parseHash('#')", json!({"days": 30, "asn": false, "kind": "voice", "res": "day", "cell": null})),
        ("L.parseHash('#days=7&asn=1&kind=video&cell=RU/AS12389/whatsapp')",
         json!({"days": 7, "asn": true, "kind": "video", "res": "day", "cell": "RU/AS12389/whatsapp"})),
        ("L.parseHash('days=90&cell=RU/whatsapp')",
         json!({"days": 90, "asn": false, "kind": "voice", "res": "day", "cell": "RU/whatsapp"})),
        ("L.parseHash('#cell=RU%2FAS8359%2Ftelegram')",
         json!({"days": 30, "asn": true, "kind": "voice", "res": "day", "cell": "RU/AS8359/telegram"})),
        // Hourly only where the API's hour axis reaches (31 days).
        ("[L.parseHash('#days=7&res=hour').res, L.parseHash('#res=hour').res, \
           L.parseHash('#days=90&res=hour').res, L.parseHash('#res=minute').res]",
         json!(["hour", "hour", "day", "day"])),
        ("[L.hourlyAllowed(7), L.hourlyAllowed(30), L.hourlyAllowed(31), L.hourlyAllowed(90)]",
         json!([true, true, true, false])),
        // Axis ticks read apart at any scale (the RTT axis of a loopback test once read
        // \"0 ms\" at every tick).
        ("[L.tick(0.25, 0.25, 'ms'), L.tick(0.05, 0.05, 'ms'), L.tick(20, 20, 'ms'), \
           L.tick(2.5, 2.5, 'ms'), L.tick(0.0025, 0.0025, '%'), L.tick(0.5, 0.25, '%'), \
           L.tick(3, 1, '')]",
         json!(["0.25 ms", "0.05 ms", "20 ms", "2.5 ms", "0.25%", "50%", "3"])),
        ("[L.parseHash('#days=14').days, L.parseHash('#days=abc').days, L.parseHash('#days=7').days]",
         json!([30, 30, 7])),
        ("[L.parseHash('#kind=audio').kind, L.parseHash('#kind=VIDEO').kind, L.parseHash('#kind=video').kind]",
         json!(["voice", "voice", "video"])),
        ("[L.parseHash('#asn=0').asn, L.parseHash('#asn=true').asn, L.parseHash('#asn=1').asn]",
         json!([false, false, true])),
        ("L.parseHash('#cell=').cell", Value::Null),
        // ... and written with the defaults left out, slashes unescaped.
        ("L.formatHash({days: 30, asn: false, kind: 'voice', cell: null})", json!("")),
        ("L.formatHash({days: 7, asn: true, kind: 'video', cell: 'RU/AS12389/whatsapp'})",
         json!("days=7&asn=1&kind=video&cell=RU/AS12389/whatsapp")),
        ("L.formatHash({days: 90, asn: false, kind: 'voice', cell: 'RU/whatsapp'})",
         json!("days=90&cell=RU/whatsapp")),
        ("L.formatHash({days: 30, asn: true, kind: 'voice', cell: null})", json!("asn=1")),
        ("L.formatHash({days: 7, asn: true, kind: 'voice', res: 'hour', cell: 'RU/AS12389/whatsapp'})",
         json!("days=7&asn=1&res=hour&cell=RU/AS12389/whatsapp")),
        ("[{days: 7, asn: true, kind: 'video', res: 'hour', cell: 'RU/AS12389/whatsapp'}, \
           {days: 30, asn: true, kind: 'voice', res: 'day', cell: 'DE/whatsapp'}, \
           {days: 90, asn: false, kind: 'video', res: 'day', cell: null}] \
          .map(v => JSON.stringify(L.parseHash('#' + L.formatHash(v))) === JSON.stringify(v))",
         json!([true, true, true])),
        // Read-only for tests.
        ("Object.isFrozen(L) && (d => !d.writable && !d.configurable)\
          (Object.getOwnPropertyDescriptor(window, 'callwatchDashboard'))", json!(true)),
        ("(() => { L.ALARM_SHARE = 0.1; L.mosClass = () => 'x'; window.callwatchDashboard = {}; \
           return [window.callwatchDashboard === L, L.ALARM_SHARE, L.mosClass(4)]; })()",
         json!([true, 0.5, "green"])),
        // The legend states the same thresholds.
        ("Array.from(document.querySelectorAll('.legend > span')).slice(0, 5).map(s => s.textContent)",
         json!(["MOS < 3.1", "3.1–3.6", "≥ 3.6", "no MOS", "≥ 50 % differentiated"])),
    ];
    let eval: serde_json::Map<String, Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (expr, _))| {
            (
                i.to_string(),
                json!(format!("(L => {expr})(window.callwatchDashboard)")),
            )
        })
        .collect();
    let steps = json!([{"url": base, "wait": GRID_SETTLED, "eval": eval}]);
    let got = tokio::task::spawn_blocking(move || in_chromium(steps))
        .await
        .unwrap();
    let got = &got[0];
    let mut wrong = Vec::new();
    for (i, (expr, want)) in cases.iter().enumerate() {
        if &got[i.to_string()] != want {
            wrong.push(format!("{expr}\n  is {}\n  not {want}", got[i.to_string()]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_api_values() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    upload(&c, &seed()).await;
    let base = format!("http://{}/", c.http_addr);
    let grid = api_cells(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=platform",
        "",
    )
    .await;
    let ru = api_cells(
        c.http_addr,
        "/api/v1/aggregation?axis_x=asn&axis_y=platform&country=RU",
        "RU",
    )
    .await;
    let series = {
        let (status, body) = callwatch_tests::http::get(
            c.http_addr,
            "/api/v1/aggregation?axis_x=day&axis_y=arm&country=RU&asn=12389&platform=whatsapp",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["result"].clone()
    };
    // The seed makes both sides of the alarm: cells at or above 50 % differentiated and below.
    let share = |c: &Value| c["differentiated_share"].as_f64();
    let alarmed: Vec<&str> = grid
        .iter()
        .filter(|(_, c)| share(c).is_some_and(|s| s >= 0.5))
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(!alarmed.is_empty(), "no seeded cell is at or above 50 %");
    assert!(
        grid.iter().any(|(_, c)| share(c).is_some_and(|s| s < 0.5)),
        "no seeded cell with verdicts is below 50 %"
    );
    eprintln!("cells at or above 50 % differentiated: {alarmed:?}");

    let series_settled = "(s => !!s && s.dataset.cell === 'RU/AS12389/whatsapp' \
         && !['idle', 'loading'].includes(s.dataset.state))(document.getElementById('series'))";
    let steps = json!([
        {"url": base, "wait": GRID_SETTLED,
         "eval": {"state": "document.getElementById('grid').dataset.state", "cells": GRID_CELLS}},
        {"url": format!("{base}#asn=1"), "wait": GRID_SETTLED,
         "eval": {
            "state": "document.getElementById('grid').dataset.state",
            "split": "document.getElementById('byasn').checked",
            "rows": "Array.from(document.querySelectorAll('#grid tr.asnrow th.row')).map(t => t.title)",
            "cells": GRID_CELLS}},
        {"url": format!("{base}#cell=RU/AS12389/whatsapp"), "wait": series_settled,
         "eval": {
            "state": "document.getElementById('series').dataset.state",
            "heading": "document.querySelector('#series h2').textContent",
            "sub": "document.querySelector('#series p.sub').textContent",
            "split": "document.getElementById('byasn').checked",
            "pressed": "Array.from(document.querySelectorAll('#grid .cell[aria-pressed=true]')).map(b => b.dataset.cell)",
            "hash": "location.hash",
            "table": "Array.from(document.querySelectorAll('#series details tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))"}},
    ]);
    let got = tokio::task::spawn_blocking(move || in_chromium(steps))
        .await
        .unwrap();

    // `/`: every country × platform cell as the API has it.
    assert_eq!(got[0]["state"], "ready");
    assert_cells_as_api(&got[0]["cells"], &grid, |_| true);

    // `#asn=1`: the split is on, Russia's two networks have rows, and their cells are the API's.
    let asn = &got[1];
    assert_eq!(
        (&asn["state"], &asn["split"]),
        (&json!("ready"), &json!(true))
    );
    let rows: Vec<&str> = asn["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for network in ["Russia, AS12389", "Russia, AS8359"] {
        assert!(rows.contains(&network), "no row {network}: {rows:?}");
    }
    assert!(
        ru.iter().any(|(id, _)| id == "RU/AS12389/whatsapp"),
        "{ru:?}"
    );
    assert!(
        ru.iter().any(|(id, _)| id == "RU/AS8359/whatsapp"),
        "{ru:?}"
    );
    assert_cells_as_api(&asn["cells"], &ru, |id| id.starts_with("RU/AS"));
    assert_cells_as_api(&asn["cells"], &grid, |id| id.matches('/').count() == 1);

    // `#cell=RU/AS12389/whatsapp`: that network's series, its daily values the API's.
    let s = &got[2];
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(s["heading"], "RU · AS12389 · whatsapp");
    assert_eq!(s["split"], true, "a network's cell turns the split on");
    assert_eq!(s["pressed"], json!(["RU/AS12389/whatsapp"]));
    assert_eq!(s["hash"], "#asn=1&cell=RU/AS12389/whatsapp");
    let (_, cell) = ru
        .iter()
        .find(|(id, _)| id == "RU/AS12389/whatsapp")
        .unwrap();
    let sub = s["sub"].as_str().unwrap();
    let promised = format!(
        "{} tests from {} agents, median MOS {}, {} differentiated, {} blocked calls.",
        cell["count"],
        cell["agents"],
        num(median(cell, "mos"), 2),
        pct(share(cell)),
        pct(cell["blocked_share"].as_f64())
    );
    assert!(
        sub.ends_with(&promised),
        "{sub:?} does not end with {promised:?}"
    );
    let mut expected: Vec<Value> = Vec::new();
    let rows = series.as_array().expect("series rows");
    let mut days: Vec<&str> = rows.iter().filter_map(|r| r["day"].as_str()).collect();
    days.sort();
    days.dedup();
    for day in &days {
        for arm in ["platform", "control"] {
            let Some(r) = rows.iter().find(|r| r["day"] == *day && r["arm"] == arm) else {
                continue;
            };
            expected.push(json!([
                day,
                arm,
                r["count"].to_string(),
                r["agents"].to_string(),
                published("mos", median(r, "mos")),
                published("rtt_ms", median(r, "rtt_ms")),
                published("loss", median(r, "loss")),
                published("loss_down", median(r, "loss_down")),
                published("loss_up", median(r, "loss_up")),
                published("differentiated_share", r["differentiated_share"].as_f64()),
                published("blocked_share", r["blocked_share"].as_f64()),
            ]));
        }
    }
    assert!(expected.len() >= 7, "the seed has a week of days: {series}");
    assert_eq!(
        s["table"],
        Value::Array(expected),
        "the table of daily values"
    );
    c.shutdown().await;
}

/// The text of the grid's message, as dumped (`<p class="msg">…</p>`).
fn grid_message(dom: &str) -> String {
    let at = dom.find(r#"class="msg""#).expect("a message");
    let start = at + dom[at..].find('>').expect("the tag ends") + 1;
    let end = start + dom[start..].find("</p>").expect("the paragraph ends");
    dom[start..end].to_string()
}

/// An empty or sparse deployment explains itself from the answer's global overview: no report
/// at all says agents are needed; reports below k say how many cells wait for more agents,
/// and not "try a longer period" (which would not help).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_sparse_collector_says_why_nothing_is_shown() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = format!("http://{}/", c.http_addr);
    let dom = {
        let url = base.clone();
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    assert!(dom.contains(r#"data-state="empty""#), "{dom}");
    let msg = grid_message(&dom);
    assert!(msg.contains("holds no report yet"), "{msg}");
    assert!(!msg.contains("longer period"), "{msg}");
    c.shutdown().await;

    // Two agents test Signal in Brazil: below k = 3, so nothing is published.
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let brazil_signal: Vec<_> = seed()
        .into_iter()
        .filter(|s| s.0 == 5 && s.3.platform == callwatch_proto::Platform::Signal)
        .collect();
    assert!(!brazil_signal.is_empty());
    let (accepted, _) = callwatch_tests::seed::upload_batches(&c, &brazil_signal, 100).await;
    let base = format!("http://{}/", c.http_addr);
    let dom = {
        let url = base.clone();
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    let msg = grid_message(&dom);
    assert!(
        msg.contains(&format!("This collector holds {accepted} reports."))
            && msg.contains("1 region × platform cell has reports from fewer than 3 agents"),
        "{msg}"
    );
    assert!(!msg.contains("longer period"), "{msg}");
    c.shutdown().await;
}

/// The tests' history of tests/tests/events.rs: RU AS12389 blocked from hour 30 to hour 60 of
/// four days ending yesterday, RU AS8359 and DE AS3320 clean.
fn blocked_history() -> callwatch_tests::history::HistorySpec {
    use callwatch_tests::history::{HistorySpec, NetSpec, Restriction};
    let net = |country, asn, restriction| NetSpec {
        country,
        asn,
        platform: callwatch_proto::Platform::Whatsapp,
        agents: 4,
        tests_per_hour: 1,
        restriction,
        skew_minutes: 0,
    };
    HistorySpec {
        networks: vec![
            net(
                "RU",
                12389,
                Some(Restriction {
                    onset: 30,
                    end: Some(60),
                    share_of_agents: 1.0,
                    rate: 0.95,
                }),
            ),
            net("RU", 8359, None),
            net("DE", 3320, None),
        ],
        days: 4,
        first_day: chrono::Utc::now().timestamp().div_euclid(86_400) - 5,
        seed: 17,
        availability: 1.0,
    }
}

/// Every `<tag ... class="...class...">` opening tag in `dom` (as dumped), in order.
fn tags_with_class<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    dom.match_indices('<')
        .filter_map(|(at, _)| {
            let end = at + dom[at..].find('>')?;
            let tag = &dom[at..=end];
            tag.split("class=\"")
                .nth(1)
                .and_then(|c| c.split('"').next())
                .is_some_and(|c| c.split(' ').any(|w| w == class))
                .then_some(tag)
        })
        .collect()
}

/// The timeline a researcher reads: the events list links into a network's hourly timeline,
/// which marks the onset and recovery (and where they may have begun), stacks blocked calls
/// under the other differentiated tests, draws p10–p90 bands of both arms, and labels its axes
/// so ticks read apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_marks_events_with_bands_and_stacked_shares() {
    use callwatch_tests::history::{history_config, signed_history, upload_history};
    let root = tempfile::tempdir().unwrap();
    let spec = blocked_history();
    let reports = signed_history(&spec);
    let c = callwatch_collector::serve(history_config(root.path(), &spec))
        .await
        .unwrap();
    assert_eq!(upload_history(&c, &reports).await, reports.len());
    let (_, body) = callwatch_tests::http::get(c.http_addr, "/api/v1/events")
        .await
        .unwrap();
    let events: Value = serde_json::from_str(&body).unwrap();
    let events = events["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 4, "{body}");
    let network: Vec<&Value> = events.iter().filter(|e| e["asn"] == 12389).collect();

    // The front page lists the four events, each linking to its cell's hourly timeline.
    let base = format!("http://{}/", c.http_addr);
    let dom = {
        let url = base.clone();
        tokio::task::spawn_blocking(move || dump_dom(&url))
            .await
            .unwrap()
    };
    for e in &events {
        let id = e["id"].as_str().unwrap();
        let at = dom
            .find(&format!(r#"data-event="{id}""#))
            .unwrap_or_else(|| panic!("event {id} not listed: {dom}"));
        let item = &dom[at..at + dom[at..].find("</li>").unwrap()];
        let cell = match e["asn"].as_u64() {
            Some(a) => format!("cell=RU/AS{a}/whatsapp"),
            None => "cell=RU/whatsapp".into(),
        };
        assert!(
            item.contains(&cell) && item.contains("res=hour") && item.contains("days=7"),
            "{item}"
        );
        let kind = if e["kind"] == "onset" {
            "Onset"
        } else {
            "Recovery"
        };
        assert!(item.contains(kind) && item.contains("AS12389") == e["asn"].is_u64());
    }

    // The network's timeline, as the onset's link opens it.
    let url = format!("{base}#days=7&asn=1&res=hour&cell=RU/AS12389/whatsapp");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .unwrap();
    assert!(
        dom.contains(r#"data-state="ready""#) && dom.contains(r#"data-res="hour""#),
        "{dom}"
    );
    // Both of the network's events marked on every chart (6), with their intervals.
    for e in &network {
        let id = e["id"].as_str().unwrap();
        let marks = dom.matches(&format!(r#"<g data-event="{id}""#)).count();
        assert_eq!(marks, 6, "event {id} marked on {marks} charts");
    }
    assert_eq!(
        tags_with_class(&dom, "event-interval").len(),
        12,
        "two events' intervals on six charts"
    );
    // Stacked shares: the blocked part under the rest, both drawn in the hours that have
    // verdicts; during the block most hours' differentiated share is high.
    let diff = tags_with_class(&dom, "bar-diff");
    let blocked = tags_with_class(&dom, "bar-blocked");
    assert!(!diff.is_empty() && diff.len() == blocked.len());
    let high = diff
        .iter()
        .filter(|t| {
            t.split("data-share=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 0.5)
        })
        .count();
    assert!((20..=35).contains(&high), "{high} hours at ≥ 50 %");
    // p10–p90 bands of both arms on the five line charts.
    let bands = |arm: &str| {
        tags_with_class(&dom, "band")
            .iter()
            .filter(|t| t.contains(arm))
            .count()
    };
    assert_eq!((bands("platform"), bands("control")), (5, 5));
    // The RTT axis: ticks read apart, in ms.
    let rtt = &dom[dom.find(r#"data-chart="RTT""#).expect("the RTT chart")..];
    let rtt = &rtt[..rtt.find("</figure>").unwrap()];
    let ticks: Vec<&str> = rtt
        .split(r#"class="tick">"#)
        .skip(1)
        .map(|t| t.split('<').next().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = ticks.iter().collect();
    assert!(
        ticks.len() >= 3
            && distinct.len() == ticks.len()
            && ticks.iter().all(|t| t.ends_with(" ms")),
        "{ticks:?}"
    );
    // The hourly table names hours.
    assert!(dom.contains("Table of hourly values") && dom.contains("hour (UTC)"));
    // Networks by name beside their number: in the heading, the grid and the events list.
    assert!(dom.contains("AS12389 ROSTELECOM-AS"), "{dom}");
    assert!(
        dom.contains(r#"data-asn-name="8359">MTS<"#),
        "the grid's network rows"
    );
    let (status, names) =
        callwatch_tests::http::get(c.http_addr, "/api/v1/networks?asn=12389,AS8359,64999")
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&names).unwrap(),
        json!({"networks": {"12389": "ROSTELECOM-AS", "8359": "MTS"}})
    );
    let many = (0..201)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for bad in [
        "".to_string(),
        "?asn=x".into(),
        "?asn=1&x=2".into(),
        format!("?asn={many}"),
    ] {
        let (status, body) =
            callwatch_tests::http::get(c.http_addr, &format!("/api/v1/networks{bad}"))
                .await
                .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
    }
    c.shutdown().await;
}
