//! Stamps the binary with the git commit it was built from, when there is one.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SKYWAVE_BUILD_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("SKYWAVE_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=9", "HEAD"])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
    if let Some(commit) = commit {
        println!("cargo:rustc-env=SKYWAVE_GIT_COMMIT={commit}");
    }
}
