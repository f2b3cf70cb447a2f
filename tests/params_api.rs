//! The Rust API of parameter sets and weight-space geometry, against f64 references written
//! here, plus a seeded mutation fuzzer over the safetensors reading path.

mod scratch;
mod weights_fixture;

use transferlens::geometry::{self, ModuleGeometry};
use transferlens::params::{match_weights, ParamSet, TensorSpec, Unmatched};
use transferlens::{Context, DType, Error, Grouping};
use weights_fixture::{decode, encode, resnet, to_bytes, Raw, Rng};

fn set(raws: &[Raw]) -> ParamSet {
    ParamSet::from_bytes(&to_bytes(raws, &[]), "fixture").unwrap()
}

fn tmp(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new(&format!("params-{tag}"))
}

/// A small ResNet-style set (no multi-chunk tensors), for the fuzzer and quick checks.
fn small(seed: u64) -> Vec<Raw> {
    resnet(seed).into_iter().filter(|t| !t.name.starts_with("layer3") && !t.name.starts_with("layer4")).collect()
}

#[test]
fn load_save_round_trip_keeps_bytes_order_and_metadata() {
    let d = tmp("roundtrip");
    let raws = resnet(3);
    let src = d.join("a.safetensors");
    std::fs::write(&src, to_bytes(&raws, &[("format", "pt"), ("epoch", "90")])).unwrap();
    let p = ParamSet::load(&src).unwrap();
    assert_eq!(p.metadata().get("epoch").map(String::as_str), Some("90"));
    let names: Vec<_> = p.tensors().iter().map(|t| t.name()).collect();
    let want: Vec<_> = raws.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, want, "file order");
    let dst = d.join("b.safetensors");
    std::fs::write(&dst, b"old contents").unwrap();
    p.save(&dst).unwrap();
    let back = weights_fixture::read(&dst);
    for (x, y) in back.iter().zip(&raws) {
        assert_eq!((&x.name, x.dtype, &x.shape), (&y.name, y.dtype, &y.shape));
        assert_eq!(x.bytes, y.bytes, "{}", x.name);
    }
    let q = ParamSet::load(&dst).unwrap();
    assert_eq!(q.metadata(), p.metadata());
    let left: Vec<_> = q.left_out().map(|t| t.name().to_string()).collect();
    assert_eq!(left, ["bn1.num_batches_tracked", "layer1.0.bn1.num_batches_tracked"]);
    // No temporary file is left behind.
    let entries: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // A save into a missing folder fails with Io and leaves nothing.
    let e = p.save(d.join("nope/x.safetensors")).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
}

#[test]
fn unaligned_tensors_are_read_correctly() {
    // F16 [1] first, so the F64 and F32 that follow start at offsets 2 and 2 + 8 * 5.
    let mut r = Rng(8);
    let v64: Vec<f64> = (0..5).map(|_| r.uniform()).collect();
    let v32: Vec<f64> = (0..9).map(|_| r.uniform() as f32 as f64).collect();
    let raws = vec![
        Raw { name: "a.h".into(), dtype: "F16", shape: vec![1], bytes: encode("F16", &[0.5]) },
        Raw { name: "b.d".into(), dtype: "F64", shape: vec![5], bytes: encode("F64", &v64) },
        Raw { name: "c.f".into(), dtype: "F32", shape: vec![3, 3], bytes: encode("F32", &v32) },
    ];
    for bytes in [to_bytes(&raws, &[]), to_bytes(&raws, &[("k", "v")])] {
        let p = ParamSet::from_bytes(&bytes, "unaligned").unwrap();
        let n = geometry::norms(&Context::cpu(), &p).unwrap();
        let want = [0.25f64, v64.iter().map(|x| x * x).sum(), v32.iter().map(|x| x * x).sum()];
        for (g, w) in n.modules.iter().zip(want) {
            assert!((g - w.sqrt()).abs() <= 1e-15 * w.sqrt(), "{g} vs {}", w.sqrt());
        }
    }
}

#[test]
fn grouping_of_resnet_names() {
    let mut p = set(&resnet(1));
    let names = |p: &ParamSet| p.modules().iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&p), ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]);
    p.set_grouping(Grouping::Depth(2)).unwrap();
    assert_eq!(
        names(&p),
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0",
            "layer1.1",
            "layer2.0",
            "layer3.0",
            "layer4.0",
            "fc.weight",
            "fc.bias"
        ]
    );
    p.set_grouping(Grouping::Prefixes {
        prefixes: vec!["layer1".into(), "layer2.0.downsample".into(), "layer2".into()],
        unmatched: Unmatched::OwnGroup,
    })
    .unwrap();
    assert_eq!(
        names(&p)[..7],
        ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "layer1", "layer2"]
    );
    assert!(names(&p).contains(&"layer2.0.downsample".to_string()));
    let down = &p.modules()[p.module_index("layer2.0.downsample").unwrap()];
    assert_eq!(down.tensors.len(), 2);
    let e =
        p.set_grouping(Grouping::Prefixes { prefixes: vec!["layer".into()], unmatched: Unmatched::Error }).unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("conv1.weight")), "{e}");
    // A failed regrouping leaves the previous one.
    assert!(p.module_index("layer2.0.downsample").is_some());
    p.set_grouping(Grouping::Tensor).unwrap();
    assert_eq!(p.modules().len(), p.tensors().iter().filter(|t| t.is_weight()).count());
}

fn reference_geometry(a: &[Raw], b: &[Raw]) -> Vec<(String, [f64; 4])> {
    let mut out: Vec<(String, [f64; 4])> = Vec::new();
    for t in a.iter().filter(|t| t.is_weight()) {
        let u = b.iter().find(|u| u.name == t.name).unwrap();
        let (x, y) = (t.values(), u.values());
        let mut s = [0f64; 4];
        for (p, q) in x.iter().zip(&y) {
            s[0] += p * p;
            s[1] += q * q;
            s[2] += p * q;
            s[3] += (p - q) * (p - q);
        }
        let m = t.name.split('.').next().unwrap().to_string();
        match out.iter_mut().find(|e| e.0 == m) {
            Some(e) => (0..4).for_each(|k| e.1[k] += s[k]),
            None => out.push((m, s)),
        }
    }
    out
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-300), "{what}: {got} vs {want}");
}

#[test]
fn compare_norms_and_cosine_match_the_reference() {
    let (ra, rb) = (resnet(21), resnet(22));
    // Make b correlated with a so that cosines are far from 0.
    let rb: Vec<Raw> = rb
        .into_iter()
        .zip(&ra)
        .map(|(mut u, t)| {
            if t.is_weight() {
                let v: Vec<f64> = t.values().iter().zip(u.values()).map(|(x, y)| x + 0.3 * y).collect();
                u.bytes = encode(u.dtype, &v);
            }
            u
        })
        .collect();
    let (a, b) = (set(&ra), set(&rb));
    let ctx = Context::cpu();
    let (per, total) = geometry::compare(&ctx, &a, &b).unwrap();
    let want = reference_geometry(&ra, &rb);
    let norms_a = geometry::norms(&ctx, &a).unwrap();
    let dist = geometry::distance(&ctx, &a, &b).unwrap();
    let mut sum = [0f64; 4];
    for (k, ((g, (name, s)), m)) in per.iter().zip(&want).zip(a.modules()).enumerate() {
        assert_eq!(&m.name, name);
        check(g, s, name);
        close(norms_a.modules[k], s[0].sqrt(), 1e-12, name);
        close(dist.modules[k], s[3].sqrt(), 1e-12, name);
        assert!(g.cosine > 0.5, "{name}: correlated");
        (0..4).for_each(|i| sum[i] += s[i]);
    }
    check(&total, &sum, "total");
    close(dist.total, sum[3].sqrt(), 1e-12, "total distance");
    close(norms_a.total, sum[0].sqrt(), 1e-12, "total norm");

    fn check(g: &ModuleGeometry, s: &[f64; 4], name: &str) {
        close(g.norm_a, s[0].sqrt(), 1e-12, name);
        close(g.norm_b, s[1].sqrt(), 1e-12, name);
        close(g.distance, s[3].sqrt(), 1e-12, name);
        close(g.relative, s[3].sqrt() / s[0].sqrt(), 1e-12, name);
        close(g.cosine, s[2] / (s[0] * s[1]).sqrt(), 1e-12, name);
    }
}

#[test]
fn zero_module_is_degenerate_for_cosine_and_nan_is_non_finite() {
    let mut ra = small(4);
    let fc = ra.iter_mut().find(|t| t.name == "fc.bias").unwrap();
    fc.bytes = encode("F64", &[0.0; 10]);
    let fw = ra.iter_mut().find(|t| t.name == "fc.weight").unwrap();
    fw.bytes = encode("F32", &[0.0; 170]);
    let e = geometry::compare(&Context::cpu(), &set(&ra), &set(&small(5))).unwrap_err();
    assert!(matches!(&e, Error::DegenerateInput(m) if m.contains("fc")), "{e}");
    // Distances stay defined.
    geometry::distance(&Context::cpu(), &set(&ra), &set(&small(5))).unwrap();
    let mut rn = small(4);
    let c = rn.iter_mut().find(|t| t.name == "conv1.weight").unwrap();
    c.bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = geometry::distance(&Context::cpu(), &set(&rn), &set(&small(5))).unwrap_err();
    assert!(matches!(&e, Error::NonFinite(m) if m.contains("conv1")), "{e}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (a, b) = (set(&resnet(31)), set(&resnet(32)));
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| geometry::distance(&Context::cpu(), &a, &b).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

fn values_of(p: &ParamSet, name: &str) -> Vec<f64> {
    let t = p.tensor(name).unwrap();
    decode(&t.dtype().name(), t.bytes().unwrap())
}

#[test]
fn interpolate_module_and_rewind_move_one_module_only() {
    let (ra, rb) = (resnet(41), resnet(42));
    let (a, b) = (set(&ra), set(&rb));
    let ctx = Context::cpu();
    let mut out = a.try_clone().unwrap();
    let m = geometry::module_named(&a, "layer4").unwrap();
    geometry::interpolate_module(&ctx, &a, &b, 0.25, m, &mut out).unwrap();
    for t in ra.iter() {
        let got = out.tensor(&t.name).unwrap().bytes().unwrap().to_vec();
        let u = rb.iter().find(|u| u.name == t.name).unwrap();
        if !t.is_weight() {
            assert_eq!(got, t.bytes, "{}: non-weights from a", t.name);
        } else if t.name.starts_with("layer4.") {
            let (x, y, g) = (t.values(), u.values(), decode(t.dtype, &got));
            for i in 0..g.len() {
                let w = 0.75 * x[i] + 0.25 * y[i];
                assert!((g[i] - w).abs() <= 2f64.powi(-8) * w.abs() + 1e-6, "{}[{i}]", t.name);
            }
        } else {
            assert_eq!(got, u.bytes, "{}: stays at b bit for bit", t.name);
        }
    }
    // Rewind: alpha 0 puts the module at its initial value, alpha 1 gives the final set.
    let (init, fin) = (&a, &b);
    let mut r = a.try_clone().unwrap();
    let fc = geometry::module_named(init, "fc").unwrap();
    geometry::rewind(&ctx, init, fin, fc, 0.0, &mut r).unwrap();
    assert_eq!(r.tensor("fc.weight").unwrap().bytes().unwrap(), init.tensor("fc.weight").unwrap().bytes().unwrap());
    assert_eq!(
        r.tensor("conv1.weight").unwrap().bytes().unwrap(),
        fin.tensor("conv1.weight").unwrap().bytes().unwrap()
    );
    geometry::rewind(&ctx, init, fin, fc, 1.0, &mut r).unwrap();
    assert_eq!(r.tensor("fc.bias").unwrap().bytes().unwrap(), fin.tensor("fc.bias").unwrap().bytes().unwrap());
    geometry::rewind(&ctx, init, fin, fc, 0.5, &mut r).unwrap();
    let (x, y, g) = (values_of(init, "fc.bias"), values_of(fin, "fc.bias"), values_of(&r, "fc.bias"));
    for i in 0..g.len() {
        close(g[i], 0.5 * x[i] + 0.5 * y[i], 1e-15, "fc.bias");
    }
    let e = geometry::rewind(&ctx, init, fin, 99, 0.5, &mut r).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    let e = geometry::rewind(&ctx, init, fin, fc, f64::NAN, &mut r).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    assert!(matches!(geometry::module_named(init, "layer9"), Err(Error::NotFound(_))));
}

#[test]
fn wrap_is_zero_copy_and_checked() {
    let mut r = Rng(77);
    let a: Vec<f32> = (0..1001).map(|_| r.uniform() as f32).collect();
    let b: Vec<f32> = (0..1001).map(|_| r.uniform() as f32).collect();
    let mut out = vec![0f32; 1001];
    let mut bias = vec![0f64; 3];
    let ab = [0.5f64, -1.0, 2.0];
    let bb = [1.5f64, 1.0, -2.0];
    let spec = |name: &str, ptr: *mut u8, dtype, shape: Vec<usize>| TensorSpec {
        name: name.into(),
        dtype,
        shape,
        ptr,
        device: -1,
    };
    // SAFETY: every pointer given to mk addresses a live array of 7 x 11 x 13 f32 / 3 f64 that
    // outlives the sets; only `out` and `bias` are written, through `po` alone.
    let mk = |w: *mut u8, bi: *mut u8| unsafe {
        ParamSet::wrap(vec![
            spec("fc.weight", w, DType::F32, vec![7, 11, 13]),
            spec("fc.bias", bi, DType::F64, vec![3]),
        ])
    };
    let pa = mk(a.as_ptr() as *mut u8, ab.as_ptr() as *mut u8).unwrap();
    let pb = mk(b.as_ptr() as *mut u8, bb.as_ptr() as *mut u8).unwrap();
    let mut po = mk(out.as_mut_ptr() as *mut u8, bias.as_mut_ptr() as *mut u8).unwrap();
    assert_eq!(pa.tensor("fc.weight").unwrap().bytes().unwrap().as_ptr(), a.as_ptr() as *const u8);
    geometry::interpolate(&Context::cpu(), &pa, &pb, 0.3, &mut po).unwrap();
    drop(po);
    for i in 0..a.len() {
        let w = 0.7 * a[i] as f64 + 0.3 * b[i] as f64;
        assert!((out[i] as f64 - w).abs() <= 1e-6 * (a[i].abs() + b[i].abs()) as f64, "{i}");
    }
    for i in 0..3 {
        close(bias[i], 0.7 * ab[i] + 0.3 * bb[i], 1e-15, "bias");
    }
    // Misaligned, overlapping, NULL, duplicate, empty, device.
    // SAFETY: each of these is refused before any set exists, so no memory is touched.
    let bad = |specs: Vec<TensorSpec>| unsafe { ParamSet::wrap(specs) }.unwrap_err();
    let p = a.as_ptr() as *mut u8;
    // SAFETY: 1 byte into a's allocation.
    let e = bad(vec![spec("x", unsafe { p.add(1) }, DType::F32, vec![2])]);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("aligned")), "{e}");
    // SAFETY: 8 bytes into a's allocation.
    let e = bad(vec![spec("x", p, DType::F32, vec![4]), spec("y", unsafe { p.add(8) }, DType::F32, vec![4])]);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("overlap")), "{e}");
    let e = bad(vec![spec("x", std::ptr::null_mut(), DType::F32, vec![4])]);
    assert!(matches!(e, Error::NullArgument(_)), "{e}");
    // SAFETY: 4 bytes into a's allocation.
    let e = bad(vec![spec("x", p, DType::F32, vec![1]), spec("x", unsafe { p.add(4) }, DType::F32, vec![1])]);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("twice")), "{e}");
    let e = bad(vec![spec("", p, DType::F32, vec![1])]);
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = bad(vec![spec("x", p, DType::F32, vec![usize::MAX, 2])]);
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Device memory is computed on with a CUDA context for that device only (tests/cuda.rs);
    // a CPU context says so, and a call that mixes host and device memory is refused. Neither
    // touches the (here fake) device address.
    // SAFETY: the fake device address is never dereferenced: every use below is refused first.
    let dev = unsafe { ParamSet::wrap(vec![TensorSpec { device: 0, ..spec("x", p, DType::F32, vec![1]) }]) }.unwrap();
    let e = geometry::norms(&Context::cpu(), &dev).unwrap_err();
    assert!(matches!(&e, Error::DeviceUnavailable(m) if m.contains("CUDA context")), "{e}");
    // SAFETY: `bias` holds 3 f64, more than the one f32 wrapped, and outlives the set.
    let host = unsafe { ParamSet::wrap(vec![spec("x", bias.as_mut_ptr() as *mut u8, DType::F32, vec![1])]) }.unwrap();
    let e = geometry::distance(&Context::cpu(), &host, &dev).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("one place")), "{e}");
    let e = dev.tensors()[0].host().unwrap_err();
    assert!(matches!(&e, Error::DeviceUnavailable(m) if m.contains("needs host memory")), "{e}");
    // An out that shares memory with an input is refused.
    let mut alias = mk(a.as_ptr() as *mut u8, bias.as_mut_ptr() as *mut u8).unwrap();
    let e = geometry::interpolate(&Context::cpu(), &pa, &pb, 0.5, &mut alias).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("shares memory")), "{e}");
}

#[test]
fn mismatches_name_the_first_differing_tensor() {
    let a = set(&small(1));
    let missing: Vec<Raw> = small(2).into_iter().filter(|t| t.name != "layer2.0.conv1.weight").collect();
    let e = match_weights(&a, &set(&missing), "a", "b").unwrap_err();
    assert!(
        matches!(&e, Error::ShapeMismatch(m) if m.contains("layer2.0.conv1.weight") && m.contains("missing from b")),
        "{e}"
    );
    let e = match_weights(&set(&missing), &a, "a", "b").unwrap_err();
    assert!(
        matches!(&e, Error::ShapeMismatch(m) if m.contains("layer2.0.conv1.weight") && m.contains("missing from a")),
        "{e}"
    );
    let mut shaped = small(2);
    shaped.iter_mut().find(|t| t.name == "bn1.bias").unwrap().shape = vec![2, 4];
    let e = geometry::distance(&Context::cpu(), &a, &set(&shaped)).unwrap_err();
    assert!(matches!(&e, Error::ShapeMismatch(m) if m.contains("bn1.bias") && m.contains("[2, 4]")), "{e}");
    // Interpolation needs one dtype per tensor and an out shaped like a.
    let mut retyped = small(2);
    let t = retyped.iter_mut().find(|t| t.name == "fc.bias").unwrap();
    t.bytes = encode("F32", &decode("F64", &t.bytes));
    t.dtype = "F32";
    let mut out = a.try_clone().unwrap();
    let e = geometry::interpolate(&Context::cpu(), &a, &set(&retyped), 0.5, &mut out).unwrap_err();
    assert!(matches!(&e, Error::UnsupportedDtype(m) if m.contains("fc.bias")), "{e}");
    let mut wrong_out = set(&retyped);
    let e = geometry::interpolate(&Context::cpu(), &a, &set(&small(3)), 0.5, &mut wrong_out).unwrap_err();
    assert!(matches!(&e, Error::ShapeMismatch(m) if m.contains("fc.bias")), "{e}");
    let e = geometry::interpolate(&Context::cpu(), &a, &a, f64::INFINITY, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

/// A seeded mutation fuzzer over the reading path: thousands of corrupted files, each must give
/// a set (whose every tensor can then be read) or a Format error, never a panic or a read out of
/// bounds (the latter is checked by running this test under valgrind or a sanitizer).
#[test]
fn mutation_fuzzer_over_the_safetensors_reader() {
    let base = to_bytes(&small(9), &[("format", "pt")]);
    let n = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&base[8..8 + n]).unwrap();
    let mut rng = Rng(0x5eed);
    let (mut ok, mut err) = (0usize, 0usize);
    let interesting: [i128; 12] = [
        0,
        1,
        7,
        8,
        -1,
        255,
        65_536,
        u32::MAX as i128,
        i64::MAX as i128,
        u64::MAX as i128,
        (u64::MAX as i128) + 1,
        1 << 62,
    ];
    for iter in 0..6000 {
        let mut bytes = base.clone();
        match rng.below(6) {
            // Flip random bytes anywhere.
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next_u64() as u8;
                }
            }
            // Truncate or extend.
            1 => {
                let len = rng.below(bytes.len() + 16);
                bytes.resize(len, 0xAB);
            }
            // A hostile length prefix.
            2 => {
                let v = interesting[rng.below(interesting.len())] as u64;
                let v =
                    if rng.below(2) == 0 { v } else { (n as u64).wrapping_add(rng.below(33) as u64).wrapping_sub(16) };
                bytes[..8].copy_from_slice(&v.to_le_bytes());
            }
            // Structured: one field of one tensor set to an awkward value.
            _ => {
                let mut h = header.clone();
                let obj = h.as_object_mut().unwrap();
                let keys: Vec<String> = obj.keys().cloned().collect();
                let key = &keys[rng.below(keys.len())];
                if key != "__metadata__" {
                    let t = obj.get_mut(key).unwrap();
                    let v = || serde_json::json!(interesting[(iter * 7 + 3) % interesting.len()] as i64);
                    match rng.below(6) {
                        0 => t["data_offsets"][rng.below(2)] = v(),
                        1 => {
                            t["data_offsets"][1] = serde_json::json!(t["data_offsets"][1]
                                .as_u64()
                                .unwrap_or(0)
                                .saturating_add(rng.below(5) as u64)
                                .saturating_sub(2))
                        }
                        2 => {
                            let shape = t["shape"].as_array_mut().unwrap();
                            if shape.is_empty() {
                                shape.push(v())
                            } else {
                                let k = rng.below(shape.len());
                                shape[k] = v()
                            }
                        }
                        3 => t["shape"] = serde_json::json!([u32::MAX, u32::MAX, 16]),
                        4 => {
                            t["dtype"] = serde_json::json!(
                                ["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F4", "F8_E4M3", "Q4", "3"]
                                    [rng.below(11)]
                            )
                        }
                        _ => {
                            obj.remove(key);
                        }
                    }
                } else {
                    obj.insert("__metadata__".into(), serde_json::json!({"x": [1, 2]}));
                }
                let text = serde_json::to_string(&h).unwrap();
                let mut m = (text.len() as u64).to_le_bytes().to_vec();
                m.extend(text.as_bytes());
                m.extend(&base[8 + n..]);
                bytes = m;
            }
        }
        match std::panic::catch_unwind(|| ParamSet::from_bytes(&bytes, "fuzzed")) {
            Err(_) => panic!("iteration {iter}: the reader panicked on {} bytes", bytes.len()),
            Ok(Ok(p)) => {
                ok += 1;
                // Every tensor of an accepted file is readable in full.
                let total: usize = p.tensors().iter().map(|t| t.bytes().unwrap().len()).sum();
                assert!(total <= bytes.len());
                if let Err(e) = geometry::norms(&Context::cpu(), &p) {
                    assert!(matches!(e, Error::NonFinite(_)), "iteration {iter}: {e}");
                }
            }
            Ok(Err(e)) => {
                err += 1;
                assert!(matches!(e, Error::Format(_)), "iteration {iter}: {e:?}");
                assert!(e.to_string().starts_with("fuzzed: "), "{e}");
            }
        }
    }
    println!("mutation fuzzer: 6000 files, {ok} accepted, {err} rejected with a Format error");
    assert!(ok > 100 && err > 3000, "the mutations exercise both outcomes: {ok} ok, {err} errors");
}

/// The bytes of every tensor of `p`, in set order.
fn all_bytes(p: &ParamSet) -> Vec<Vec<u8>> {
    p.tensors().iter().map(|t| t.bytes().unwrap().to_vec()).collect()
}

#[test]
fn a_loaded_set_is_a_snapshot_that_rewriting_or_truncating_its_file_cannot_touch() {
    use std::io::{Seek, SeekFrom, Write};
    let d = tmp("snapshot");
    let raws = resnet(4);
    let bytes = to_bytes(&raws, &[("format", "pt")]);
    let path = d.join("a.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let p = ParamSet::load(&path).unwrap();
    let want: Vec<Vec<u8>> = raws.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(all_bytes(&p), want);
    // Rewritten in place (same inode): the data section overwritten with other bytes.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(8 + n as u64)).unwrap();
    f.write_all(&vec![0x7f; bytes.len() - 8 - n]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(all_bytes(&p), want, "rewriting the file changed the loaded set");
    // Truncated to nothing: a mapped set would stop the process with SIGBUS here.
    f.set_len(0).unwrap();
    assert_eq!(all_bytes(&p), want, "truncating the file changed the loaded set");
    let norms = geometry::norms(&Context::cpu(), &p).unwrap();
    assert!(norms.total > 0.0);
    // The explicit mapping reads the same values while the file stays as it is.
    std::fs::write(&path, &bytes).unwrap();
    // SAFETY: nothing changes the file while `mapped` lives.
    let mapped = unsafe { ParamSet::load_mapped(&path) }.unwrap();
    assert_eq!(all_bytes(&mapped), want);
    assert_eq!(mapped.metadata(), p.metadata());
    drop(mapped);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn paths_that_are_not_regular_files_are_refused_at_once() {
    let d = tmp("special");
    let fifo = d.join("pipe.safetensors");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Before: opening the FIFO waited for a writer forever; /dev/zero read as "truncated".
    for (path, kind) in
        [(fifo.as_path(), "FIFO"), (std::path::Path::new("/dev/zero"), "character device"), (&d, "directory")]
    {
        // On another thread, so that a load that blocks (the old behaviour on a FIFO) fails the
        // test after a generous wait instead of hanging it; this guards a hang, it times nothing.
        let (sender, receiver) = std::sync::mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || sender.send(ParamSet::load(&owned).map(|_| ())));
        let e = receiver
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{}: the load blocked", path.display()))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Io(m) if m.contains(kind) && m.contains("regular file")),
            "{}: {e}",
            path.display()
        );
        // SAFETY: the call fails before anything is mapped.
        let e = unsafe { ParamSet::load_mapped(path) }.unwrap_err();
        assert!(matches!(&e, Error::Io(m) if m.contains(kind)), "{e}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_header_naming_a_tensor_twice_is_a_format_error() {
    let text = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    bytes.extend([0u8; 8]);
    let e = ParamSet::from_bytes(&bytes, "twice").unwrap_err();
    assert!(matches!(&e, Error::Format(m) if m.contains("\"w\" appears twice")), "{e}");
}

#[test]
fn an_interpolation_that_overflows_is_non_finite_naming_the_tensor() {
    let (a, b) = (set(&small(1)), set(&small(2)));
    let mut out = a.try_clone().unwrap();
    // Before: 1e39 (inf in f32) and 1e308 gave NaN weights with Ok.
    for lambda in [1e39, 1e308, -1e300] {
        let e = geometry::interpolate(&Context::cpu(), &a, &b, lambda, &mut out).unwrap_err();
        assert!(matches!(&e, Error::NonFinite(m) if m.contains("tensor \"conv1.weight\"")), "{lambda}: {e}");
    }
    geometry::interpolate(&Context::cpu(), &a, &b, 2.0, &mut out).unwrap();
}

/// An interpolation whose output is past the size where it streams its stores (tens of MiB),
/// in three dtypes with odd lengths: every result is the kernel's expression rounded once (bit
/// for bit), and an overflow near the end of one tensor is still reported, naming it.
#[test]
fn a_large_interpolation_equals_the_kernel_expression_and_reports_overflow() {
    use half::{bf16, f16};
    let mut r = Rng(5);
    let n32 = 3_000_017;
    let n16 = 2_000_003;
    let a32: Vec<f32> = (0..n32).map(|_| r.uniform() as f32 * 4.0 - 2.0).collect();
    let b32: Vec<f32> = (0..n32).map(|_| r.uniform() as f32 * 4.0 - 2.0).collect();
    let abf: Vec<bf16> = (0..n16).map(|_| bf16::from_f64(r.uniform() * 8.0 - 4.0)).collect();
    let bbf: Vec<bf16> = (0..n16).map(|_| bf16::from_f64(r.uniform() * 8.0 - 4.0)).collect();
    let mut ah: Vec<f16> = (0..n16).map(|_| f16::from_f64(r.uniform() * 2.0 - 1.0)).collect();
    let bh: Vec<f16> = (0..n16).map(|_| f16::from_f64(r.uniform() * 2.0 - 1.0)).collect();
    let (mut o32, mut obf, mut oh) = (vec![0f32; n32], vec![bf16::ZERO; n16], vec![f16::ZERO; n16]);
    let spec = |name: &str, ptr: *mut u8, dtype, n: usize| TensorSpec {
        name: name.into(),
        dtype,
        shape: vec![n],
        ptr,
        device: -1,
    };
    // SAFETY: each pointer addresses a live array of the dtype and length given, which outlives
    // the set; only the outputs are written, through their set alone.
    let mk = |p32: *mut u8, pbf: *mut u8, ph: *mut u8| unsafe {
        ParamSet::wrap(vec![
            spec("fc1.weight", p32, DType::F32, n32),
            spec("fc2.weight", pbf, DType::BF16, n16),
            spec("fc3.weight", ph, DType::F16, n16),
        ])
        .unwrap()
    };
    let lambda = 0.3;
    let (l, m) = (lambda as f32, 1.0 - lambda as f32);
    {
        let pa = mk(a32.as_ptr() as *mut u8, abf.as_ptr() as *mut u8, ah.as_ptr() as *mut u8);
        let pb = mk(b32.as_ptr() as *mut u8, bbf.as_ptr() as *mut u8, bh.as_ptr() as *mut u8);
        let mut po = mk(o32.as_mut_ptr() as *mut u8, obf.as_mut_ptr() as *mut u8, oh.as_mut_ptr() as *mut u8);
        geometry::interpolate(&Context::cpu(), &pa, &pb, lambda, &mut po).unwrap();
    }
    for i in 0..n32 {
        assert_eq!(o32[i].to_bits(), l.mul_add(b32[i], m * a32[i]).to_bits(), "f32 element {i}");
    }
    for i in 0..n16 {
        let want = bf16::from_f32(l.mul_add(bbf[i].to_f32(), m * abf[i].to_f32()));
        assert_eq!(obf[i].to_bits(), want.to_bits(), "bf16 element {i}");
        let want = f16::from_f32(l.mul_add(bh[i].to_f32(), m * ah[i].to_f32()));
        assert_eq!(oh[i].to_bits(), want.to_bits(), "f16 element {i}");
    }
    // 3 x 60000 at lambda 2 is past f16's largest value, 65504.
    ah[n16 - 2] = f16::from_f32(-60000.0);
    let pa = mk(a32.as_ptr() as *mut u8, abf.as_ptr() as *mut u8, ah.as_ptr() as *mut u8);
    let mut bh2 = bh.clone();
    bh2[n16 - 2] = f16::from_f32(60000.0);
    let pb = mk(b32.as_ptr() as *mut u8, bbf.as_ptr() as *mut u8, bh2.as_ptr() as *mut u8);
    let mut po = mk(o32.as_mut_ptr() as *mut u8, obf.as_mut_ptr() as *mut u8, oh.as_mut_ptr() as *mut u8);
    let e = geometry::interpolate(&Context::cpu(), &pa, &pb, 2.0, &mut po).unwrap_err();
    assert!(matches!(&e, Error::NonFinite(m) if m.contains("tensor \"fc3.weight\"")), "{e}");
}
