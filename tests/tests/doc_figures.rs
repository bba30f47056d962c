//! Every published figure comes from a command, and says so. Each Markdown table in the
//! repository's documentation is announced by a comment on the line before it:
//!
//! - `<!-- table: reference -->` — written by hand, no measured figure in it; or
//! - `<!-- figures: command="…" run="YYYY-MM-DD" check="…" -->` — the output of `command`, run on
//!   that date; `check` names the test that regenerates the table (or its lines) and fails on a
//!   difference (`tests/tests/file.rs::test_name`), or says `not regenerated: why` for the
//!   expensive ones (benchmarks, fuzzing, root-only labs).
//!
//! This test fails on a table without such a comment, a command naming no program of the
//! repository, a date that is not one or lies ahead, and a check naming a test that does not
//! exist or never reads the document it is said to keep true.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The documentation: Markdown at the top, in docs/, and each folder's README.
fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("docs")] {
        for entry in std::fs::read_dir(&dir).expect("a folder") {
            let p = entry.expect("an entry").path();
            if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    for dir in [
        "fuzz",
        "tests",
        "tests/lab",
        "tests/ndpi",
        "tests/bench",
        "packaging",
    ] {
        let p = root.join(dir).join("README.md");
        if p.exists() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The value of `key="…"` in a marker.
fn field<'a>(marker: &'a str, key: &str) -> Option<&'a str> {
    let start = marker.find(&format!("{key}=\""))? + key.len() + 2;
    let len = marker[start..].find('"')?;
    Some(&marker[start..start + len])
}

/// The binaries the workspace builds.
fn binaries() -> Vec<String> {
    let mut out = Vec::new();
    for krate in ["agent", "collector", "tests", "reflector"] {
        let Ok(text) = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")) else {
            continue;
        };
        let mut in_bin = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_bin = line.trim() == "[[bin]]";
            } else if let (true, Some(name)) = (in_bin, line.strip_prefix("name = ")) {
                out.push(name.trim_matches('"').to_string());
            }
        }
    }
    out
}

/// What is wrong with a `figures` marker, if anything.
fn figures_problem(marker: &str, doc: &Path, bins: &[String]) -> Option<String> {
    let command = field(marker, "command")?;
    let program = command.split_whitespace().next().unwrap_or("");
    let runs = program == "cargo"
        || bins.iter().any(|b| b == program)
        || workspace().join(program).is_file();
    if !runs {
        return Some(format!(
            "command {command:?}: {program:?} is no program of the repository"
        ));
    }
    let run = field(marker, "run").unwrap_or("");
    let date = match chrono::NaiveDate::parse_from_str(run, "%Y-%m-%d") {
        Ok(d) => d,
        Err(_) => return Some(format!("run {run:?} is not a date (YYYY-MM-DD)")),
    };
    if date > chrono::Utc::now().date_naive() {
        return Some(format!("run {run} lies ahead"));
    }
    let check = field(marker, "check").unwrap_or("");
    if let Some(why) = check.strip_prefix("not regenerated: ") {
        return (why.len() < 10).then(|| format!("check {check:?}: say why"));
    }
    let Some((file, test)) = check.split_once("::") else {
        return Some(format!(
            "check {check:?}: expected file.rs::test or \"not regenerated: why\""
        ));
    };
    let Ok(source) = std::fs::read_to_string(workspace().join(file)) else {
        return Some(format!("check {check:?}: no file {file}"));
    };
    if !source.contains(&format!("fn {test}(")) {
        return Some(format!("check {check:?}: {file} has no fn {test}"));
    }
    let name = doc.file_name().unwrap_or_default().to_string_lossy();
    if !source.contains(&*name) {
        return Some(format!("check {check:?}: {file} never reads {name}"));
    }
    None
}

#[test]
fn every_table_says_whether_it_is_measured_and_how() {
    let bins = binaries();
    assert!(bins.iter().any(|b| b == "callwatch-detection"), "{bins:?}");
    let (mut tables, mut measured, mut problems) = (0, 0, Vec::new());
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        let mut in_code = false;
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            let starts_table = line.starts_with('|') && (i == 0 || !lines[i - 1].starts_with('|'));
            if in_code || !starts_table {
                continue;
            }
            tables += 1;
            let at = format!("{}:{}", doc.display(), i + 1);
            let marker = if i > 0 { lines[i - 1].trim() } else { "" };
            if marker == "<!-- table: reference -->" {
                continue;
            }
            match marker
                .strip_prefix("<!-- figures: ")
                .and_then(|m| m.strip_suffix(" -->"))
            {
                Some(m) => {
                    measured += 1;
                    match (field(m, "command"), figures_problem(m, &doc, &bins)) {
                        (None, _) => problems.push(format!("{at}: the marker names no command")),
                        (_, Some(p)) => problems.push(format!("{at}: {p}")),
                        _ => {}
                    }
                }
                None => problems.push(format!(
                    "{at}: a table without <!-- table: reference --> or <!-- figures: command=… \
                     run=… check=… --> on the line before it"
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        tables >= 20 && measured >= 10,
        "{tables} tables, {measured} measured"
    );
}

#[test]
fn the_marker_check_catches_what_it_must() {
    let bins = vec!["callwatch-load".to_string()];
    let doc = workspace().join("RELIABILITY.md");
    let ok = r#"command="callwatch-load ingest" run="2026-11-29" check="not regenerated: a long benchmark""#;
    assert_eq!(figures_problem(ok, &doc, &bins), None);
    for bad in [
        r#"command="made-up-tool" run="2026-11-29" check="not regenerated: a long benchmark""#,
        r#"command="cargo run" run="yesterday" check="not regenerated: a long benchmark""#,
        r#"command="cargo run" run="2999-01-01" check="not regenerated: a long benchmark""#,
        r#"command="cargo run" run="2026-11-29" check="not regenerated: ""#,
        r#"command="cargo run" run="2026-11-29" check="tests/tests/amplification.rs::no_such_test""#,
        r#"command="cargo run" run="2026-11-29" check="tests/tests/layers.rs::the_cycle_finder_finds_a_cycle""#,
    ] {
        assert!(figures_problem(bad, &doc, &bins).is_some(), "{bad}");
    }
}
