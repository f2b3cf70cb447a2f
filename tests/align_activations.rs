//! Activation matching (issue 18): the correlations against a direct f64 computation, known
//! permutations of the built-in MLP and CNN recovered exactly from their activations, the aligned
//! model computing what B computes, and the errors.

mod common;

use common::{assert_bit_equal, random_admissible, TestRng, SMALL_CNN_SPEC};
use transferlens::align::activations::{cnn_unit_activations, mlp_unit_activations, units_last};
use transferlens::align::{apply, invert, match_activations, ActivationMatcher, PermGroup, PermSpec};
use transferlens::model::{f32_set, Cnn, Dataset, Mlp};
use transferlens::{Context, Error, Matrix, ParamSet};

/// Random normal values (scaled by 0.5); biases (GroupNorm's included) are positive, at least
/// 0.5, so that no ReLU unit is dead on the test data: a unit constant over the data correlates
/// with nothing, and its place among other such units could not be recovered.
fn random_set(shapes: &[(String, Vec<usize>)], rng: &mut TestRng) -> ParamSet {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let bias = name.ends_with(".bias");
            let values = (0..n)
                .map(|_| {
                    let v = 0.5 * rng.normal();
                    (if bias { v.abs() + 0.5 } else { v }) as f32
                })
                .collect();
            (name.clone(), shape.clone(), values)
        })
        .collect();
    f32_set(&tensors).unwrap()
}

fn random_data(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset {
    let mut rng = TestRng::new(seed);
    Dataset::new(
        (0..n * dim).map(|_| rng.normal() as f32).collect(),
        (0..n).map(|i| (i % classes) as u32).collect(),
        dim,
        classes,
    )
    .unwrap()
}

/// Views of per-group activations, `observations x units`.
fn views<'a>(acts: &'a [Vec<f32>], spec: &PermSpec) -> Vec<Matrix<'a>> {
    acts.iter().zip(&spec.groups).map(|(a, g)| Matrix::contiguous(a, a.len() / g.size, g.size).unwrap()).collect()
}

#[test]
fn correlations_match_a_direct_computation_over_batches() {
    let (n, p) = (50, 5);
    let mut rng = TestRng::new(1);
    // Columns with large offsets (the accumulator's shift keeps their precision) and one
    // constant column of B, which correlates 0 with everything.
    let a: Vec<f64> = (0..n * p).map(|k| 1000.0 + (k % p) as f64 + rng.normal()).collect();
    let mut b: Vec<f64> = (0..n * p).map(|k| -500.0 + 2.0 * a[k] + 0.3 * rng.normal()).collect();
    for r in 0..n {
        b[r * p + 3] = 2.5;
    }
    let spec = PermSpec { groups: vec![PermGroup { name: "g".into(), size: p, partition: vec![], axes: vec![] }] };
    let mut m = ActivationMatcher::new(&spec).unwrap();
    let ctx = Context::cpu();
    for (start, rows) in [(0, 1), (1, 30), (31, 19)] {
        let (xa, xb) = (&a[start * p..(start + rows) * p], &b[start * p..(start + rows) * p]);
        m.update(&ctx, &[Matrix::contiguous(xa, rows, p).unwrap()], &[Matrix::contiguous(xb, rows, p).unwrap()])
            .unwrap();
    }
    let got = &m.correlations().unwrap()[0];
    let column = |x: &[f64], j: usize| -> Vec<f64> { (0..n).map(|r| x[r * p + j]).collect() };
    for i in 0..p {
        for j in 0..p {
            let (x, y) = (column(&a, i), column(&b, j));
            let (mx, my) = (x.iter().sum::<f64>() / n as f64, y.iter().sum::<f64>() / n as f64);
            let cov: f64 = x.iter().zip(&y).map(|(u, v)| (u - mx) * (v - my)).sum();
            let vx: f64 = x.iter().map(|u| (u - mx) * (u - mx)).sum();
            let vy: f64 = y.iter().map(|v| (v - my) * (v - my)).sum();
            let want = if vy == 0.0 { 0.0 } else { cov / (vx * vy).sqrt() };
            assert!((got[i * p + j] - want).abs() < 1e-9, "({i}, {j}): {} vs {want}", got[i * p + j]);
        }
    }
    // Same-index columns are strongly correlated, so matching keeps the order except for the
    // constant column, which can go anywhere the others leave.
    let found = m.finish().unwrap();
    assert_eq!(found.perms[0], vec![0, 1, 2, 3, 4]);
}

#[test]
fn mlp_permutation_is_recovered_from_activations() {
    let mlp = Mlp::new(&[10, 16, 12, 8, 4]).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    let mut rng = TestRng::new(2);
    let shapes: Vec<_> =
        mlp.init(0).unwrap().tensors().iter().map(|t| (t.name().to_owned(), t.shape().to_vec())).collect();
    let a = random_set(&shapes, &mut rng);
    let hidden: Vec<Vec<usize>> = spec.groups.iter().map(|g| random_admissible(g, &mut rng)).collect();
    let b = apply(&spec, &a, &hidden).unwrap();
    let data = random_data(300, 10, 4, 3);
    let (acts_a, acts_b) =
        (mlp_unit_activations(&mlp, &a, &data).unwrap(), mlp_unit_activations(&mlp, &b, &data).unwrap());
    let found = match_activations(&Context::cpu(), &spec, &views(&acts_a, &spec), &views(&acts_b, &spec)).unwrap();
    assert_eq!(found.perms, invert(&hidden));
    assert_bit_equal(&apply(&spec, &b, &found.perms).unwrap(), &a);
}

fn cnn_set(cnn: &Cnn, seed: u64) -> ParamSet {
    let mut set = random_set(&cnn.tensor_shapes(), &mut TestRng::new(seed));
    set.set_grouping(cnn.grouping()).unwrap();
    set
}

#[test]
fn cnn_permutation_is_recovered_from_activations() {
    let cnn = Cnn::from_json(SMALL_CNN_SPEC).unwrap();
    let spec = PermSpec::for_cnn(&cnn).unwrap();
    let a = cnn_set(&cnn, 4);
    let mut rng = TestRng::new(5);
    let hidden: Vec<Vec<usize>> = spec.groups.iter().map(|g| random_admissible(g, &mut rng)).collect();
    let b = apply(&spec, &a, &hidden).unwrap();
    let data = random_data(40, 128, 3, 6);
    let acts_a = cnn_unit_activations(&cnn, &spec, &a, &data).unwrap();
    let acts_b = cnn_unit_activations(&cnn, &spec, &b, &data).unwrap();
    // Conv groups: one row per image and pixel; the dense layer: one per image.
    let rows: Vec<usize> = acts_a.iter().zip(&spec.groups).map(|(v, g)| v.len() / g.size).collect();
    assert_eq!(rows, [40 * 64, 40 * 64, 40 * 16, 40 * 16, 40]);
    // The activations of B are A's with the units permuted: the matrix is a permutation of the
    // identity-like diagonal of ones.
    let found = match_activations(&Context::cpu(), &spec, &views(&acts_a, &spec), &views(&acts_b, &spec)).unwrap();
    assert_eq!(found.perms, invert(&hidden));
    assert_bit_equal(&apply(&spec, &b, &found.perms).unwrap(), &a);
}

#[test]
fn activation_matched_models_compute_what_b_computes() {
    let cnn = Cnn::from_json(SMALL_CNN_SPEC).unwrap();
    let spec = PermSpec::for_cnn(&cnn).unwrap();
    let (a, b) = (cnn_set(&cnn, 7), cnn_set(&cnn, 8));
    let data = random_data(32, 128, 3, 9);
    let acts_a = cnn_unit_activations(&cnn, &spec, &a, &data).unwrap();
    let acts_b = cnn_unit_activations(&cnn, &spec, &b, &data).unwrap();
    let found = match_activations(&Context::cpu(), &spec, &views(&acts_a, &spec), &views(&acts_b, &spec)).unwrap();
    for (g, p) in spec.groups.iter().zip(&found.perms) {
        assert!(g.admits(p), "group {:?}", g.name);
    }
    assert!(found.perms.iter().any(|p| p.iter().enumerate().any(|(i, &j)| i != j)));
    let aligned = apply(&spec, &b, &found.perms).unwrap();
    let (before, after) = (cnn.activations(&b, &data).unwrap(), cnn.activations(&aligned, &data).unwrap());
    let (want, got) = (before.last().unwrap(), after.last().unwrap());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = want.iter().zip(got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst <= 1e-5 * scale.max(1.0), "logits differ by {worst} (scale {scale})");
}

#[test]
fn units_last_puts_each_pixel_in_a_row() {
    // 2 inputs x 3 units x 2 pixels.
    let x: Vec<u32> = (0..12).collect();
    assert_eq!(units_last(&x, 2, 3).unwrap(), vec![0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]);
    assert_eq!(units_last(&x, 4, 3).unwrap(), x);
    assert!(matches!(units_last(&x, 5, 3), Err(Error::ShapeMismatch(_))));
}

#[test]
fn activation_matching_errors_name_the_group() {
    let g = |name: &str, size| PermGroup { name: name.into(), size, partition: vec![], axes: vec![] };
    let spec = PermSpec { groups: vec![g("first", 3), g("second", 2)] };
    let ctx = Context::cpu();
    let x3 = [0.5f32, 1.0, -1.0, 2.0, 0.0, 1.5];
    let x2 = [1.0f32, 2.0, 3.0, 5.0];
    let m3 = Matrix::contiguous(&x3, 2, 3).unwrap();
    let m2 = Matrix::contiguous(&x2, 2, 2).unwrap();
    let mut m = ActivationMatcher::new(&spec).unwrap();
    // Before any data, and with too few observations.
    assert!(matches!(m.finish(), Err(Error::DegenerateInput(e)) if e.contains("\"first\"")));
    let err = m.update(&ctx, &[m3], &[m3]).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch(e) if e.contains("2 groups")), "{err}");
    let err = m.update(&ctx, &[m3, m3], &[m3, m2]).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch(e) if e.contains("\"second\"") && e.contains("A's")), "{err}");
    let one_row = Matrix::contiguous(&x2[..2], 1, 2).unwrap();
    let err = m.update(&ctx, &[m3, m2], &[m3, one_row]).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch(e) if e.contains("\"second\"") && e.contains("rows")), "{err}");
    // A NaN in the second group's data, after the first group took the batch: the matcher
    // refuses further use.
    let nan = [f32::NAN, 1.0, 2.0, 3.0];
    let err = m.update(&ctx, &[m3, m2], &[m3, Matrix::contiguous(&nan, 2, 2).unwrap()]).unwrap_err();
    assert!(matches!(&err, Error::NonFinite(e) if e.contains("\"second\"")), "{err}");
    let err = m.update(&ctx, &[m3, m2], &[m3, m2]).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(e) if e.contains("new matcher")), "{err}");
    assert!(matches!(m.finish(), Err(Error::InvalidArgument(_))));
    // A fresh matcher with two observations works.
    let mut m = ActivationMatcher::new(&spec).unwrap();
    m.update(&ctx, &[m3, m2], &[m3, m2]).unwrap();
    assert_eq!(m.finish().unwrap().perms.len(), 2);
}
