// See build-support/git_commit.rs.
include!("../build-support/git_commit.rs");
