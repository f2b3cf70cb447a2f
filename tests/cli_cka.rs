//! `tlens cka` and the CLI's conventions, run as a user runs them: the built binary on files.

mod common;

use common::{reference_cka_feature, Dense, TestRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlens-cli-cka-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
