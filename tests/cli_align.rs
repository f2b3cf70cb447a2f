//! `tlens align` and `tlens curve --align`, run as a user runs them: known permutations of a
//! dense chain and of the built-in CNN recovered exactly from files, the aligned model computing
//! what B computes, and the errors, each naming the file or tensor at fault.
//!
//! The `curve --align` test runs examples/eval_server_numpy.py and needs python3 with numpy
//! (`TL_PYTHON` names another interpreter), as tests/cli_eval_server.rs does.

mod common;
mod scratch;

use common::{assert_bit_equal, python_with_numpy, random_admissible, TestRng, SMALL_CNN_SPEC};
use scratch::Scratch;
use std::path::Path;
use std::process::{Command, Output};
use transferlens::align::{apply, PermSpec};
use transferlens::model::{f32_set, Cnn, Dataset, Mlp};
use transferlens::ParamSet;

fn tlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "tlens failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// The one-line error of a failed run (exit status 1).
fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A safetensors file written by hand: F32 tensors with normal values, then an I64 buffer.
fn write_dense_chain(path: &Path, shapes: &[(String, Vec<usize>)], rng: &mut TestRng) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            data.extend_from_slice(&(rng.normal() as f32).to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let start = data.len();
    data.extend_from_slice(&7i64.to_le_bytes());
    header
        .insert("steps".into(), serde_json::json!({"dtype": "I64", "shape": [1], "data_offsets": [start, data.len()]}));
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// Writes B = A under random admissible permutations of `spec` next to A.
fn permuted_copy(spec: &PermSpec, a: &ParamSet, path: &Path, seed: u64) {
    let mut rng = TestRng::new(seed);
    let perms: Vec<Vec<usize>> = spec.groups.iter().map(|g| random_admissible(g, &mut rng)).collect();
    assert!(perms.iter().all(|p| p.iter().enumerate().any(|(i, &j)| i != j)), "a test permutation is the identity");
    apply(spec, a, &perms).unwrap().save(path).unwrap();
}

const CHAIN: [(&str, [usize; 2]); 3] =
    [("enc.fc1.weight", [16, 10]), ("enc.fc2.weight", [12, 16]), ("head.weight", [4, 12])];

/// Each layer's weight, then its bias.
fn chain_shapes() -> Vec<(String, Vec<usize>)> {
    let mut shapes = Vec::new();
    for (name, shape) in CHAIN {
        shapes.push((name.to_owned(), shape.to_vec()));
        shapes.push((name.replace(".weight", ".bias"), vec![shape[0]]));
    }
    shapes
}

#[test]
fn align_recovers_a_known_permutation_of_a_dense_chain() {
    let d = Scratch::new("align-chain");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("b_aligned.safetensors"));
    write_dense_chain(&pa, &chain_shapes(), &mut TestRng::new(1));
    let a = ParamSet::load(&pa).unwrap();
    let (spec, _) = PermSpec::infer(&a).unwrap();
    assert_eq!(spec.groups.len(), 2);
    permuted_copy(&spec, &a, &pb, 2);

    let v = json(&tlens(&["align", s(&pa), s(&pb), "--output", s(&out), "--json"]));
    assert_eq!(v["spec"], "inferred: a chain of dense layers");
    assert_eq!(v["method"], "weights");
    assert!(v["distance_before"].as_f64().unwrap() > 1.0);
    assert_eq!(v["distance_after"].as_f64().unwrap(), 0.0);
    assert_eq!(v["converged"], true);
    assert_eq!(v["untouched"], serde_json::json!(["head.bias", "steps"]));
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0], serde_json::json!({"name": "enc.fc1", "size": 16, "moved": true}));
    assert_eq!(groups[1], serde_json::json!({"name": "enc.fc2", "size": 12, "moved": true}));
    // The aligned B is A, bit for bit, its integer buffer included.
    assert_bit_equal(&ParamSet::load(&out).unwrap(), &a);

    // The text form says the same, and the output is replaced atomically.
    let text = tlens(&["align", s(&pa), s(&pb), "--output", s(&out)]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("l2 distance to A: before ") && text.contains(", after 0.000000"), "{text}");
    assert!(text.contains("left as they are (in no group): head.bias, steps"), "{text}");
    assert_eq!(std::fs::read_dir(&*d).unwrap().count(), 3, "no temporary file is left");
}

#[test]
fn aligned_model_computes_what_b_computes() {
    let d = Scratch::new("align-mlp");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("b_aligned.safetensors"));
    let mlp = Mlp::new(&[10, 32, 24, 5]).unwrap();
    let (a, b) = (mlp.init(1).unwrap(), mlp.init(2).unwrap());
    a.save(&pa).unwrap();
    b.save(&pb).unwrap();
    let v = json(&tlens(&["align", s(&pa), s(&pb), "--output", s(&out), "--json", "--seed", "3"]));
    let (before, after) = (v["distance_before"].as_f64().unwrap(), v["distance_after"].as_f64().unwrap());
    assert!(after < before, "alignment moved B away from A: {before} -> {after}");
    let aligned = ParamSet::load(&out).unwrap();
    // The reported distance is the distance of the written file.
    let direct = transferlens::geometry::distance(&transferlens::Context::cpu(), &a, &aligned).unwrap().total;
    assert!((direct - after).abs() <= 1e-9 * before, "{direct} vs {after}");
    let mut rng = TestRng::new(4);
    let data =
        Dataset::new((0..100 * 10).map(|_| rng.normal() as f32).collect(), (0..100).map(|i| i % 5).collect(), 10, 5)
            .unwrap();
    let (want, got) = (mlp.activations(&b, &data).unwrap(), mlp.activations(&aligned, &data).unwrap());
    let (want, got) = (want.last().unwrap(), got.last().unwrap());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = want.iter().zip(got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst <= 1e-5 * scale.max(1.0), "logits differ by {worst} (scale {scale})");
    assert_ne!(mlp.activations(&b, &data).unwrap()[0], mlp.activations(&aligned, &data).unwrap()[0]);
}

#[test]
fn align_infers_the_cnn_from_the_files_metadata() {
    let d = Scratch::new("align-cnn");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("b_aligned.safetensors"));
    let cnn = Cnn::from_json(SMALL_CNN_SPEC).unwrap();
    // Random values (an initialisation has equal GroupNorm weights, which leave ties).
    let mut rng = TestRng::new(5);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = cnn
        .tensor_shapes()
        .into_iter()
        .map(|(n, shape)| {
            let len = shape.iter().product();
            (n, shape, (0..len).map(|_| rng.normal() as f32).collect())
        })
        .collect();
    let mut a = f32_set(&tensors).unwrap();
    a.metadata_mut().insert(transferlens::model::cnn::SPEC_METADATA_KEY.into(), cnn.spec().to_json());
    a.save(&pa).unwrap();
    permuted_copy(&PermSpec::for_cnn(&cnn).unwrap(), &a, &pb, 6);
    let v = json(&tlens(&["align", s(&pa), s(&pb), "--output", s(&out), "--json"]));
    assert_eq!(v["spec"], "inferred: the built-in CNN (from the file's metadata)");
    assert_eq!(v["groups"].as_array().unwrap().len(), 5);
    assert_eq!(v["distance_after"].as_f64().unwrap(), 0.0);
    assert_eq!(v["untouched"], serde_json::json!(["fc2.bias"]));
    assert_bit_equal(&ParamSet::load(&out).unwrap(), &ParamSet::load(&pa).unwrap());
}

#[test]
fn align_with_a_spec_file_leaves_other_groups_alone() {
    let d = Scratch::new("align-spec");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("b_aligned.safetensors"));
    write_dense_chain(&pa, &chain_shapes(), &mut TestRng::new(7));
    let a = ParamSet::load(&pa).unwrap();
    let (full, _) = PermSpec::infer(&a).unwrap();
    // B permutes only the first hidden layer; a spec naming only that group recovers it.
    let only_first = PermSpec { groups: vec![full.groups[0].clone()] };
    permuted_copy(&only_first, &a, &pb, 8);
    let spec_path = d.join("spec.json");
    std::fs::write(&spec_path, only_first.to_json()).unwrap();
    let v = json(&tlens(&["align", s(&pa), s(&pb), "--output", s(&out), "--spec", s(&spec_path), "--json"]));
    assert_eq!(v["spec"], s(&spec_path));
    assert_eq!(v["distance_after"].as_f64().unwrap(), 0.0);
    assert_eq!(v["untouched"], serde_json::json!(["enc.fc2.bias", "head.weight", "head.bias", "steps"]));
    assert_bit_equal(&ParamSet::load(&out).unwrap(), &a);
}

#[test]
fn align_errors_name_the_file_and_tensor() {
    let d = Scratch::new("align-errors");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("out.safetensors"));
    write_dense_chain(&pa, &chain_shapes(), &mut TestRng::new(9));
    write_dense_chain(&pb, &chain_shapes(), &mut TestRng::new(10));
    let run = |extra: &[&str]| {
        let mut args = vec!["align", s(&pa), s(&pb), "--output", s(&out)];
        args.extend_from_slice(extra);
        tlens(&args)
    };

    // Not a dense chain, no spec: says so, names A's file and asks for --spec.
    let broken = d.join("broken.safetensors");
    let mut shapes = chain_shapes();
    shapes[2] = ("enc.fc2.weight".into(), vec![12, 15]);
    write_dense_chain(&broken, &shapes, &mut TestRng::new(11));
    let err = failure(&tlens(&["align", s(&broken), s(&pb), "--output", s(&out)]));
    assert!(err.contains(s(&broken)) && err.contains("--spec") && err.contains("\"enc.fc2.weight\""), "{err}");

    // B lacks a tensor of the spec: names B's file, the group and the tensor.
    let short = d.join("short.safetensors");
    write_dense_chain(&short, &chain_shapes()[..4], &mut TestRng::new(12));
    let err = failure(&tlens(&["align", s(&pa), s(&short), "--output", s(&out)]));
    assert!(err.contains(&format!("B ({})", s(&short))) && err.contains("\"head.weight\""), "{err}");

    // A spec file that is not JSON, or names a tensor A lacks.
    let bad = d.join("bad.json");
    std::fs::write(&bad, "{\"groups\": [").unwrap();
    let err = failure(&run(&["--spec", s(&bad)]));
    assert!(err.contains(s(&bad)) && err.contains("permutation spec"), "{err}");
    std::fs::write(&bad, r#"{"groups": [{"name": "g", "size": 16, "axes": [["nope.weight", 0]]}]}"#).unwrap();
    let err = failure(&run(&["--spec", s(&bad)]));
    assert!(err.contains(&format!("A ({})", s(&pa))) && err.contains("\"nope.weight\""), "{err}");
    let missing = d.join("missing.json");
    let err = failure(&run(&["--spec", s(&missing)]));
    assert!(err.contains(s(&missing)), "{err}");

    // The output may not be an input; activation files need the activation method.
    let err = failure(&tlens(&["align", s(&pa), s(&pb), "--output", s(&pb)]));
    assert!(err.contains("same file as B"), "{err}");
    let err = failure(&run(&["--acts-a", s(&pa)]));
    assert!(err.contains("--method activations"), "{err}");
    // A missing checkpoint.
    let err = failure(&tlens(&["align", s(&d.join("none.safetensors")), s(&pb), "--output", s(&out)]));
    assert!(err.contains("none.safetensors"), "{err}");
    assert!(!out.exists(), "a failed run wrote its output");
}

/// Writes per-group activations as a safetensors file: tensor `name`, shape `[n, units]`.
fn write_activations(path: &Path, spec: &PermSpec, acts: &[Vec<f32>], n: usize) {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        spec.groups.iter().zip(acts).map(|(g, v)| (g.name.clone(), vec![n, g.size], v.clone())).collect();
    f32_set(&tensors).unwrap().save(path).unwrap();
}

#[test]
fn align_by_activations_recovers_a_known_permutation() {
    let d = Scratch::new("align-acts");
    let (pa, pb, out) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("b_aligned.safetensors"));
    let (acts_a, acts_b) = (d.join("acts_a.safetensors"), d.join("acts_b.safetensors"));
    let mlp = Mlp::new(&[10, 16, 12, 4]).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    let mut rng = TestRng::new(15);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = mlp
        .init(0)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| (t.name().to_owned(), t.shape().to_vec(), (0..t.numel()).map(|_| rng.normal() as f32).collect()))
        .collect();
    let a = f32_set(&tensors).unwrap();
    a.save(&pa).unwrap();
    permuted_copy(&spec, &a, &pb, 16);
    let b = ParamSet::load(&pb).unwrap();
    let n = 200;
    let data = Dataset::new(
        (0..n * 10).map(|_| rng.normal() as f32).collect(),
        (0..n).map(|i| (i % 4) as u32).collect(),
        10,
        4,
    )
    .unwrap();
    let unit_acts = |p: &ParamSet| transferlens::align::activations::mlp_unit_activations(&mlp, p, &data).unwrap();
    write_activations(&acts_a, &spec, &unit_acts(&a), n);
    write_activations(&acts_b, &spec, &unit_acts(&b), n);
    let run = |acts_b: &Path| {
        tlens(&[
            "align",
            s(&pa),
            s(&pb),
            "--output",
            s(&out),
            "--method",
            "activations",
            "--acts-a",
            s(&acts_a),
            "--acts-b",
            s(acts_b),
            "--json",
        ])
    };
    let v = json(&run(&acts_b));
    assert_eq!(v["method"], "activations");
    assert_eq!(v["distance_after"].as_f64().unwrap(), 0.0);
    assert_bit_equal(&ParamSet::load(&out).unwrap(), &a);
    std::fs::remove_file(&out).unwrap();

    // Errors name the activation file and the group.
    let partial = d.join("partial.safetensors");
    f32_set(&[("fc1".into(), vec![n, 16], unit_acts(&b)[0].clone())]).unwrap().save(&partial).unwrap();
    let err = failure(&run(&partial));
    assert!(err.contains(s(&partial)) && err.contains("\"fc2\""), "{err}");
    let fewer = d.join("fewer.safetensors");
    let head = |v: &Vec<f32>, units: usize| v[..(n - 1) * units].to_vec();
    let acts = unit_acts(&b);
    f32_set(&[
        ("fc1".into(), vec![n - 1, 16], head(&acts[0], 16)),
        ("fc2".into(), vec![n - 1, 12], head(&acts[1], 12)),
    ])
    .unwrap()
    .save(&fewer)
    .unwrap();
    let err = failure(&run(&fewer));
    assert!(err.contains("\"fc1\"") && err.contains(s(&fewer)) && err.contains("same inputs"), "{err}");
    let wide = d.join("wide.safetensors");
    f32_set(&[("fc1".into(), vec![n / 2, 32], acts[0].clone()), ("fc2".into(), vec![n, 12], acts[1].clone())])
        .unwrap()
        .save(&wide)
        .unwrap();
    let err = failure(&run(&wide));
    assert!(err.contains(s(&wide)) && err.contains("[N, 16, ...]"), "{err}");
    let err = failure(&tlens(&["align", s(&pa), s(&pb), "--output", s(&out), "--method", "activations"]));
    assert!(err.contains("--acts-a and --acts-b"), "{err}");
    assert!(!out.exists(), "a failed run wrote its output");
}

/// `tlens curve --align` between A and a permuted copy of A: the raw curve rises between the
/// two copies, the aligned one is flat (every point is A).
#[test]
fn curve_align_flattens_the_curve_between_permuted_copies() {
    let d = Scratch::new("align-curve");
    let (pa, pb, pdata) = (d.join("a.safetensors"), d.join("b.safetensors"), d.join("data.safetensors"));
    let (n, dim, classes) = (200, 6, 3);
    let mut rng = TestRng::new(13);
    let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..n).map(|i| ((x[i * dim] - x[i * dim + 1]).abs() * 2.0) as u32 % classes as u32).collect();
    let data = Dataset::new(x.clone(), y.clone(), dim, classes).unwrap();
    let mlp = Mlp::new(&[dim, 24, classes]).unwrap();
    let mut a = mlp.init(1).unwrap();
    mlp.train(&mut a, &data, &transferlens::model::TrainOptions { epochs: 20, ..Default::default() }).unwrap();
    a.save(&pa).unwrap();
    permuted_copy(&PermSpec::for_mlp(&mlp), &a, &pb, 14);
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
    std::fs::write(&pdata, file).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/eval_server_numpy.py");
    let server =
        format!("'{}' '{}' '{}'", python_with_numpy("the curve test needs"), script.display(), pdata.display());
    let curve = |align: bool| {
        let mut args =
            vec!["curve", s(&pa), s(&pb), "--lambdas", "0,0.25,0.5,0.75,1", "--eval-server", &server, "--json"];
        if align {
            args.push("--align");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_tlens")).args(&args).env("TMPDIR", &*d).output().unwrap();
        json(&out)
    };
    let raw = curve(false);
    assert_eq!(raw["alignment"], serde_json::Value::Null);
    let raw_barrier = raw["barrier"]["loss"]["value"].as_f64().unwrap();
    assert!(raw_barrier > 0.05, "the permuted copies show no loss barrier: {raw_barrier}");
    let aligned = curve(true);
    assert_eq!(aligned["alignment"]["distance_after"].as_f64().unwrap(), 0.0);
    assert!(aligned["alignment"]["distance_before"].as_f64().unwrap() > 0.0);
    // Every point is A up to the rounding of (1 - l) x + l x.
    let losses: Vec<f64> = aligned["loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(losses.iter().all(|&l| (l - losses[0]).abs() <= 1e-6), "the aligned curve is not flat: {losses:?}");
    assert!(aligned["barrier"]["loss"]["value"].as_f64().unwrap() <= 1e-6);
    // --spec without --align is a mistake, said so.
    let out = Command::new(env!("CARGO_BIN_EXE_tlens"))
        .args(["curve", s(&pa), s(&pb), "--eval-server", &server, "--spec", s(&pdata)])
        .output()
        .unwrap();
    assert!(failure(&out).contains("--spec goes with --align"));
}
