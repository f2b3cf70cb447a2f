//! The Go binding (bindings/go) tested from Go: `go vet ./...` and `go test ./...` run in
//! bindings/go (with Go >= 1.21 both with matrices pinned in place and, with the
//! `transferlens_copy` tag, through the copying path of older toolchains), and the example
//! programs bindings/go/examples/cka, params and cnn run and print values checked against f64
//! references written here (the CNN example against the same run through the Rust API). Skipped,
//! saying why, when no Go toolchain is installed.

mod bindings_common;
mod common;
mod scratch;

use bindings_common::{
    check_cnn_example_output, check_params_example_output, library_dir, root, run_checked, target_dirs,
};
use common::{assert_close, reference_cka_feature, Dense};
use std::path::PathBuf;
use std::process::Command;

/// `go` with the environment the binding needs: cgo on, linked to the library this test run
/// built, caches inside the cargo target folder when the caller has none (CI may have no HOME),
/// and no toolchain download.
fn go(lib: &PathBuf, args: &[&str]) -> Command {
    let (target, _) = target_dirs();
    let mut cmd = Command::new("go");
    cmd.args(args).current_dir(root().join("bindings/go"));
    cmd.env("CGO_ENABLED", "1").env("GOTOOLCHAIN", "local").env("GOFLAGS", "-mod=mod");
    // The library of this profile first (the package's own #cgo flags name target/release).
    cmd.env("CGO_LDFLAGS", format!("-L{0} -Wl,-rpath,{0}", lib.display()));
    cmd.env("LD_LIBRARY_PATH", lib);
    if std::env::var_os("GOCACHE").is_none() {
        cmd.env("GOCACHE", target.join("go-cache"));
    }
    if std::env::var_os("GOPATH").is_none() && std::env::var_os("HOME").is_none() {
        cmd.env("GOPATH", target.join("go-path"));
    }
    cmd
}

/// The toolchain's version as (major, minor), or None when `go` is missing.
fn go_version() -> Option<(u32, u32)> {
    let out = Command::new("go").args(["env", "GOVERSION"]).env("GOTOOLCHAIN", "local").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().trim_start_matches("go");
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[test]
fn go_binding_vets_and_passes_its_tests() {
    let Some(version) = go_version() else {
        println!("go is not installed: the Go binding tests were skipped (.ci/run installs golang-go)");
        return;
    };
    let lib = library_dir();
    println!("go {}.{}", version.0, version.1);
    let out = run_checked(&mut go(&lib, &["vet", "./..."]), "go vet ./... in bindings/go");
    print!("{out}");
    let out = run_checked(&mut go(&lib, &["test", "-count=1", "./..."]), "go test ./... in bindings/go");
    print!("{out}");
    assert!(out.contains("ok") && out.contains("transferlens"), "go test printed no result:\n{out}");
    if version >= (1, 21) {
        // The default build pins slices; the copying path of Go < 1.21 is tested by its tag.
        let out = run_checked(
            &mut go(&lib, &["test", "-count=1", "-tags", "transferlens_copy", "./..."]),
            "go test -tags transferlens_copy ./... in bindings/go",
        );
        print!("{out}");
    }
}

#[test]
fn go_example_matches_the_reference() {
    if go_version().is_none() {
        println!("go is not installed: the Go example was skipped");
        return;
    }
    let lib = library_dir();
    let out = run_checked(&mut go(&lib, &["run", "./examples/cka"]), "go run ./examples/cka");
    print!("{out}");
    // The data of the example (and of the C example in the README).
    let a = [0.1f32, 1.2, -0.3, 0.8, -0.5, 0.9, -1.1, 0.4, 0.2, 0.6, 0.3, -0.7, -0.2, -0.9, 1.4, 0.5, 0.7, 0.1];
    let b = [0.3f32, 1.0, 0.9, -0.2, -1.0, 0.6, 0.4, 0.5, -0.1, -1.2, 0.6, 0.8];
    let x = Dense { rows: 6, cols: 3, data: a.iter().map(|&v| v as f64).collect() };
    let y = Dense { rows: 6, cols: 2, data: b.iter().map(|&v| v as f64).collect() };
    let want = reference_cka_feature(&x, &y, true);
    let value = |prefix: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' in:\n{out}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_close(value("debiased linear CKA = "), want, 1e-6, "go example, one call");
    assert_close(value("streamed in 2 batches = "), want, 1e-6, "go example, streamed");
    assert!(out.contains("rows differ: transferlens: TL_STATUS_SHAPE_MISMATCH: "), "{out}");
}

#[test]
fn go_params_example_matches_the_reference() {
    if go_version().is_none() {
        println!("go is not installed: the Go parameter-set example was skipped");
        return;
    }
    let lib = library_dir();
    let out = run_checked(&mut go(&lib, &["run", "./examples/params"]), "go run ./examples/params");
    print!("{out}");
    check_params_example_output(&out, "go run ./examples/params");
}

#[test]
fn go_cnn_example_matches_the_rust_api() {
    if go_version().is_none() {
        println!("go is not installed: the Go CNN example was skipped");
        return;
    }
    let lib = library_dir();
    let out = run_checked(&mut go(&lib, &["run", "./examples/cnn"]), "go run ./examples/cnn");
    print!("{out}");
    check_cnn_example_output(&out, "go run ./examples/cnn");
}
