//! `tlens curve`, `tlens rewind` and `tlens criticality` through `--eval-server`, with the numpy
//! server of examples/ evaluating the library's MLP: the same figures as the same analyses run
//! in the library (the built-in MLP evaluator, and an f64 forward written here that does what the
//! numpy server does). And servers that fail, crash, hang or print garbage.
//!
//! Needs python3 with numpy; `TL_PYTHON` names another interpreter (CI's has numpy). Without
//! one the tests fail, saying so.

mod common;
mod scratch;

use common::python_with_numpy;
use std::path::Path;
use std::process::{Command, Output};
use transferlens::criticality::{self, Options, Path as CritPath, Search};
use transferlens::eval::{FnEvaluator, Metrics, MlpEvaluator};
use transferlens::model::{Dataset, Mlp, TrainOptions};
use transferlens::params::ParamSet;
use transferlens::tensor::HostSlice;
use transferlens::{landscape, Context};

fn server_command(data: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/eval_server_numpy.py");
    format!("'{}' '{}' '{}'", python_with_numpy("the eval-server tests need"), script.display(), data.display())
}

/// A folder of its own per test; tlens's temporary files go there too (TMPDIR).
fn dir(tag: &str) -> scratch::Scratch {
    let d = scratch::Scratch::new(&format!("eval-{tag}"));
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    d
}

fn tlens(d: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).env("TMPDIR", d.join("tmp")).output().expect("tlens runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "tlens failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An MLP, its initial and trained weights and data, saved in `d`: (mlp, init, final, data).
fn model(d: &Path) -> (Mlp, ParamSet, ParamSet, Dataset) {
    let (n, dim, classes) = (120, 6, 3);
    let mut x = vec![0f32; n * dim];
    transferlens::rng::normals_f32(5, 0, 0, &mut x);
    let y: Vec<u32> = (0..n)
        .map(|i| {
            let r = &x[i * dim..(i + 1) * dim];
            ((r[0] + 0.5 * r[1] - r[2]).abs() * 2.0) as u32 % classes as u32
        })
        .collect();
    let data = Dataset::new(x.clone(), y.clone(), dim, classes).unwrap();
    let mlp = Mlp::new(&[dim, 16, classes]).unwrap();
    let init = mlp.init(1).unwrap();
    let mut fin = init.try_clone().unwrap();
    mlp.train(&mut fin, &data, &TrainOptions { epochs: 15, ..Default::default() }).unwrap();
    init.save(d.join("init.safetensors")).unwrap();
    fin.save(d.join("final.safetensors")).unwrap();
    // The data as the numpy server reads it: x F32 [n, dim], y I64 [n].
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let yb: Vec<u8> = y.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
    let header = serde_json::json!({
        "x": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, xb.len()]},
        "y": {"dtype": "I64", "shape": [n], "data_offsets": [xb.len(), xb.len() + yb.len()]},
    })
    .to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend(xb);
    file.extend(yb);
    std::fs::write(d.join("data.safetensors"), file).unwrap();
    (mlp, init, fin, data)
}

/// The numpy server's forward, in f64: the reference for analyses whose decisions depend on the
/// exact 0-1 error.
fn f64_metrics(p: &ParamSet, data: &Dataset) -> Metrics {
    let vals = |name: &str| -> Vec<f64> {
        match p.tensor(name).unwrap().host().unwrap() {
            HostSlice::F32(v) => v.iter().map(|&x| x as f64).collect(),
            _ => panic!("the test's MLP is F32"),
        }
    };
    let (w1, b1, w2, b2) = (vals("fc1.weight"), vals("fc1.bias"), vals("fc2.weight"), vals("fc2.bias"));
    let (dim, hidden, classes) = (data.dim, b1.len(), b2.len());
    let (mut loss, mut wrong) = (0.0, 0);
    for i in 0..data.n {
        let x = &data.x[i * dim..(i + 1) * dim];
        let h: Vec<f64> = (0..hidden)
            .map(|o| (b1[o] + (0..dim).map(|k| w1[o * dim + k] * x[k] as f64).sum::<f64>()).max(0.0))
            .collect();
        let z: Vec<f64> =
            (0..classes).map(|o| b2[o] + (0..hidden).map(|k| w2[o * hidden + k] * h[k]).sum::<f64>()).collect();
        let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = top + z.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
        loss += lse - z[data.y[i] as usize];
        let arg = z.iter().position(|&v| v == top).unwrap();
        wrong += usize::from(arg != data.y[i] as usize);
    }
    let error = wrong as f64 / data.n as f64;
    Metrics { loss: loss / data.n as f64, error, accuracy: 1.0 - error }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

fn assert_no_temporaries(d: &Path) {
    let left: Vec<_> = std::fs::read_dir(d.join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn curve_through_the_numpy_server_equals_the_built_in_evaluator() {
    let d = dir("curve");
    let (mlp, init, fin, data) = model(&d);
    let server = server_command(&d.join("data.safetensors"));
    let lambdas = "-1,-0.5,0,0.25,0.5,0.75,1,1.5,2";
    let v = json(&tlens(
        &d,
        &[
            "curve",
            s(&d.join("init.safetensors")),
            s(&d.join("final.safetensors")),
            "--lambdas",
            lambdas,
            "--eval-server",
            &server,
            "--json",
        ],
    ));
    let grid: Vec<f64> = lambdas.split(',').map(|x| x.parse().unwrap()).collect();
    let mut ev = MlpEvaluator::new(mlp, data);
    let ctx = Context::cpu();
    let mut live = init.try_clone().unwrap();
    let want = landscape::interpolation_curve(&ctx, &mut ev, &init, &fin, &mut live, &grid, None).unwrap();
    assert_eq!(v["lambdas"].as_array().unwrap().len(), grid.len());
    for (k, m) in want.iter().enumerate() {
        let (loss, error) = (v["loss"][k].as_f64().unwrap(), v["error"][k].as_f64().unwrap());
        // The server computes in f64, the built-in MLP in f32.
        assert!(close(loss, m.loss, 1e-5), "lambda {}: loss {loss} vs {}", grid[k], m.loss);
        assert_eq!(error, m.error, "lambda {}", grid[k]);
    }
    let b = landscape::curve_barrier(&grid, &want, transferlens::eval::Metric::Loss, 0.01).unwrap();
    assert!(close(v["barrier"]["loss"]["value"].as_f64().unwrap(), b.value, 1e-4));
    assert_eq!(v["barrier"]["loss"]["peak_lambda"].as_f64().unwrap(), b.peak_lambda);
    assert!(v["barrier"]["error"]["same_basin"].is_boolean());
    assert_eq!(v["evaluations"], grid.len());
    assert!(v["error"][0].as_f64().unwrap() > v["error"][6].as_f64().unwrap(), "training lowered the error");
    // One module moved, as text.
    let out = tlens(
        &d,
        &[
            "curve",
            s(&d.join("init.safetensors")),
            s(&d.join("final.safetensors")),
            "--lambdas",
            "0,0.5,1",
            "--module",
            "fc2",
            "--eval-server",
            &server,
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && text.contains("module fc2 moved") && text.contains("barrier (loss)"), "{text}");
    assert_no_temporaries(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn rewind_and_criticality_through_the_numpy_server_equal_the_library() {
    let d = dir("crit");
    let (_, init, fin, data) = model(&d);
    let server = server_command(&d.join("data.safetensors"));
    let (pi, pf) = (d.join("init.safetensors"), d.join("final.safetensors"));
    let ctx = Context::cpu();
    let mut reference = FnEvaluator(|p: &ParamSet| Ok(f64_metrics(p, &data)));

    let v = json(&tlens(&d, &["rewind", s(&pi), s(&pf), "--alphas", "1,0.5,0", "--eval-server", &server, "--json"]));
    let alphas = [1.0, 0.5, 0.0];
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 2);
    for (m, got) in modules.iter().enumerate() {
        let mut live = fin.try_clone().unwrap();
        let want = criticality::rewind_curve(&ctx, &mut reference, &init, &fin, &mut live, m, &alphas).unwrap();
        assert_eq!(got["name"], fin.modules()[m].name.as_str());
        for (k, w) in want.iter().enumerate() {
            assert!(close(got["loss"][k].as_f64().unwrap(), w.loss, 1e-12), "{got}");
            assert_eq!(got["error"][k].as_f64().unwrap(), w.error);
        }
    }

    let args = ["--alphas", "3", "--noise-samples", "3", "--repeats", "2", "--samples", "120"];
    let v =
        json(&tlens(&d, &[&["criticality", s(&pi), s(&pf), "--eval-server", &server, "--json"][..], &args].concat()));
    let opts = Options {
        search: Search::Refined { alphas: 3, tolerance: 0.02, alpha_steps: 6 },
        samples: 3,
        repeats: 2,
        ..Options::default()
    };
    let mut live = fin.try_clone().unwrap();
    let path = CritPath::Straight { init: &init, final_: &fin };
    let net = criticality::network_criticality(&ctx, &mut reference, path, &mut live, &opts).unwrap();
    assert_eq!(v["metric"], "error");
    assert_eq!(v["eps"].as_f64().unwrap(), net.eps);
    for (got, want) in v["modules"].as_array().unwrap().iter().zip(&net.modules) {
        assert_eq!(got["name"], want.module.as_str());
        assert_eq!(got["feasible"], want.feasible);
        assert_eq!(got["points"].as_u64().unwrap() as usize, want.points);
        let fields = [
            ("alpha", want.alpha),
            ("sigma", want.sigma),
            ("expected", want.expected),
            ("rewound_metric", want.rewound_metric),
            ("rewind_area", want.rewind_area),
        ];
        for (key, w) in fields {
            let g = got[key].as_f64().unwrap();
            assert!(close(g, w, 1e-9), "{}: {key} {g} vs {w}", want.module);
        }
        if want.feasible {
            assert!(close(got["value"].as_f64().unwrap(), want.value, 1e-9));
        }
    }
    let bound = criticality::pac_bayes(&net, 120, 0.05, None).unwrap();
    if bound.value.is_finite() {
        assert!(close(v["bound"]["value"].as_f64().unwrap(), bound.value, 1e-9));
    } else {
        assert!(v["bound"]["value"].is_null());
    }
    assert!(v["evaluations"].as_u64().unwrap() > 10);
    assert_no_temporaries(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_server_that_fails_crashes_hangs_or_prints_garbage_is_a_clear_error() {
    let d = dir("bad");
    model(&d);
    let (pi, pf) = (d.join("init.safetensors"), d.join("final.safetensors"));
    let run = |server: &str, extra: &[&str]| {
        let out =
            tlens(&d, &[&["curve", s(&pi), s(&pf), "--lambdas", "0,1", "--eval-server", server][..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{server}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let last = |err: &str| err.trim_end().lines().last().unwrap_or("").to_string();
    // A failure: the server's words, the checkpoint; the server's stderr passes through.
    let err =
        run("echo 'loading the model' >&2; while read l; do echo '{\"failure\": \"CUDA out of memory\"}'; done", &[]);
    assert!(err.contains("loading the model"), "stderr passes through: {err}");
    let e = last(&err);
    assert!(e.contains("CUDA out of memory") && e.contains("candidate-1.safetensors"), "{e}");
    // A crash.
    let e = last(&run("read l; exit 3", &[]));
    assert!(e.contains("exited without answering") && e.contains("3") && e.contains("checkpoint"), "{e}");
    // Garbage, and an answer without a metric the command needs.
    let e = last(&run("while read l; do echo 'hello there'; done", &[]));
    assert!(e.contains("not JSON") && e.contains("hello there"), "{e}");
    let e = last(&run("while read l; do echo '{\"error\": 0.5}'; done", &[]));
    assert!(e.contains("\"loss\" is missing"), "{e}");
    // ...which is fine when only the error is asked for.
    let out = tlens(
        &d,
        &[
            "curve",
            s(&pi),
            s(&pf),
            "--lambdas",
            "0,1",
            "--metrics",
            "error",
            "--json",
            "--eval-server",
            "while read l; do echo '{\"error\": 0.5}'; done",
        ],
    );
    let v = json(&out);
    assert!(v.get("loss").is_none() && v["error"][1] == 0.5);
    // A hang: killed at the timeout, with its child processes.
    let t0 = std::time::Instant::now();
    let e = last(&run("sleep 60", &["--eval-timeout", "1"]));
    assert!(e.contains("no answer within 1 s"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the hang was cut short");
    assert_no_temporaries(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sigterm_while_the_server_evaluates_ends_it_and_removes_the_candidates() {
    let d = dir("sigterm");
    model(&d);
    let marker = d.join("server-started");
    // The server notes that it has a request, then never answers.
    let server = format!("while read l; do touch '{}'; sleep 60; done", marker.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlens"))
        .args(["curve", s(&d.join("init.safetensors")), s(&d.join("final.safetensors")), "--lambdas", "0,1"])
        .args(["--eval-server", &server])
        .env("TMPDIR", d.join("tmp"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !marker.exists() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the server never got a request");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(std::fs::read_dir(d.join("tmp")).unwrap().next().is_some(), "a candidate exists while it is evaluated");
    // SAFETY: a plain kill(2) of the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "tlens ends by the signal: {status}");
    assert_no_temporaries(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_evaluating_commands_have_examples_and_bad_usage_is_exit_2() {
    let d = dir("usage");
    for cmd in ["curve", "rewind", "criticality"] {
        let out = tlens(&d, &[cmd, "--help"]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && text.contains("Example") && text.contains("--eval-server"), "{cmd}: {text}");
        // Without a server.
        assert_eq!(tlens(&d, &[cmd, "a", "b"]).status.code(), Some(2), "{cmd}");
    }
    let bad: [&[&str]; 5] = [
        &["curve", "a", "b", "--eval-server", "x", "--lambdas", "0,x"],
        &["curve", "a", "b", "--eval-server", "x", "--eval-timeout", "0"],
        &["rewind", "a", "b", "--eval-server", "x", "--alphas", "1,nan"],
        &["criticality", "a", "b", "--eval-server", "x", "--eps", "more:1"],
        &["criticality", "a", "b", "--eval-server", "x", "--noise", "absolute:x"],
    ];
    for args in bad {
        let out = tlens(&d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A missing checkpoint fails before any server starts.
    let out = tlens(&d, &["curve", "missing-a.safetensors", "b", "--eval-server", "touch started"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing-a.safetensors"));
    assert_no_temporaries(&d);
    std::fs::remove_dir_all(&d).unwrap();
}
