// The git commit a binary is built from, for `--version` and the collector's `/metrics`:
// included by agent/build.rs and collector/build.rs. `unknown` outside a git checkout (a source
// tarball) or without git. The build script runs again when HEAD or the branch it names moves.

fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=build.rs");
    if let (Some(git_dir), Some(common)) = (
        git(&dir, &["rev-parse", "--absolute-git-dir"]),
        git(&dir, &["rev-parse", "--git-common-dir"]),
    ) {
        let common = std::path::Path::new(&dir).join(common);
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        // Only files that exist: cargo takes a missing one as changed on every build, which
        // rebuilt both programs at each `cargo build` (and each test's built_binary) in a
        // repository without packed-refs. A branch packed later removes its loose file, which
        // is watched.
        let mut watch = vec![common.join("packed-refs")];
        if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(common.join(branch));
        }
        for file in watch.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    let commit = git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CALLWATCH_GIT_COMMIT={commit}");
}
