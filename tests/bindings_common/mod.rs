//! Helpers shared by the binding tests (tests/bindings_*.rs): the freshly built cdylib, running
//! commands with their output in the failure message, and a scratch folder per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::scratch::Scratch;

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
pub fn scratch(name: &str) -> Scratch {
    Scratch::new(name)
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

/// The CNN examples (bindings/cpp/examples/cnn.cpp, bindings/go/examples/cnn,
/// bindings/julia/TransferLens/examples/cnn.jl) all build this CNN.
pub const CNN_EXAMPLE_SPEC: &str = r#"{"input": [1, 4, 4], "classes": 2, "layers": [
    {"type": "conv", "name": "conv1", "out": 4, "kernel": 3, "padding": 1},
    {"type": "groupnorm", "name": "gn1", "groups": 2}, {"type": "relu"},
    {"type": "global_avgpool"}, {"type": "dense", "name": "fc", "out": 2}]}"#;

/// The CNN examples' 16 images of 1 x 4 x 4 (NCHW) and their labels.
pub fn cnn_example_data() -> transferlens::model::Dataset {
    let mut x = Vec::new();
    let labels: Vec<u32> = (0..16).map(|r| r % 2).collect();
    for (r, &label) in labels.iter().enumerate() {
        for p in 0..16 {
            let bright = if (p < 8) == (label == 1) { 1.0f32 } else { -1.0 };
            x.push(bright + 0.25 * ((r * 7 + p * 3) % 5) as f32 - 0.5);
        }
    }
    transferlens::model::Dataset::new(x, labels, 16, 2).unwrap()
}

/// Checks the output of a CNN example against the same run through the Rust API: the epoch
/// losses of training (6 epochs, batch 4, lr 0.1, seed 3, cosine schedule, from init seed 1), the
/// error before and after, and the debiased CKA of conv1's activations before and after against
/// an f64 reference.
pub fn check_cnn_example_output(out: &str, what: &str) {
    use crate::common::{reference_cka_feature, Dense};
    use transferlens::model::{Cnn, LrSchedule, TrainOptions};
    let cnn = Cnn::from_json(CNN_EXAMPLE_SPEC).unwrap();
    let data = cnn_example_data();
    let initial = cnn.init(1).unwrap();
    let mut trained = initial.try_clone().unwrap();
    let opts =
        TrainOptions { epochs: 6, batch: 4, lr: 0.1, seed: 3, schedule: LrSchedule::Cosine, ..TrainOptions::default() };
    let losses = cnn.train(&mut trained, &data, &opts).unwrap();
    let numbers = |prefix: &str| -> Vec<f64> {
        let line =
            out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{what}: no '{prefix}' in:\n{out}"));
        line[prefix.len()..].split([' ', ',', '[', ']']).filter_map(|w| w.parse::<f64>().ok()).collect()
    };
    let close = |got: f64, want: f64, tol: f64, label: &str| {
        assert!((got - want).abs() <= tol * want.abs().max(1.0), "{what}: {label} = {got}, expected {want}\n{out}");
    };
    let printed = numbers("epoch losses: ");
    assert_eq!(printed.len(), losses.len(), "{what}: epoch losses {printed:?}\n{out}");
    for (e, (&got, &want)) in printed.iter().zip(&losses).enumerate() {
        close(got, want, 1e-9, &format!("loss of epoch {e}"));
    }
    assert!(losses[5] < losses[0], "the example's training lowers the loss: {losses:?}");
    let errors = numbers("error: ");
    close(errors[0], cnn.evaluate(&initial, &data).unwrap().error, 1e-12, "error before");
    close(errors[1], cnn.evaluate(&trained, &data).unwrap().error, 1e-12, "error after");
    let conv1 = |p| -> Dense {
        let acts = cnn.activations(p, &data).unwrap().swap_remove(0);
        Dense { rows: 16, cols: acts.len() / 16, data: acts.iter().map(|&v| v as f64).collect() }
    };
    let want = reference_cka_feature(&conv1(&initial), &conv1(&trained), true);
    close(numbers("CKA(conv1 initial, conv1 trained) = ")[0], want, 1e-6, "CKA");
}
