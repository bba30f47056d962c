//! Replays every seed (`corpus/<target>/`) and every past finding (`regressions/<target>/`)
//! through its target's checks, on a stable compiler and without libFuzzer: `cargo test`.

use std::path::Path;

#[test]
fn seeds_and_regressions_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut seeds, mut regressions) = (0, 0);
    for target in callwatch_fuzz::TARGETS {
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                eprintln!("{target}: {}", path.display());
                assert!(callwatch_fuzz::run(target, &bytes));
                if folder == "corpus" {
                    seeds += 1;
                } else {
                    regressions += 1;
                }
            }
        }
    }
    assert!(seeds > 0, "no corpus found");
    assert!(regressions > 0, "no regressions found");
}
