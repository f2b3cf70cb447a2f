//! `tlens inspect`, `tlens distance` and `tlens interpolate`, run as a user runs them: the built
//! binary on ResNet-style fixtures in mixed dtypes, checked against f64 references written here.

mod scratch;
mod weights_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use weights_fixture::{decode, read, reference_sq_distances, resnet, write, Raw, Rng};

fn tlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlens")).args(args).output().expect("tlens runs")
}

fn dir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new(&format!("cli-{tag}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes checkpoints A and B (B = A's structure, fresh values) into `d`.
fn pair(d: &Path) -> (PathBuf, PathBuf, Vec<Raw>, Vec<Raw>) {
    let (a, b) = (resnet(11), resnet(29));
    let (pa, pb) = (d.join("a.safetensors"), d.join("b.safetensors"));
    write(&pa, &a, &[("format", "pt"), ("note", "fixture A")]);
    write(&pb, &b, &[]);
    (pa, pb, a, b)
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "tlens failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn check_distance_json(v: &serde_json::Value, a: &[Raw], b: &[Raw], depth: usize) {
    let reference = reference_sq_distances(a, b, depth);
    let obj = v.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().cloned().collect();
    keys.sort();
    // The fixed keys, and (issue 16) the parameter count and the left-out tensors with reasons.
    assert_eq!(keys, ["left_out", "modules", "numel", "total"]);
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), reference.len());
    for (m, (name, numel, sq)) in modules.iter().zip(&reference) {
        let mut mk: Vec<_> = m.as_object().unwrap().keys().cloned().collect();
        mk.sort();
        assert_eq!(mk, ["distance", "name", "numel"]);
        assert_eq!(m["name"], name.as_str());
        assert_eq!(m["numel"].as_u64().unwrap() as usize, *numel);
        let got = m["distance"].as_f64().unwrap();
        let want = sq.sqrt();
        assert!(want > 0.0);
        assert!(((got - want) / want).abs() <= 1e-9, "module {name}: {got} vs {want}");
    }
    let total = reference.iter().map(|r| r.2).sum::<f64>().sqrt();
    let got = v["total"].as_f64().unwrap();
    assert!(((got - total) / total).abs() <= 1e-9, "total {got} vs {total}");
}

#[test]
fn distance_matches_an_f64_reference_for_default_and_depth_grouping() {
    let d = dir("dist");
    let (pa, pb, a, b) = pair(&d);
    let v = json(&tlens(&["distance", s(&pa), s(&pb), "--json"]));
    check_distance_json(&v, &a, &b, 1);
    let names: Vec<_> =
        v["modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]);
    let v = json(&tlens(&["distance", s(&pa), s(&pb), "--json", "--modules", "first"]));
    check_distance_json(&v, &a, &b, 1);
    for depth in [2, 3] {
        let spec = format!("depth:{depth}");
        let v = json(&tlens(&["distance", s(&pa), s(&pb), "--modules", &spec, "--json"]));
        check_distance_json(&v, &a, &b, depth);
    }
    // Every tensor its own module: depth large enough to keep whole names.
    let v = json(&tlens(&["distance", s(&pa), s(&pb), "--modules", "tensor", "--json"]));
    check_distance_json(&v, &a, &b, 99);
    // The distance of a file to itself is exactly zero.
    let v = json(&tlens(&["distance", s(&pa), s(&pa), "--json"]));
    assert_eq!(v["total"].as_f64().unwrap(), 0.0);
    // The table form names every module and the total.
    let out = tlens(&["distance", s(&pa), s(&pb)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for m in ["conv1", "layer4", "fc", "total", "bn1.num_batches_tracked"] {
        assert!(text.contains(m), "{m} missing from:\n{text}");
    }
}

#[test]
fn prefix_grouping_uses_the_longest_match() {
    let d = dir("prefix");
    let (pa, pb, a, b) = pair(&d);
    let v = json(&tlens(&["distance", s(&pa), s(&pb), "--modules", "prefixes:layer1,layer1.1,layer4,fc", "--json"]));
    let module_of = |n: &str| -> String {
        for p in ["layer1.1", "layer1", "layer4", "fc"] {
            if n == p || n.starts_with(&format!("{p}.")) {
                return p.to_string();
            }
        }
        n.to_string()
    };
    let mut want: Vec<(String, f64)> = Vec::new();
    for t in a.iter().filter(|t| t.is_weight()) {
        let u = b.iter().find(|u| u.name == t.name).unwrap();
        let sq: f64 = t.values().iter().zip(u.values()).map(|(x, y)| (x - y) * (x - y)).sum();
        let m = module_of(&t.name);
        match want.iter_mut().find(|w| w.0 == m) {
            Some(w) => w.1 += sq,
            None => want.push((m, sq)),
        }
    }
    let got = v["modules"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, (name, sq)) in got.iter().zip(&want) {
        assert_eq!(g["name"], name.as_str());
        let (x, y) = (g["distance"].as_f64().unwrap(), sq.sqrt());
        assert!(((x - y) / y).abs() <= 1e-9, "{name}: {x} vs {y}");
    }
}

/// Storage rounding bound for out = (1 - l) a + l b computed in f32 (f64 for F64) and rounded
/// once: half an ulp of the storage type plus the f32 arithmetic's error.
fn tolerance(dtype: &str, x: f64, y: f64, l: f64, reference: f64) -> f64 {
    let terms = ((1.0 - l) * x).abs() + (l * y).abs();
    let (storage_eps, tiny) = match dtype {
        "F32" => (2f64.powi(-24), 1e-45),
        "F64" => (2f64.powi(-53), 0.0),
        "F16" => (2f64.powi(-11), 2f64.powi(-25)),
        "BF16" => (2f64.powi(-8), 1e-40),
        _ => unreachable!(),
    };
    let arith_eps = if dtype == "F64" { 2f64.powi(-52) } else { 2f64.powi(-23) };
    storage_eps * reference.abs() * 1.0000001 + 3.0 * arith_eps * terms + tiny
}

#[test]
fn interpolate_writes_the_convex_combination_and_exact_endpoints() {
    let d = dir("interp");
    let (pa, pb, a, b) = pair(&d);
    for lambda in [-1.0, -0.5, 0.3, 2.0] {
        let out = d.join(format!("out{lambda}.safetensors"));
        let l = lambda.to_string();
        let o = tlens(&["interpolate", s(&pa), s(&pb), "--lambda", &l, "--output", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = read(&out);
        assert_eq!(got.len(), a.len());
        let mut moved = 0;
        for ((g, x), y) in got.iter().zip(&a).zip(&b) {
            assert_eq!(g.name, x.name, "file order is kept");
            assert_eq!(g.dtype, x.dtype);
            assert_eq!(g.shape, x.shape);
            if !x.is_weight() {
                assert_eq!(g.bytes, x.bytes, "{}: non-weights are copied from A", g.name);
                continue;
            }
            let (gv, xv, yv) = (g.values(), x.values(), y.values());
            for i in 0..gv.len() {
                let want = (1.0 - lambda) * xv[i] + lambda * yv[i];
                let tol = tolerance(x.dtype, xv[i], yv[i], lambda, want);
                assert!(
                    (gv[i] - want).abs() <= tol,
                    "{}[{i}] at lambda {lambda}: {} vs {want} (tolerance {tol})",
                    g.name,
                    gv[i]
                );
                moved += (gv[i] != xv[i]) as usize;
            }
        }
        assert!(moved > 100_000, "the weights moved");
    }
    for (lambda, want) in [("0", &a), ("1", &b)] {
        let out = d.join(format!("end{lambda}.safetensors"));
        let o = tlens(&["interpolate", s(&pa), s(&pb), "--lambda", lambda, "--output", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for ((g, w), x) in read(&out).iter().zip(want.iter()).zip(&a) {
            let expected = if w.is_weight() { &w.bytes } else { &x.bytes };
            assert!(g.bytes == *expected, "{} at lambda {lambda}: not bit for bit", g.name);
        }
    }
    // A's metadata is kept.
    let file = std::fs::read(d.join("end0.safetensors")).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["note"], "fixture A");
    assert_eq!(n % 8, 0, "data starts 8-byte aligned");
    // And the output is a valid input: its distance to A at lambda 0 is 0.
    let v = json(&tlens(&["distance", s(&pa), s(&d.join("end0.safetensors")), "--json"]));
    assert_eq!(v["total"].as_f64().unwrap(), 0.0);
}

#[test]
fn inspect_lists_tensors_modules_and_left_out() {
    let d = dir("inspect");
    let (pa, _, a, _) = pair(&d);
    let v = json(&tlens(&["inspect", s(&pa), "--json"]));
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), a.len());
    for (t, r) in tensors.iter().zip(&a) {
        assert_eq!(t["name"], r.name.as_str());
        assert_eq!(t["dtype"], r.dtype);
        assert_eq!(t["numel"].as_u64().unwrap() as usize, r.numel());
        assert_eq!(t["weight"].as_bool().unwrap(), r.is_weight());
    }
    let weights: usize = a.iter().filter(|t| t.is_weight()).map(Raw::numel).sum();
    assert_eq!(v["weight_numel"].as_u64().unwrap() as usize, weights);
    assert_eq!(v["left_out"], serde_json::json!(["bn1.num_batches_tracked", "layer1.0.bn1.num_batches_tracked"]));
    assert_eq!(v["metadata"]["format"], "pt");
    assert_eq!(v["modules"][0]["name"], "conv1");
    let out = tlens(&["inspect", s(&pa)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("layer1.0.conv1.weight") && text.contains("BF16"));
    assert!(text.contains("left out"));
}

/// Runs tlens expecting a failure with exit `code` and one line on stderr mentioning `needle`.
fn fails(args: &[&str], code: i32, needle: &str) {
    let out = tlens(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    assert!(err.contains(needle), "{args:?}: {needle:?} not in stderr: {err}");
}

#[test]
fn every_bad_file_is_exit_1_and_one_clear_line() {
    let d = dir("bad");
    let (pa, pb, a, _) = pair(&d);
    let good = std::fs::read(&pa).unwrap();
    let bad = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Unreadable: missing, a directory.
    let missing = d.join("missing.safetensors");
    fails(&["distance", s(&missing), s(&pb)], 1, "missing.safetensors");
    fails(&["inspect", s(&d)], 1, "tl-cli-bad");
    // Truncated: in the data, in the header, in the length prefix, empty.
    let t1 = bad("trunc-data.safetensors", &good[..good.len() - 3]);
    fails(&["distance", s(&t1), s(&pb)], 1, "trunc-data.safetensors");
    let t2 = bad("trunc-header.safetensors", &good[..40]);
    fails(&["inspect", s(&t2)], 1, "truncated");
    let t3 = bad("trunc-len.safetensors", &good[..5]);
    fails(&["inspect", s(&t3)], 1, "truncated");
    let t4 = bad("empty.safetensors", b"");
    fails(&["interpolate", s(&t4), s(&pb), "--lambda", "0.5", "--output", s(&d.join("o"))], 1, "empty.safetensors");
    // Malformed header: not JSON, not an object, a huge length.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut m = good.clone();
    m[8] = b'[';
    fails(&["inspect", s(&bad("json.safetensors", &m))], 1, "JSON");
    let mut m = good.clone();
    m[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fails(&["inspect", s(&bad("hugelen.safetensors", &m))], 1, "header length");
    // Offsets out of range: the last tensor's end pushed past the data.
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let data_len = good.len() - 8 - n;
    let last = a.last().unwrap();
    let moved = header.replace(
        &format!("[{},{}]", data_len - last.bytes.len(), data_len),
        &format!("[{},{}]", data_len - last.bytes.len(), data_len + 8),
    );
    assert_ne!(moved, header);
    let mut m = (moved.len() as u64).to_le_bytes().to_vec();
    m.extend(moved.as_bytes());
    m.extend(&good[8 + n..]);
    fails(&["distance", s(&bad("offsets.safetensors", &m)), s(&pb)], 1, "fc.bias");
    // Unknown dtype.
    let retyped = header.replacen("\"F32\"", "\"F31\"", 1);
    let mut m = (retyped.len() as u64).to_le_bytes().to_vec();
    m.extend(retyped.as_bytes());
    m.extend(&good[8 + n..]);
    fails(&["inspect", s(&bad("dtype.safetensors", &m))], 1, "F31");
    // Missing tensor, shape mismatch: named, in both directions.
    let fewer: Vec<Raw> = resnet(29).into_iter().filter(|t| t.name != "fc.bias").collect();
    let pf = d.join("fewer.safetensors");
    write(&pf, &fewer, &[]);
    fails(&["distance", s(&pa), s(&pf)], 1, "fc.bias");
    fails(&["distance", s(&pf), s(&pa)], 1, "fc.bias");
    fails(&["interpolate", s(&pa), s(&pf), "--lambda", "0.5", "--output", s(&d.join("o"))], 1, "fc.bias");
    let mut reshaped = resnet(29);
    let fc = reshaped.iter_mut().find(|t| t.name == "fc.weight").unwrap();
    fc.shape = vec![17, 10];
    let ps = d.join("reshaped.safetensors");
    write(&ps, &reshaped, &[]);
    fails(&["distance", s(&pa), s(&ps)], 1, "fc.weight");
    fails(&["interpolate", s(&pa), s(&ps), "--lambda", "2", "--output", s(&d.join("o"))], 1, "[17, 10]");
    assert!(!d.join("o").exists(), "no output after a failure");
    // An unwritable output.
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&d.join("no/such/dir/o"))], 1, "o");
}

#[test]
fn bad_usage_is_exit_2() {
    let d = dir("usage");
    let (pa, pb, _, _) = pair(&d);
    let op = d.join("o");
    let o = s(&op);
    fails(&["distance", s(&pa)], 2, "B");
    fails(&["distance", s(&pa), s(&pb), "--modules", "depth:0"], 2, "depth");
    fails(&["distance", s(&pa), s(&pb), "--modules", "second"], 2, "second");
    fails(&["interpolate", s(&pa), s(&pb), "--output", o], 2, "lambda");
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "nan", "--output", o], 2, "finite");
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "x", "--output", o], 2, "number");
    for cmd in ["inspect", "distance", "interpolate"] {
        let out = tlens(&[cmd, "--help"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Example"), "{cmd} --help has an example");
    }
}

#[test]
fn distance_of_mixed_storage_dtypes_matches_the_reference() {
    // The same names in B but some tensors stored in another dtype.
    let d = dir("mixed");
    let a = resnet(5);
    let mut rng = Rng(99);
    let b: Vec<Raw> = resnet(6)
        .into_iter()
        .map(|mut t| {
            if t.is_weight() && rng.below(2) == 0 {
                let v = decode(t.dtype, &t.bytes);
                let to = ["F32", "F64", "F16", "BF16"][rng.below(4)];
                t.bytes = weights_fixture::encode(to, &v);
                t.dtype = to;
            }
            t
        })
        .collect();
    let (pa, pb) = (d.join("a.safetensors"), d.join("b.safetensors"));
    write(&pa, &a, &[]);
    write(&pb, &b, &[]);
    let v = json(&tlens(&["distance", s(&pa), s(&pb), "--json"]));
    check_distance_json(&v, &a, &b, 1);
}

/// Runs tlens with a time limit and returns its exit status, stderr, wall time and peak
/// resident memory in bytes (from wait4, for this child alone). A run past the limit is killed
/// and reported as a failure.
#[allow(clippy::zombie_processes)] // the child is reaped by wait4, which std does not see
fn tlens_measured(args: &[&str], limit: std::time::Duration) -> (Option<i32>, String, std::time::Duration, u64) {
    use std::io::Read;
    let t0 = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlens"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tlens runs");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child, not yet reaped; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed");
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tlens {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, err, t0.elapsed(), usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_header_of_many_empty_tensors_costs_a_small_multiple_of_its_size() {
    // 300k zero-size tensors: a 19 MB header and no data. Before, reading such a header cost
    // about 40 times the file in memory (a JSON tree, then the safetensors crate's own parse).
    let d = dir("bigheader");
    let n = 300_000;
    let mut text = String::from("{");
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("\"t.{i:07}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"));
    }
    text.push('}');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    let p = d.join("empty-tensors.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let size = bytes.len() as u64;
    // distance loads the file twice (as A and as B).
    let (code, err, took, peak) =
        tlens_measured(&["distance", s(&p), s(&p), "--json"], std::time::Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    println!("{} MB header, two loads: {took:?}, peak {} MB", size >> 20, peak >> 20);
    let bound = 64 * (1 << 20) + 2 * 8 * size;
    assert!(peak <= bound, "peak memory {} MB is over {} MB for a {} MB file", peak >> 20, bound >> 20, size >> 20);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn paths_that_are_not_regular_files_are_refused_with_one_line() {
    let d = dir("special");
    let fifo = d.join("pipe.safetensors");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: c is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Before: a FIFO blocked tlens forever, waiting for a writer.
    for (args, kind) in [
        (vec!["inspect", s(&fifo)], "FIFO"),
        (vec!["distance", "/dev/zero", s(&fifo)], "character device"),
        (vec!["inspect", s(&d)], "directory"),
    ] {
        let (code, err, _, _) = tlens_measured(&args, std::time::Duration::from_secs(20));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(kind) && err.contains("regular file"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// The names in `d` that look like our temporary files.
fn temporaries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect()
}

#[test]
fn interpolate_refuses_to_overwrite_an_input_even_through_links() {
    let d = dir("self");
    let (pa, pb, _, _) = pair(&d);
    let before = std::fs::read(&pa).unwrap();
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink("a.safetensors", &link).unwrap();
    let hard = d.join("hard.safetensors");
    std::fs::hard_link(&pb, &hard).unwrap();
    // Before: each of these replaced an input with the result, exit 0.
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&pa)], 1, "same file as A");
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&link)], 1, "same file as A");
    fails(&["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&hard)], 1, "same file as B");
    assert_eq!(std::fs::read(&pa).unwrap(), before, "A is untouched");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(temporaries(&d).is_empty(), "{:?}", temporaries(&d));
}

#[test]
fn interpolate_keeps_a_symlink_and_the_mode_of_the_file_it_replaces() {
    use std::os::unix::fs::PermissionsExt;
    let d = dir("outlink");
    let (pa, pb, _, _) = pair(&d);
    std::fs::create_dir(d.join("store")).unwrap();
    let real = d.join("store/mid.safetensors");
    std::fs::write(&real, b"old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.join("mid.safetensors");
    std::os::unix::fs::symlink("store/mid.safetensors", &link).unwrap();
    let o = tlens(&["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&link)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Before: the symlink was replaced by a regular file of mode 0644.
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is kept");
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o600, "the mode is kept");
    assert_eq!(read(&real).len(), resnet(1).len(), "the target holds the result");
}

#[test]
fn interpolate_refuses_a_non_finite_result_and_writes_nothing() {
    let d = dir("overflow");
    let (pa, pb, _, _) = pair(&d);
    let out = d.join("out.safetensors");
    // Before: 1e39 became inf in f32 and an all-NaN checkpoint was written with exit 0.
    for lambda in ["1e39", "1e300", "-3e38"] {
        fails(&["interpolate", s(&pa), s(&pb), "--lambda", lambda, "--output", s(&out)], 1, "is not finite");
        assert!(!out.exists(), "lambda {lambda}: no output");
    }
    assert!(temporaries(&d).is_empty());
}

#[test]
fn sigterm_during_a_write_leaves_no_temporary_file() {
    let d = dir("signal");
    let n = 32 << 20; // 128 MB per checkpoint, so that the write takes a while
    let mut rng = Rng(3);
    let big = |rng: &mut Rng| {
        let values: Vec<f64> = (0..1024).map(|_| rng.uniform()).collect();
        let bytes: Vec<u8> = (0..n).flat_map(|i| (values[i % 1024] as f32).to_le_bytes()).collect();
        vec![Raw { name: "w.weight".into(), dtype: "F32", shape: vec![n], bytes }]
    };
    let (pa, pb) = (d.join("a.safetensors"), d.join("b.safetensors"));
    write(&pa, &big(&mut rng), &[]);
    write(&pb, &big(&mut rng), &[]);
    let out = d.join("out.safetensors");
    let mut interrupted = 0;
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tlens"))
            .args(["interpolate", s(&pa), s(&pb), "--lambda", "0.5", "--output", s(&out)])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the temporary file to appear, then stop tlens.
        let t0 = std::time::Instant::now();
        loop {
            if !temporaries(&d).is_empty() {
                // SAFETY: kill on our own child's pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                break;
            }
            if child.try_wait().unwrap().is_some() || t0.elapsed().as_secs() > 60 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGTERM) {
            interrupted += 1;
            assert!(!out.exists(), "an interrupted write leaves no output");
        } else {
            assert!(status.success(), "{status}: {err}");
        }
        assert!(!err.contains("internal error"), "{err}");
        // Before: a hidden .out.safetensors.tmp-PID-N as large as the checkpoint stayed.
        assert!(temporaries(&d).is_empty(), "left behind: {:?}", temporaries(&d));
        let _ = std::fs::remove_file(&out);
    }
    assert!(interrupted > 0, "no run was caught during its write");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_closed_stdout_ends_tlens_quietly() {
    let d = dir("pipe");
    let (pa, _, _, _) = pair(&d);
    for args in [vec!["inspect", s(&pa)], vec!["inspect", s(&pa), "--json"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tlens"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // as `| head -0` would
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        // Before: a panic on the failed print, exit 101.
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{args:?}: {} {err}", out.status);
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
