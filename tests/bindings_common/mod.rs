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

/// The toy checkpoints of the parameter-set examples (bindings/cpp/examples/rewind.cpp,
/// bindings/go/examples/params, bindings/julia/TransferLens/examples/params.jl): tensors
/// encoder.weight (12), encoder.bias (3), head.weight (6), as the examples store them (f32).
pub fn params_example_checkpoint(step: f64) -> Vec<Vec<f64>> {
    [12usize, 3, 6]
        .iter()
        .enumerate()
        .map(|(t, &n)| {
            (0..n)
                .map(|i| {
                    let (i, t) = (i as f64, t as f64);
                    (0.5 * (1.0 + 0.7 * i + 2.0 * t).sin() + step * 0.05 * (t + 1.0) * (0.3 * i + t).cos()) as f32
                        as f64
                })
                .collect()
        })
        .collect()
}

/// Checks the output of the C++ and Go parameter-set examples against an f64 reference:
/// per-module distance, relative distance and cosine (modules encoder and head), the total, the
/// distance left by rewinding each module, and the halfway point.
pub fn check_params_example_output(out: &str, what: &str) {
    let (pre, tuned) = (params_example_checkpoint(0.0), params_example_checkpoint(1.0));
    let modules = [("encoder", vec![0usize, 1]), ("head", vec![2])];
    let sums = |idx: &[usize]| {
        let (mut dd, mut aa, mut bb, mut ab) = (0.0, 0.0, 0.0, 0.0);
        for &t in idx {
            for (x, y) in pre[t].iter().zip(&tuned[t]) {
                dd += (x - y) * (x - y);
                aa += x * x;
                bb += y * y;
                ab += x * y;
            }
        }
        (dd, aa, bb, ab)
    };
    // The numbers of the line that starts with `prefix`, in order.
    let numbers = |prefix: &str| -> Vec<f64> {
        let line =
            out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{what}: no '{prefix}' in:\n{out}"));
        line[prefix.len()..].split([' ', ',']).filter_map(|w| w.parse::<f64>().ok()).collect()
    };
    let close = |got: f64, want: f64, label: &str| {
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{what}: {label} = {got}, expected {want}\n{out}");
    };
    let mut total = 0.0;
    for (name, idx) in &modules {
        let (dd, aa, bb, ab) = sums(idx);
        total += dd;
        let got = numbers(&format!("{name}: "));
        assert_eq!(got.len(), 3, "{what}: {name}: {got:?}");
        close(got[0], dd.sqrt(), &format!("{name} distance"));
        close(got[1], (dd / aa).sqrt(), &format!("{name} relative"));
        close(got[2], ab / (aa * bb).sqrt(), &format!("{name} cosine"));
        close(numbers(&format!("rewound {name}: "))[0], dd.sqrt(), &format!("rewound {name}"));
    }
    close(numbers("total: ")[0], total.sqrt(), "total distance");
    let halfway = numbers("halfway: ");
    close(halfway[0], 0.5 * total.sqrt(), "halfway distance");
    close(halfway[1], 0.5 * pre[2][0] + 0.5 * tuned[2][0], "head.weight[0] halfway");
}
