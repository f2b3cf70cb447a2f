//! `tlens cka` and the CLI's conventions, run as a user runs them: the built binary on files.

mod common;
mod scratch;

use common::{reference_cka_feature, Dense, TestRng};
use scratch::Scratch;
use std::path::Path;
use std::process::{Command, Output};

fn tlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("cli-cka-{name}"))
}

/// Writes layers as an F32 or F64 safetensors file with the data in the given order (written
/// by hand: the safetensors crate's writer sorts tensors by dtype and name).
fn write_layers(path: &Path, layers: &[(&str, &Dense, &[usize])], f32_data: bool) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, d, shape) in layers {
        let start = data.len();
        for &v in &d.data {
            if f32_data {
                data.extend_from_slice(&(v as f32).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": if f32_data { "F32" } else { "F64" }, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cka_json_matches_the_reference_for_every_layer_pair() {
    let dir = scratch("json");
    let mut rng = TestRng::new(11);
    let n = 40;
    let base = Dense::random(&mut rng, n, 6);
    // conv-like layer of shape [n, 2, 3] (flattened to 6 features), and a plain one.
    let a1 = base.mix(&mut rng, 6, 0.5);
    let a2 = base.mix(&mut rng, 4, 1.0);
    let b1 = base.mix(&mut rng, 5, 2.0);
    let (fa, fb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_layers(&fa, &[("layer1", &a1, &[n, 2, 3]), ("fc", &a2, &[n, 4])], false);
    write_layers(&fb, &[("out", &b1, &[n, 5])], false);
    for (estimator, debiased) in [("biased", false), ("debiased", true)] {
        let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap(), "--estimator", estimator, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["rows"], serde_json::json!(["layer1", "fc"]), "layers of A in file order");
        assert_eq!(json["cols"], serde_json::json!(["out"]));
        for (i, a) in [&a1, &a2].iter().enumerate() {
            let got = json["values"][i][0].as_f64().unwrap();
            let want = reference_cka_feature(a, &b1, debiased);
            assert!((got - want).abs() < 1e-12, "{estimator} row {i}: {got} vs {want}");
        }
    }
    // The table form names the layers and prints the values.
    let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("layer1") && table.contains("fc") && table.contains("out"), "{table}");
}

#[test]
fn bad_input_gives_exit_1_and_one_line() {
    let dir = scratch("bad");
    let mut rng = TestRng::new(12);
    let good = dir.join("good.safetensors");
    let x = Dense::random(&mut rng, 10, 3);
    write_layers(&good, &[("x", &x, &[10, 3])], true);
    let other_rows = dir.join("rows.safetensors");
    let y = Dense::random(&mut rng, 9, 3);
    write_layers(&other_rows, &[("y", &y, &[9, 3])], true);
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    let missing = dir.join("missing.safetensors");
    let cases: [(&Path, &str); 4] = [
        (&other_rows, "rows"),
        (&garbage, "not a valid safetensors"),
        (&truncated, "not a valid safetensors"),
        (&missing, "missing.safetensors"),
    ];
    for (file, expected) in cases {
        let out = tlens(&["cka", good.to_str().unwrap(), file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}: {}", file.display(), stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    }
}

/// Writes `(name, dtype, shape, little-endian bytes)` tensors back to back, in the given order.
fn write_raw(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn half_precision_and_unaligned_layers_are_read_in_place_of_f64_ones() {
    let dir = scratch("dtypes");
    let mut rng = TestRng::new(13);
    let n = 7;
    let base = Dense::random(&mut rng, n, 4);
    // F16 of 7 x 3 takes 42 bytes, so the F32 layer after it starts 2 bytes off 4-byte alignment.
    let mut h = base.mix(&mut rng, 3, 0.5);
    h.data.iter_mut().for_each(|v| *v = half::f16::from_f64(*v).to_f64());
    let mut w = base.mix(&mut rng, 2, 0.5);
    w.data.iter_mut().for_each(|v| *v = *v as f32 as f64);
    let y = base.mix(&mut rng, 5, 1.0);
    let fa = dir.join("a.safetensors");
    write_raw(
        &fa,
        &[
            ("h", "F16", vec![n, 3], h.data.iter().flat_map(|&v| half::f16::from_f64(v).to_le_bytes()).collect()),
            ("w", "F32", vec![n, 2], w.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()),
        ],
    );
    let fb = dir.join("b.safetensors");
    write_layers(&fb, &[("y", &y, &[n, 5])], false);
    let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap(), "--json", "--backend", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rows"], serde_json::json!(["h", "w"]));
    for (i, x) in [&h, &w].iter().enumerate() {
        let got = json["values"][i][0].as_f64().unwrap();
        let want = reference_cka_feature(x, &y, false);
        assert!((got - want).abs() < 1e-6, "row {i}: {got} vs {want}");
    }

    // A non-float layer and a scalar are refused, naming the tensor.
    let ints = dir.join("ints.safetensors");
    write_raw(&ints, &[("steps", "I64", vec![n, 1], vec![0; 8 * n])]);
    let scalar = dir.join("scalar.safetensors");
    write_raw(&scalar, &[("loss", "F32", vec![], 1.5f32.to_le_bytes().to_vec())]);
    for (file, expected) in [(&ints, "\"steps\" has dtype I64"), (&scalar, "\"loss\" is a scalar")] {
        let out = tlens(&["cka", file.to_str().unwrap(), fb.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(tlens(&["cka", "only-one-file"]).status.code(), Some(2));
    assert_eq!(tlens(&["cka", "a", "b", "--estimator", "sideways"]).status.code(), Some(2));
    assert_eq!(tlens(&["no-such-command"]).status.code(), Some(2));
    // The study is implemented now (tests/cli_study.rs runs it); a bad flag is still usage.
    let study = tlens(&["study", "--sideways"]);
    assert_eq!(study.status.code(), Some(2));
    assert!(!stderr(&study).contains("not implemented"), "{}", stderr(&study));
    let help = tlens(&["cka", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Example"));
}

#[test]
fn devices_are_refused_as_not_regular_files() {
    // Before: /dev/zero read as a "truncated" file (and, earlier, grew without limit).
    let dir = scratch("devices");
    let mut rng = TestRng::new(5);
    let x = Dense::random(&mut rng, 8, 3);
    let fb = dir.join("b.safetensors");
    write_layers(&fb, &[("x", &x, &[8, 3])], false);
    for (a, b) in [("/dev/zero", fb.to_str().unwrap()), (fb.to_str().unwrap(), "/dev/null")] {
        let out = tlens(&["cka", a, b]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("is a character device; safetensors files must be regular files"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn row_count_errors_name_the_files_and_the_layers() {
    let dir = scratch("named");
    let mut rng = TestRng::new(21);
    let (fa, fb) = (dir.join("acts_a.safetensors"), dir.join("acts_b.safetensors"));
    let (x, y0, y1) = (Dense::random(&mut rng, 12, 3), Dense::random(&mut rng, 12, 2), Dense::random(&mut rng, 10, 2));
    write_layers(&fa, &[("encoder.layer0", &x, &[12, 3])], true);
    write_layers(&fb, &[("h0", &y0, &[12, 2]), ("h1", &y1, &[10, 2])], true);
    let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in ["acts_b.safetensors layer \"h1\" has 10", "acts_a.safetensors layer \"encoder.layer0\" has 12"] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // The library's own messages (a constant layer here) name the file and layer too.
    let flat = Dense { rows: 12, cols: 2, data: vec![1.0; 24] };
    write_layers(&fb, &[("h0", &y0, &[12, 2]), ("dead", &flat, &[12, 2])], true);
    let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("acts_b.safetensors layer \"dead\"") && !err.contains("y[1]"), "{err}");
}

#[test]
fn a_mask_drops_padding_tokens_and_each_token_is_a_sample() {
    let dir = scratch("mask");
    let mut rng = TestRng::new(22);
    let (batch, tokens) = (3, 5);
    let keep = [1u8, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    let kept = keep.iter().filter(|&&k| k == 1).count();
    let la = Dense::random(&mut rng, batch * tokens, 4);
    let lb = la.mix(&mut rng, 3, 0.7);
    // Padding rows hold large values: kept, they would change every figure.
    let pad = |d: &Dense| Dense {
        data: d.data.iter().enumerate().map(|(i, &v)| if keep[i / d.cols] == 1 { v } else { 1e3 * v }).collect(),
        ..d.clone()
    };
    let (pa, pb) = (pad(&la), pad(&lb));
    let gather = |d: &Dense| Dense {
        rows: kept,
        cols: d.cols,
        data: (0..d.rows)
            .filter(|&r| keep[r] == 1)
            .flat_map(|r| d.data[r * d.cols..(r + 1) * d.cols].to_vec())
            .collect(),
    };
    let (fa, fb, ga, gb) =
        (dir.join("a.safetensors"), dir.join("b.safetensors"), dir.join("ga.safetensors"), dir.join("gb.safetensors"));
    let f32_bytes = |d: &Dense| d.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect::<Vec<u8>>();
    let mask: Vec<u8> = keep.iter().flat_map(|&k| (k as i64).to_le_bytes()).collect();
    write_raw(
        &fa,
        &[
            ("attention_mask", "I64", vec![batch, tokens], mask),
            ("layer0", "F32", vec![batch, tokens, 4], f32_bytes(&pa)),
        ],
    );
    write_raw(&fb, &[("layer0", "F32", vec![batch, tokens, 3], f32_bytes(&pb))]);
    write_layers(&ga, &[("layer0", &gather(&pa), &[kept, 4])], true);
    write_layers(&gb, &[("layer0", &gather(&pb), &[kept, 3])], true);
    let masked = tlens(&[
        "cka",
        fa.to_str().unwrap(),
        fb.to_str().unwrap(),
        "--mask",
        "attention_mask",
        "--json",
        "--backend",
        "cpu",
    ]);
    assert!(masked.status.success(), "{}", stderr(&masked));
    let flat = tlens(&["cka", ga.to_str().unwrap(), gb.to_str().unwrap(), "--json", "--backend", "cpu"]);
    assert!(flat.status.success(), "{}", stderr(&flat));
    let (m, f): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&masked.stdout).unwrap(), serde_json::from_slice(&flat.stdout).unwrap());
    assert_eq!(m["rows"], serde_json::json!(["layer0"]), "the mask is not a layer");
    assert_eq!(m["values"], f["values"], "the kept tokens as samples, bit for bit");
    let reference = reference_cka_feature(&gather(&la), &gather(&lb), false);
    let got = m["values"][0][0].as_f64().unwrap();
    assert!((got - reference).abs() < 1e-5, "{got} vs {reference}");
    // A missing mask, and a layer whose shape does not follow the mask, are named.
    let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap(), "--mask", "pad"]);
    assert!(out.status.code() == Some(1) && stderr(&out).contains("\"pad\""), "{}", stderr(&out));
    let out = tlens(&["cka", fa.to_str().unwrap(), ga.to_str().unwrap(), "--mask", "attention_mask"]);
    let err = stderr(&out);
    assert!(out.status.code() == Some(1) && err.contains("ga.safetensors") && err.contains("\"layer0\""), "{err}");
}

/// `value` as little-endian bytes of `dtype`, and the value that dtype stores.
fn encode(value: f64, dtype: &str) -> (Vec<u8>, f64) {
    match dtype {
        "F64" => (value.to_le_bytes().to_vec(), value),
        "F32" => ((value as f32).to_le_bytes().to_vec(), value as f32 as f64),
        "F16" => (half::f16::from_f64(value).to_le_bytes().to_vec(), half::f16::from_f64(value).to_f64()),
        "BF16" => (half::bf16::from_f64(value).to_le_bytes().to_vec(), half::bf16::from_f64(value).to_f64()),
        other => panic!("no such dtype {other}"),
    }
}

/// Layers of the given dtypes and widths over `rows` shared samples (with an offset, so that
/// the centering matters), written in that order; returns the file's layers as stored.
fn write_dtypes(path: &Path, rng: &mut TestRng, base: &Dense, layers: &[(&str, &str, usize)]) -> Vec<Dense> {
    let mut stored = Vec::new();
    let mut tensors = Vec::new();
    for &(name, dtype, cols) in layers {
        let mut d = base.mix(rng, cols, 0.8);
        d.data.iter_mut().for_each(|v| *v += 3.0);
        let (bytes, values): (Vec<Vec<u8>>, Vec<f64>) = d.data.iter().map(|&v| encode(v, dtype)).unzip();
        d.data = values;
        tensors.push((name, dtype, vec![d.rows, cols], bytes.concat()));
        stored.push(d);
    }
    write_raw(path, &tensors);
    stored
}

/// The CKA matrix `tlens cka` prints as JSON, row-major.
fn cka_values(out: &Output) -> Vec<f64> {
    assert!(out.status.success(), "{}", stderr(out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect()
}

/// The in-memory path: both files read whole and CKA on the whole data (`cka_matrix`).
fn in_memory(fa: &Path, fb: &Path, estimator: transferlens::cka::Estimator) -> Vec<f64> {
    use transferlens::params::activation_layers;
    let (a, b) = (transferlens::ParamSet::load(fa).unwrap(), transferlens::ParamSet::load(fb).unwrap());
    let (xs, ys) = (activation_layers(&a, "a").unwrap(), activation_layers(&b, "b").unwrap());
    transferlens::cka::cka_matrix(&transferlens::Context::cpu(), &xs, &ys, estimator).unwrap()
}

#[test]
fn streamed_blocks_give_the_in_memory_values_for_every_dtype_and_block_size() {
    use transferlens::cka::Estimator;
    let dir = scratch("blocks");
    let mut rng = TestRng::new(31);
    let n = 1003; // prime: no block size but 1 and n divides it
    let base = Dense::random(&mut rng, n, 9);
    // 32-bit products (f32, f16 and bf16 layers); then an f64 layer, which makes every product
    // f64 on both paths. Odd widths: a layer's rows start at every alignment.
    let half_file = [("h", "F16", 5), ("w", "F32", 7), ("b", "BF16", 3)];
    let with_f64 = [("d", "F64", 6), ("h", "F16", 3)];
    let fb = dir.join("b.safetensors");
    let ys = write_dtypes(&fb, &mut rng, &base, &[("y0", "F32", 11), ("y1", "BF16", 4)]);
    // (layers, bound against the in-memory path, bound against the f64 reference)
    for (layers, bound, reference_bound) in [(&half_file[..], 2e-6, 2e-5), (&with_f64[..], 1e-12, 1e-12)] {
        let fa = dir.join("a.safetensors");
        let xs = write_dtypes(&fa, &mut rng, &base, layers);
        for (estimator, name) in [(Estimator::Biased, "biased"), (Estimator::Debiased, "debiased")] {
            let want = in_memory(&fa, &fb, estimator);
            for (k, w) in want.iter().enumerate() {
                let reference = reference_cka_feature(&xs[k / ys.len()], &ys[k % ys.len()], name == "debiased");
                assert!((w - reference).abs() <= reference_bound, "{layers:?} {name} pair {k}: {w} vs {reference}");
            }
            for block in ["1", "97", "1002", "5000"] {
                let out = tlens(&[
                    "cka",
                    fa.to_str().unwrap(),
                    fb.to_str().unwrap(),
                    "--json",
                    "--backend",
                    "cpu",
                    "--estimator",
                    name,
                    "--block-rows",
                    block,
                ]);
                assert_eq!(stderr(&out), "", "a short run prints no progress");
                let got = cka_values(&out);
                assert_eq!(got.len(), want.len());
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= bound, "{layers:?} {name} blocks of {block}, pair {k}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn wide_layers_over_few_samples_are_computed_whole_from_the_blocks() {
    // Sample space (n x n Grams) is the cheaper route here: the blocks are kept, not streamed.
    let dir = scratch("wide");
    let mut rng = TestRng::new(32);
    let n = 41;
    let base = Dense::random(&mut rng, n, 5);
    let (fa, fb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_dtypes(&fa, &mut rng, &base, &[("x", "F32", 300), ("h", "BF16", 257)]);
    write_dtypes(&fb, &mut rng, &base, &[("y", "F16", 301)]);
    let want = in_memory(&fa, &fb, transferlens::cka::Estimator::Biased);
    let run = |block: &str| {
        cka_values(&tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap(), "--json", "--block-rows", block]))
    };
    let whole = run("41");
    for (k, (g, w)) in whole.iter().zip(&want).enumerate() {
        // The 16-bit layers arrive as f32 here, in their own dtype there: the last bit may differ.
        assert!((g - w).abs() <= 1e-12, "pair {k}: {g} vs {w}");
    }
    for block in ["1", "8"] {
        assert_eq!(run(block), whole, "blocks of {block}: the same whole data, the same bits");
    }
}

#[test]
fn a_non_finite_value_in_a_later_block_is_named_with_its_row() {
    let dir = scratch("nan");
    let mut rng = TestRng::new(33);
    let (x, y) = (Dense::random(&mut rng, 50, 3), Dense::random(&mut rng, 50, 2));
    let mut bad = y.clone();
    bad.data[37 * 2 + 1] = f64::NAN;
    let (fa, fb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_layers(&fa, &[("x", &x, &[50, 3])], true);
    write_layers(&fb, &[("good", &y, &[50, 2]), ("bad", &bad, &[50, 2])], true);
    for block in ["8", "50"] {
        let out = tlens(&["cka", fa.to_str().unwrap(), fb.to_str().unwrap(), "--block-rows", block]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("b.safetensors layer \"bad\" holds NaN at row 37, column 1"), "{err}");
    }
}
