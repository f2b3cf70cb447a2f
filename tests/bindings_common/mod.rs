//! Helpers shared by the binding tests (tests/bindings_*.rs): the freshly built cdylib, running
//! commands with their output in the failure message, and a scratch folder per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target folder and profile folder of this test run (test binaries live in
/// `<target>/<profile>/deps`).
pub fn target_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let target = profile.parent().expect("target folder").to_path_buf();
    (target, profile)
}

/// The folder holding libtransferlens.so and .a for this profile, after building them:
/// `cargo test` builds the library as an rlib for the tests, not necessarily the cdylib and
/// staticlib, which would otherwise be missing or stale.
pub fn library_dir() -> PathBuf {
    let (target, profile) = target_dirs();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--lib", "--quiet", "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    if profile.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    run_checked(&mut cargo, "cargo build --lib (for the cdylib)");
    assert!(profile.join("libtransferlens.so").exists(), "{} has no libtransferlens.so", profile.display());
    profile
}

/// Runs the command; panics with its whole output when it fails. Returns stdout.
pub fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Whether `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// A fresh scratch folder for one test of this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
