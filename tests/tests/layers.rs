//! The layers docs/ARCHITECTURE.md draws, kept true: within each crate no two top-level modules
//! import each other (directly or round a longer loop), and the collector's domain imports
//! nothing of the collector outside itself (no store, HTTP, geo lookup or I/O module).
//!
//! A module's imports are the `crate::<module>` paths in its code, comments and its test module
//! left out; a `super::` path never leaves the module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its code names as `crate::<name>`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a path");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let is_test_file = rel
            .file_name()
            .is_some_and(|n| n == "tests.rs" || n == "proptests.rs");
        if matches!(top.as_str(), "lib" | "main" | "bin") || is_test_file {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let deps = graph.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// Every pair of modules that reach each other.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let mut out = Vec::new();
    for a in graph.keys() {
        for b in reach(a) {
            if a < &b && reach(&b).contains(a) {
                out.push((a.clone(), b));
            }
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(workspace()).expect("the workspace") {
        let src = entry.expect("an entry").path().join("src");
        if src.join("lib.rs").exists() {
            crates.push(src);
        }
    }
    assert!(crates.len() >= 4, "found only {crates:?}");
    let mut modules = 0;
    for src in crates {
        let graph = module_graph(&src);
        modules += graph.len();
        assert_eq!(
            cycles(&graph),
            Vec::new(),
            "{}: modules import each other",
            src.display()
        );
    }
    assert!(
        modules >= 30,
        "only {modules} modules found: is the scan reading the sources?"
    );
}

#[test]
fn the_collector_domain_imports_no_other_collector_module() {
    let graph = module_graph(&workspace().join("collector/src"));
    let domain = graph.get("domain").expect("collector/src/domain exists");
    assert_eq!(
        domain,
        &BTreeSet::new(),
        "the domain must not import store, HTTP or I/O modules"
    );
    assert!(
        graph["store"].contains("domain"),
        "the stores are adapters of the domain"
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    // The checks above are only as good as this.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(
        cycles(&g),
        vec![
            ("a".into(), "b".into()),
            ("a".into(), "c".into()),
            ("b".into(), "c".into())
        ]
    );
}
