//! Permutation alignment (src/align, docs/align.md): the assignment solver against brute force
//! and an optimality certificate, the inferred specs, exact recovery of a known permutation of
//! the built-in MLP, the CNN and a dense chain, function equality after alignment, the JSON
//! spec's errors, and the interpolation barrier before and after alignment.

mod common;

use common::{assert_bit_equal, random_admissible, TestRng, SMALL_CNN_SPEC};
use transferlens::align::assignment::{solve, Objective};
use transferlens::align::{apply, invert, match_weights, MatchOptions, PermSpec};
use transferlens::model::{f32_set, Cnn, Dataset, Mlp};
use transferlens::{Error, ParamSet};

// ---------------------------------------------------------------- the assignment solver

/// Every injective map of `k` rows into `0..n` columns.
fn injections(k: usize, n: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for prefix in injections(k - 1, n) {
        for c in (0..n).filter(|c| !prefix.contains(c)) {
            let mut p = prefix.clone();
            p.push(c);
            out.push(p);
        }
    }
    out
}

/// The optimum by enumeration (over the smaller side's maps into the larger).
fn brute_force(m: &[f64], rows: usize, cols: usize, objective: Objective) -> f64 {
    let better = |x: f64, y: f64| if objective == Objective::Minimize { x < y } else { x > y };
    let mut best = if objective == Objective::Minimize { f64::INFINITY } else { f64::NEG_INFINITY };
    for p in injections(rows.min(cols), rows.max(cols)) {
        let v: f64 =
            p.iter().enumerate().map(|(i, &j)| if rows <= cols { m[i * cols + j] } else { m[j * cols + i] }).sum();
        if better(v, best) {
            best = v;
        }
    }
    best
}

/// The pairs are a matching of `min(rows, cols)` pairs and `total` is their sum.
fn check_matching(m: &[f64], rows: usize, cols: usize, a: &transferlens::align::Assignment) {
    let matched: Vec<(usize, usize)> =
        a.col_for_row.iter().enumerate().filter_map(|(r, c)| c.map(|c| (r, c))).collect();
    assert_eq!(matched.len(), rows.min(cols));
    for &(r, c) in &matched {
        assert_eq!(a.row_for_col[c], Some(r));
    }
    assert_eq!(a.row_for_col.iter().flatten().count(), matched.len());
    let sum: f64 = matched.iter().map(|&(r, c)| m[r * cols + c]).sum();
    assert_eq!(sum, a.total);
}

/// Dual feasibility and complementary slackness of the returned potentials (module docs of
/// `assignment`), to `tol`.
fn check_certificate(
    m: &[f64],
    rows: usize,
    cols: usize,
    objective: Objective,
    a: &transferlens::align::Assignment,
    tol: f64,
) {
    let s = if objective == Objective::Minimize { 1.0 } else { -1.0 };
    let (u, v) = (&a.row_potentials, &a.col_potentials);
    for i in 0..rows {
        for j in 0..cols {
            let reduced = s * m[i * cols + j] - u[i] - v[j];
            assert!(reduced >= -tol, "reduced cost ({i}, {j}) = {reduced} < 0");
            if a.col_for_row[i] == Some(j) {
                assert!(reduced.abs() <= tol, "matched pair ({i}, {j}) has reduced cost {reduced}");
            }
        }
    }
    // Rectangular: the unmatched side's potentials are 0, the larger side's <= 0 (square
    // matrices have equality constraints on both sides, so no sign).
    if rows == cols {
        let dual: f64 = u.iter().sum::<f64>() + v.iter().sum::<f64>();
        assert!((dual - s * a.total).abs() <= tol * (rows + cols) as f64, "dual {dual} vs primal {}", s * a.total);
        return;
    }
    let (side, matched): (&[f64], Vec<bool>) = if rows >= cols {
        (u, a.col_for_row.iter().map(Option::is_some).collect())
    } else {
        (v, a.row_for_col.iter().map(Option::is_some).collect())
    };
    for (p, is_matched) in side.iter().zip(matched) {
        assert!(*p <= tol, "potential {p} of the larger side is positive");
        if !is_matched {
            assert_eq!(*p, 0.0);
        }
    }
    // Strong duality: the dual objective equals the primal.
    let dual: f64 = u.iter().sum::<f64>() + v.iter().sum::<f64>();
    assert!((dual - s * a.total).abs() <= tol * (rows + cols) as f64, "dual {dual} vs primal {}", s * a.total);
}

#[test]
fn assignment_equals_brute_force_on_every_small_shape() {
    let mut rng = TestRng::new(18);
    for rows in 1..=7 {
        for cols in 1..=7 {
            for trial in 0..4 {
                // Trials 0 and 1: few distinct integers (many ties); 2 and 3: random floats.
                let m: Vec<f64> = (0..rows * cols)
                    .map(|_| if trial < 2 { rng.below(3) as f64 } else { rng.normal() * 10.0 })
                    .collect();
                for objective in [Objective::Minimize, Objective::Maximize] {
                    let a = solve(&m, rows, cols, objective).unwrap();
                    check_matching(&m, rows, cols, &a);
                    let want = brute_force(&m, rows, cols, objective);
                    assert!(
                        (a.total - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "{rows} x {cols} trial {trial} {objective:?}: {} vs brute force {want}",
                        a.total
                    );
                    check_certificate(&m, rows, cols, objective, &a, 1e-9);
                }
            }
        }
    }
}

#[test]
fn assignment_rejects_non_finite_and_misshapen_input() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let m = [1.0, 2.0, bad, 4.0];
        let e = solve(&m, 2, 2, Objective::Minimize).unwrap_err();
        assert!(matches!(e, Error::NonFinite(ref s) if s.contains("(1, 0)")), "{e}");
    }
    assert!(matches!(solve(&[1.0; 5], 2, 3, Objective::Minimize), Err(Error::InvalidArgument(_))));
    let empty = solve(&[], 0, 4, Objective::Maximize).unwrap();
    assert_eq!((empty.col_for_row.len(), empty.row_for_col, empty.total), (0, vec![None; 4], 0.0));
}

#[test]
fn assignment_of_1000_is_certified_optimal() {
    let mut rng = TestRng::new(1000);
    let n = 1000;
    let m: Vec<f64> = (0..n * n).map(|_| rng.uniform()).collect();
    for objective in [Objective::Minimize, Objective::Maximize] {
        let a = solve(&m, n, n, objective).unwrap();
        check_matching(&m, n, n, &a);
        check_certificate(&m, n, n, objective, &a, 1e-9);
    }
    // Rectangular both ways.
    let (r, c) = (300, 1000);
    let a = solve(&m[..r * c], r, c, Objective::Minimize).unwrap();
    check_matching(&m[..r * c], r, c, &a);
    check_certificate(&m[..r * c], r, c, Objective::Minimize, &a, 1e-9);
    let a = solve(&m[..r * c], c, r, Objective::Maximize).unwrap();
    check_matching(&m[..r * c], c, r, &a);
    check_certificate(&m[..r * c], c, r, Objective::Maximize, &a, 1e-9);
}

// ---------------------------------------------------------------- helpers for models

/// A set with the given tensor shapes and random normal values (scaled by 0.5, plus 1 for
/// GroupNorm weights so that no two units are alike).
fn random_set(shapes: &[(String, Vec<usize>)], rng: &mut TestRng) -> ParamSet {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            (name.clone(), shape.clone(), (0..n).map(|_| (0.5 * rng.normal()) as f32).collect())
        })
        .collect();
    f32_set(&tensors).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(worst <= 1e-5 * scale.max(1.0), "{what}: largest difference {worst} (scale {scale})");
}

/// Recovering a known permutation: B = A under random admissible permutations; matching must
/// return their inverse and the aligned B must be A bit for bit.
fn check_recovery(spec: &PermSpec, a: &ParamSet, seed: u64) {
    let mut rng = TestRng::new(seed);
    let hidden: Vec<Vec<usize>> = spec.groups.iter().map(|g| random_admissible(g, &mut rng)).collect();
    assert!(hidden.iter().any(|p| p.iter().enumerate().any(|(i, &j)| i != j)), "the test permutation is the identity");
    let b = apply(spec, a, &hidden).unwrap();
    let found = match_weights(spec, a, &b, &MatchOptions { seed, max_passes: 20 }).unwrap();
    assert!(found.converged);
    assert_eq!(found.perms, invert(&hidden));
    assert_bit_equal(&apply(spec, &b, &found.perms).unwrap(), a);
}

// ---------------------------------------------------------------- MLP

#[test]
fn mlp_spec_recovers_a_known_permutation() {
    let mlp = Mlp::new(&[10, 16, 12, 8, 4]).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    assert_eq!(spec.groups.iter().map(|g| g.size).collect::<Vec<_>>(), vec![16, 12, 8]);
    assert_eq!(spec.groups[1].axes, vec![("fc2.weight".into(), 0), ("fc2.bias".into(), 0), ("fc3.weight".into(), 1)]);
    let mut rng = TestRng::new(3);
    let a = random_set(
        &mlp.init(0).unwrap().tensors().iter().map(|t| (t.name().into(), t.shape().to_vec())).collect::<Vec<_>>(),
        &mut rng,
    );
    // The logits' bias is indexed by classes only.
    assert_eq!(spec.untouched(&a), vec!["fc4.bias".to_owned()]);
    check_recovery(&spec, &a, 7);
}

#[test]
fn mlp_aligned_computes_the_same_function() {
    let mlp = Mlp::new(&[10, 32, 24, 5]).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    let (a, b) = (mlp.init(1).unwrap(), mlp.init(2).unwrap());
    let found = match_weights(&spec, &a, &b, &MatchOptions::default()).unwrap();
    assert!(found.converged);
    assert!(found.perms.iter().any(|p| p.iter().enumerate().any(|(i, &j)| i != j)));
    let aligned = apply(&spec, &b, &found.perms).unwrap();
    let mut rng = TestRng::new(11);
    let data =
        Dataset::new((0..200 * 10).map(|_| rng.normal() as f32).collect(), (0..200).map(|i| i % 5).collect(), 10, 5)
            .unwrap();
    let (before, after) = (mlp.activations(&b, &data).unwrap(), mlp.activations(&aligned, &data).unwrap());
    assert_close(after.last().unwrap(), before.last().unwrap(), "MLP logits");
    // The hidden units did move: the first layer's activations differ as unordered columns only.
    assert_ne!(after[0], before[0]);
}

// ---------------------------------------------------------------- CNN

fn cnn_and_set(seed: u64) -> (Cnn, ParamSet) {
    let cnn = Cnn::from_json(SMALL_CNN_SPEC).unwrap();
    let mut rng = TestRng::new(seed);
    let mut set = random_set(&cnn.tensor_shapes(), &mut rng);
    set.set_grouping(cnn.grouping()).unwrap();
    (cnn, set)
}

#[test]
fn cnn_spec_shares_the_residual_stream_and_keeps_groupnorm_groups() {
    let (cnn, set) = cnn_and_set(1);
    let spec = PermSpec::for_cnn(&cnn).unwrap();
    spec.check(&set).unwrap();
    let names: Vec<&str> = spec.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["conv1", "layer1.conv1", "layer2.conv1", "layer2.downsample.0", "fc1"]);
    // The stem's channels are layer1's residual stream: gn1 (2 groups) and layer1.gn2 (4) nest.
    let stem = &spec.groups[0];
    assert_eq!(stem.partition, vec![2, 4]);
    for axis in [
        ("layer1.conv2.weight", 0),
        ("layer1.gn2.weight", 0),
        ("layer2.conv1.weight", 1),
        ("layer2.downsample.0.weight", 1),
    ] {
        assert!(stem.axes.contains(&(axis.0.into(), axis.1)), "{axis:?} not in the stem's group");
    }
    // layer2's output stream: downsample, conv2 and gn2, then the dense layer's input.
    let out = &spec.groups[3];
    for axis in
        [("layer2.downsample.1.weight", 0), ("layer2.conv2.weight", 0), ("layer2.gn2.bias", 0), ("fc1.weight", 1)]
    {
        assert!(out.axes.contains(&(axis.0.into(), axis.1)), "{axis:?} not in layer2's stream");
    }
    assert_eq!(out.partition, vec![4]);
    // The logits (fc2's outputs) are not permuted; every other tensor is touched on some axis.
    assert_eq!(spec.untouched(&set), vec!["fc2.bias".to_owned()]);
    assert!(!spec.groups.iter().flat_map(|g| &g.axes).any(|(n, a)| n == "fc2.weight" && *a == 0));

    // A permutation that moves a unit across GroupNorm groups is refused.
    let mut crossing: Vec<usize> = (0..8).collect();
    crossing.swap(1, 2); // blocks of 2 (4 groups): units 1 and 2 lie in different groups
    assert!(!stem.admits(&crossing));
    let mut perms: Vec<Vec<usize>> = spec.groups.iter().map(|g| (0..g.size).collect()).collect();
    perms[0] = crossing;
    assert!(matches!(apply(&spec, &set, &perms), Err(Error::InvalidArgument(_))));
}

#[test]
fn cnn_recovers_a_known_permutation() {
    let (cnn, a) = cnn_and_set(2);
    check_recovery(&PermSpec::for_cnn(&cnn).unwrap(), &a, 5);
}

#[test]
fn cnn_aligned_computes_the_same_function() {
    let (cnn, a) = cnn_and_set(3);
    let (_, b) = cnn_and_set(4);
    let spec = PermSpec::for_cnn(&cnn).unwrap();
    let found = match_weights(&spec, &a, &b, &MatchOptions { seed: 1, max_passes: 50 }).unwrap();
    for (g, p) in spec.groups.iter().zip(&found.perms) {
        assert!(g.admits(p), "group {:?}", g.name);
    }
    assert!(found.perms.iter().any(|p| p.iter().enumerate().any(|(i, &j)| i != j)));
    let aligned = apply(&spec, &b, &found.perms).unwrap();
    let mut rng = TestRng::new(12);
    let data =
        Dataset::new((0..64 * 128).map(|_| rng.normal() as f32).collect(), (0..64).map(|i| i % 3).collect(), 128, 3)
            .unwrap();
    let (before, after) = (cnn.activations(&b, &data).unwrap(), cnn.activations(&aligned, &data).unwrap());
    assert_close(after.last().unwrap(), before.last().unwrap(), "CNN logits");
}

// ---------------------------------------------------------------- dense chains and JSON specs

#[test]
fn dense_chain_is_inferred_and_recovered() {
    let shapes: Vec<(String, Vec<usize>)> = [
        ("encoder.in.weight", vec![9, 5]),
        ("encoder.in.bias", vec![9]),
        ("encoder.mid.weight", vec![7, 9]),
        ("encoder.out.weight", vec![3, 7]),
        ("encoder.out.bias", vec![3]),
        ("temperature", vec![1]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), s))
    .collect();
    let a = random_set(&shapes, &mut TestRng::new(9));
    let spec = PermSpec::for_dense_chain(&a).unwrap();
    assert_eq!(spec.groups.len(), 2);
    assert_eq!(
        spec.groups[0].axes,
        vec![("encoder.in.weight".into(), 0), ("encoder.in.bias".into(), 0), ("encoder.mid.weight".into(), 1)]
    );
    assert_eq!(spec.untouched(&a), vec!["encoder.out.bias".to_owned(), "temperature".to_owned()]);
    check_recovery(&spec, &a, 13);

    let broken = random_set(&[("a.weight".into(), vec![4, 3]), ("b.weight".into(), vec![2, 5])], &mut TestRng::new(1));
    assert!(
        matches!(PermSpec::for_dense_chain(&broken), Err(Error::ShapeMismatch(ref s)) if s.contains("\"b.weight\""))
    );
}

#[test]
fn json_spec_round_trips_and_errors_name_the_problem() {
    let mlp = Mlp::new(&[4, 6, 3]).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    assert_eq!(PermSpec::from_json(&spec.to_json()).unwrap(), spec);
    let set = mlp.init(0).unwrap();
    let text = |axes: &str, size: usize, partition: &str| {
        format!(r#"{{"groups": [{{"name": "h", "size": {size}, "partition": {partition}, "axes": {axes}}}]}}"#)
    };
    let ok = PermSpec::from_json(&text(r#"[["fc1.weight", 0], ["fc2.weight", 1]]"#, 6, "[3]")).unwrap();
    ok.check(&set).unwrap();
    assert_eq!(ok.untouched(&set), vec!["fc1.bias".to_owned(), "fc2.bias".to_owned()]);

    let missing = PermSpec::from_json(&text(r#"[["fc9.weight", 0]]"#, 6, "[]")).unwrap();
    assert!(matches!(missing.check(&set), Err(Error::NotFound(ref s)) if s.contains("fc9.weight")));
    let wrong_size = PermSpec::from_json(&text(r#"[["fc1.weight", 1]]"#, 6, "[]")).unwrap();
    assert!(matches!(wrong_size.check(&set), Err(Error::ShapeMismatch(ref s)) if s.contains("axis 1")));
    let twice = PermSpec::from_json(&text(r#"[["fc1.weight", 0], ["fc1.weight", 0]]"#, 6, "[]")).unwrap();
    assert!(matches!(twice.check(&set), Err(Error::InvalidArgument(ref s)) if s.contains("two permutation groups")));
    assert!(
        matches!(PermSpec::from_json(&text("[]", 6, "[4]")), Err(Error::InvalidArgument(ref s)) if s.contains("partition"))
    );
    assert!(matches!(PermSpec::from_json(&text("[]", 0, "[]")), Err(Error::InvalidArgument(_))));
    assert!(matches!(PermSpec::from_json(r#"{"groups": [{"name": "h"}]}"#), Err(Error::Format(_))));
    // A permutation list that does not fit the spec.
    assert!(matches!(apply(&spec, &set, &[]), Err(Error::InvalidArgument(_))));
    assert!(matches!(apply(&spec, &set, &[vec![0, 0, 1, 2, 3, 4]]), Err(Error::InvalidArgument(_))));
}

// ---------------------------------------------------------------- the barrier after alignment

/// Rows of `dim` normals labelled by a fixed random ReLU teacher with `classes` outputs.
fn teacher_task(n: usize, dim: usize, classes: usize, rng: &mut TestRng) -> Dataset {
    let mut teacher = TestRng::new(99);
    let w1: Vec<f64> = teacher.normals(16 * dim);
    let w2: Vec<f64> = teacher.normals(classes * 16);
    let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    let y = (0..n)
        .map(|r| {
            let h: Vec<f64> = (0..16)
                .map(|k| (0..dim).map(|i| w1[k * dim + i] * x[r * dim + i] as f64).sum::<f64>().max(0.0))
                .collect();
            let z: Vec<f64> = (0..classes).map(|c| (0..16).map(|k| w2[c * 16 + k] * h[k]).sum()).collect();
            (0..classes).max_by(|&p, &q| z[p].total_cmp(&z[q])).unwrap() as u32
        })
        .collect();
    Dataset::new(x, y, dim, classes).unwrap()
}

/// `(1 - lambda) a + lambda b`, tensor by tensor, in f32.
fn lerp(a: &ParamSet, b: &ParamSet, lambda: f64) -> ParamSet {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = a
        .tensors()
        .iter()
        .map(|t| {
            let (x, y) = (t.host().unwrap().to_f32(), b.tensor(t.name()).unwrap().host().unwrap().to_f32());
            let v =
                x.iter().zip(y.iter()).map(|(&p, &q)| ((1.0 - lambda) * p as f64 + lambda * q as f64) as f32).collect();
            (t.name().to_owned(), t.shape().to_vec(), v)
        })
        .collect();
    f32_set(&tensors).unwrap()
}

/// Stated before running: after weight matching, the test-loss barrier between two MLPs trained
/// from different initialisations is not higher than before. The numbers are printed
/// (`cargo test --release --test align -- --nocapture`).
#[test]
fn alignment_does_not_raise_the_barrier_between_two_trained_mlps() {
    let mut rng = TestRng::new(5);
    let (train, test) = (teacher_task(2000, 10, 4, &mut rng), teacher_task(1000, 10, 4, &mut rng));
    let mlp = Mlp::new(&[10, 64, 64, 4]).unwrap();
    let opts = transferlens::model::TrainOptions { epochs: 20, batch: 32, lr: 0.05, ..Default::default() };
    let mut trained = Vec::new();
    for seed in [1, 2] {
        let mut p = mlp.init(seed).unwrap();
        mlp.train(&mut p, &train, &transferlens::model::TrainOptions { seed, ..opts.clone() }).unwrap();
        trained.push(p);
    }
    let (a, b) = (&trained[0], &trained[1]);
    let spec = PermSpec::for_mlp(&mlp);
    let found = match_weights(&spec, a, b, &MatchOptions::default()).unwrap();
    let aligned = apply(&spec, b, &found.perms).unwrap();

    let lambdas = transferlens::landscape::linspace(0.0, 1.0, 11);
    let barrier_to = |b: &ParamSet| {
        let losses: Vec<f64> = lambdas.iter().map(|&l| mlp.evaluate(&lerp(a, b, l), &test).unwrap().loss).collect();
        (transferlens::landscape::barrier(&lambdas, &losses, true, 0.0).unwrap(), losses)
    };
    let (raw, raw_curve) = barrier_to(b);
    let (after, after_curve) = barrier_to(&aligned);
    let fmt = |c: &[f64]| c.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(" ");
    println!("test loss along the line, lambda = 0, 0.1, .., 1 ({} passes):", found.passes);
    println!("  raw     {}  barrier {:.4} at lambda {}", fmt(&raw_curve), raw.value, raw.peak_lambda);
    println!("  aligned {}  barrier {:.4} at lambda {}", fmt(&after_curve), after.value, after.peak_lambda);
    // The aligned B computes B's function: the end point of the curve is unchanged.
    assert!((raw_curve[10] - after_curve[10]).abs() <= 1e-5 * raw_curve[10].max(1.0));
    assert!(after.value <= raw.value, "aligned barrier {} above the raw {}", after.value, raw.value);
}
