//! Linear CKA against independent references: the shared reference file (numpy, float64), plain
//! f64 feature-space and n x n sample-space formulas written in tests/common, and the
//! estimator's mathematical properties.

mod common;

use common::{assert_close, assert_rel, reference_cka_feature, reference_cka_sample, Dense, TestRng};
use half::{bf16, f16};
use transferlens::cka::{self, cka_matrix_via, linear_cka, CkaAccumulator, Estimator, MinibatchCka, Route};
use transferlens::{Context, Error, Matrix};

const ESTIMATORS: [Estimator; 2] = [Estimator::Biased, Estimator::Debiased];

fn view(d: &Dense) -> Matrix<'_> {
    Matrix::contiguous(&d.data, d.rows, d.cols).unwrap()
}

fn reference(x: &Dense, y: &Dense, est: Estimator) -> f64 {
    reference_cka_feature(x, y, est == Estimator::Debiased)
}

/// Cases of the shared reference file: (name, x, y, metadata).
fn reference_cases() -> Vec<(String, Dense, Dense, std::collections::HashMap<String, String>)> {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cka_reference.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = meta.metadata().clone().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let load = |name: &str| {
        let t = file.tensor(name).unwrap();
        let data = t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        Dense { rows: t.shape()[0], cols: t.shape()[1], data }
    };
    (0..)
        .map(|i| format!("case{i}"))
        .take_while(|c| md.contains_key(&format!("{c}.biased")))
        .map(|c| (c.clone(), load(&format!("{c}.x")), load(&format!("{c}.y")), md.clone()))
        .collect()
}

#[test]
fn matches_the_shared_reference_file_to_1e9() {
    let ctx = Context::cpu();
    let cases = reference_cases();
    assert_eq!(cases.len(), 7, "the reference file holds 7 cases");
    for (case, x, y, md) in &cases {
        for (est, key) in [(Estimator::Biased, "biased"), (Estimator::Debiased, "debiased")] {
            let want: f64 = md[&format!("{case}.{key}")].parse().unwrap();
            let desc = &md[&format!("{case}.description")];
            for route in [Route::Feature, Route::Sample] {
                let got = cka_matrix_via(&ctx, &[view(x)], &[view(y)], est, route).unwrap()[0];
                assert_rel(got, want, 1e-9, &format!("{case} ({desc}) {key} via {route:?}"));
            }
        }
        if let Some(v) = md.get(&format!("{case}.minibatch_debiased_batch30")) {
            let want: f64 = v.parse().unwrap();
            let got = cka::minibatch_cka(&ctx, &view(x), &view(y), 30).unwrap();
            assert_rel(got, want, 1e-9, &format!("{case} minibatch, batches of 30"));
        }
    }
}

#[test]
fn feature_and_sample_references_agree() {
    // The two test references are independent formulas for the same number.
    let mut rng = TestRng::new(1);
    for &(n, p, q) in &[(5, 3, 2), (13, 7, 1), (33, 5, 40)] {
        let x = Dense::random(&mut rng, n, p);
        let y = x.mix(&mut rng, q, 0.7);
        for debiased in [false, true] {
            let a = reference_cka_feature(&x, &y, debiased);
            let b = reference_cka_sample(&x, &y, debiased);
            assert_close(a, b, 1e-10, &format!("n={n} p={p} q={q} debiased={debiased}"));
        }
    }
}

#[test]
fn both_routes_match_f64_references_on_awkward_sizes() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(2);
    // Sizes: tiny, odd, not a multiple of any vector width, n << p and n >> p.
    for &(n, p, q) in &[(4, 1, 1), (5, 3, 7), (17, 1, 9), (31, 65, 3), (129, 33, 17), (40, 301, 7), (257, 5, 130)] {
        let x = Dense::random(&mut rng, n, p);
        let y = x.mix(&mut rng, q, 1.3);
        for est in ESTIMATORS {
            let want = reference(&x, &y, est);
            let want_sample = reference_cka_sample(&x, &y, est == Estimator::Debiased);
            for route in [Route::Feature, Route::Sample] {
                let got = cka_matrix_via(&ctx, &[view(&x)], &[view(&y)], est, route).unwrap()[0];
                assert_close(got, want, 1e-11, &format!("n={n} p={p} q={q} {est:?} {route:?}"));
                assert_close(
                    got,
                    want_sample,
                    1e-10,
                    &format!("n={n} p={p} q={q} {est:?} {route:?} vs sample reference"),
                );
            }
        }
    }
}

#[test]
fn the_cheaper_route_is_chosen() {
    let (a, b) = (vec![0.0f32; 10 * 5000], vec![0.0f32; 10000 * 8]);
    let wide = Matrix::contiguous(&a, 10, 5000).unwrap();
    let tall = Matrix::contiguous(&b, 10000, 8).unwrap();
    assert_eq!(cka::choose_route(10, &[wide], &[wide]), Route::Sample);
    assert_eq!(cka::choose_route(10000, &[tall], &[tall]), Route::Feature);
}

#[test]
fn layer_matrix_equals_pairwise_values() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(3);
    let n = 61;
    let base = Dense::random(&mut rng, n, 9);
    let xs: Vec<Dense> = [3, 11, 6].iter().map(|&k| base.mix(&mut rng, k, 0.5)).collect();
    let ys: Vec<Dense> = [5, 2].iter().map(|&k| base.mix(&mut rng, k, 2.0)).collect();
    let xv: Vec<Matrix> = xs.iter().map(view).collect();
    let yv: Vec<Matrix> = ys.iter().map(view).collect();
    for est in ESTIMATORS {
        for route in [Route::Feature, Route::Sample] {
            let m = cka_matrix_via(&ctx, &xv, &yv, est, route).unwrap();
            assert_eq!(m.len(), 6);
            for i in 0..3 {
                for j in 0..2 {
                    let want = reference(&xs[i], &ys[j], est);
                    assert_close(m[i * 2 + j], want, 1e-11, &format!("({i}, {j}) {est:?} {route:?}"));
                }
            }
        }
    }
}

#[test]
fn properties_identity_symmetry_invariances() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(4);
    let (n, p, q) = (47, 6, 5);
    let x = Dense::random(&mut rng, n, p);
    let y = x.mix(&mut rng, q, 1.0);
    let q_orth = random_orthogonal(&mut rng, p);
    let rotated = apply(&x, &q_orth, p);
    let scaled = Dense { data: x.data.iter().map(|v| v * 3.7).collect(), ..x.clone() };
    let general = apply(&x, &rng.normals(p * p), p);
    for est in ESTIMATORS {
        let cka = |a: &Dense, b: &Dense| linear_cka(&ctx, &view(a), &view(b), est).unwrap();
        assert_close(cka(&x, &x), 1.0, 1e-12, "CKA(X, X)");
        let xy = cka(&x, &y);
        assert_close(cka(&y, &x), xy, 1e-12, "symmetry");
        assert_close(cka(&rotated, &y), xy, 1e-11, "orthogonal transform of X");
        assert_close(cka(&scaled, &y), xy, 1e-12, "isotropic scaling of X");
        assert_close(cka(&rotated, &x), 1.0, 1e-11, "CKA(XQ, X) = 1");
        let changed = cka(&general, &y);
        assert!((changed - xy).abs() > 1e-3, "{est:?}: a general linear map should change CKA ({changed} vs {xy})");
    }
}

/// `x * m` for a `p x k` row-major `m`.
fn apply(x: &Dense, m: &[f64], k: usize) -> Dense {
    let mut data = vec![0.0; x.rows * k];
    for r in 0..x.rows {
        for j in 0..k {
            data[r * k + j] = (0..x.cols).map(|c| x.at(r, c) * m[c * k + j]).sum();
        }
    }
    Dense { rows: x.rows, cols: k, data }
}

/// A random orthogonal matrix by Gram-Schmidt on normal vectors (row-major p x p).
fn random_orthogonal(rng: &mut TestRng, p: usize) -> Vec<f64> {
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < p {
        let mut v = rng.normals(p);
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    q.concat()
}

#[test]
fn large_offsets_keep_full_f64_accuracy() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(5);
    let (n, p, q) = (300, 8, 6);
    let x = Dense::random(&mut rng, n, p);
    let y = x.mix(&mut rng, q, 1.0);
    let shifted = |d: &Dense, offset: f64| Dense { data: d.data.iter().map(|v| v + offset).collect(), ..d.clone() };
    let (xo, yo) = (shifted(&x, 1e4), shifted(&y, -3e4));
    for est in ESTIMATORS {
        // The reference centers the stored (offset, rounded) values in f64 with two passes.
        let want = reference(&xo, &yo, est);
        for route in [Route::Feature, Route::Sample] {
            let got = cka_matrix_via(&ctx, &[view(&xo)], &[view(&yo)], est, route).unwrap()[0];
            assert_rel(got, want, 1e-9, &format!("offset data, {est:?} via {route:?}"));
        }
        // Streaming in small batches as well.
        let mut acc = CkaAccumulator::new(1, 1, est).unwrap();
        for start in (0..n).step_by(7) {
            let rows = 7.min(n - start);
            let (bx, by) = (view(&xo).row_range(start, rows).unwrap(), view(&yo).row_range(start, rows).unwrap());
            acc.update(&ctx, &[bx], &[by]).unwrap();
        }
        assert_rel(acc.result().unwrap()[0], want, 1e-9, &format!("offset data streamed, {est:?}"));
    }
}

/// Rounds through a storage dtype and back to f64.
fn rounded(d: &Dense, round: impl Fn(f64) -> f64) -> Dense {
    Dense { data: d.data.iter().map(|&v| round(v)).collect(), ..d.clone() }
}

/// CKA of `x` and `y` stored as f32, and the f64 reference on the same rounded values.
fn f32_cka(ctx: &Context, x: &Dense, y: &Dense, est: Estimator) -> (f64, f64) {
    let (x32, y32): (Vec<f32>, Vec<f32>) =
        (x.data.iter().map(|&v| v as f32).collect(), y.data.iter().map(|&v| v as f32).collect());
    let want = reference(&rounded(x, |v| v as f32 as f64), &rounded(y, |v| v as f32 as f64), est);
    let got = linear_cka(
        ctx,
        &Matrix::contiguous(&x32, x.rows, x.cols).unwrap(),
        &Matrix::contiguous(&y32, y.rows, y.cols).unwrap(),
        est,
    )
    .unwrap();
    (got, want)
}

/// `x` with every column shifted so that `n |mean|^2 = ratio ||x~||_F^2`: the CPU feature route
/// uses a layer in place when the ratio is at most 1 and copies it centered above.
fn offset_by(x: &Dense, ratio: f64) -> Dense {
    let c = x.centered();
    let spread: f64 = c.data.iter().map(|v| v * v).sum();
    let shift = (ratio * spread / (x.rows * x.cols) as f64).sqrt();
    Dense { data: c.data.iter().map(|v| v + shift).collect(), ..c }
}

#[test]
fn offsets_on_both_sides_of_the_in_place_threshold_keep_the_accuracy() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(41);
    let (n, p, q) = (1201, 13, 9);
    let x0 = Dense::random(&mut rng, n, p);
    let y0 = x0.mix(&mut rng, q, 1.0);
    for ratio in [0.06, 0.98, 1.02, 4.0] {
        let (x, y) = (offset_by(&x0, ratio), offset_by(&y0, ratio));
        for est in ESTIMATORS {
            let what = format!("ratio {ratio} {est:?}");
            let got = linear_cka(&ctx, &view(&x), &view(&y), est).unwrap();
            assert_rel(got, reference(&x, &y, est), 1e-9, &format!("f64 {what}"));
            let (got, want) = f32_cka(&ctx, &x, &y, est);
            assert_rel(got, want, 2e-5, &format!("f32 {what}"));
        }
    }
}

#[test]
fn half_and_single_precision_inputs_within_2e5_of_the_rounded_data() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(6);
    for &(n, p, q) in &[(203, 17, 9), (37, 150, 20)] {
        let x = Dense::random(&mut rng, n, p);
        let y = x.mix(&mut rng, q, 1.5);
        for est in ESTIMATORS {
            let (got, want) = f32_cka(&ctx, &x, &y, est);
            assert_rel(got, want, 2e-5, &format!("f32 n={n} {est:?}"));
            // f16
            let (x16, y16): (Vec<f16>, Vec<f16>) = (
                x.data.iter().map(|&v| f16::from_f64(v)).collect(),
                y.data.iter().map(|&v| f16::from_f64(v)).collect(),
            );
            let want = reference(
                &rounded(&x, |v| f16::from_f64(v).to_f64()),
                &rounded(&y, |v| f16::from_f64(v).to_f64()),
                est,
            );
            let got = linear_cka(
                &ctx,
                &Matrix::contiguous(&x16, n, p).unwrap(),
                &Matrix::contiguous(&y16, n, q).unwrap(),
                est,
            )
            .unwrap();
            assert_rel(got, want, 2e-5, &format!("f16 n={n} {est:?}"));
            // bf16
            let (xb, yb): (Vec<bf16>, Vec<bf16>) = (
                x.data.iter().map(|&v| bf16::from_f64(v)).collect(),
                y.data.iter().map(|&v| bf16::from_f64(v)).collect(),
            );
            let want = reference(
                &rounded(&x, |v| bf16::from_f64(v).to_f64()),
                &rounded(&y, |v| bf16::from_f64(v).to_f64()),
                est,
            );
            let got =
                linear_cka(&ctx, &Matrix::contiguous(&xb, n, p).unwrap(), &Matrix::contiguous(&yb, n, q).unwrap(), est)
                    .unwrap();
            assert_rel(got, want, 2e-5, &format!("bf16 n={n} {est:?}"));
        }
    }
}

#[test]
fn row_stride_views_equal_contiguous_copies() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(7);
    let (n, p, stride) = (23, 5, 9);
    let padded = rng.normals((n - 1) * stride + p);
    let compact: Vec<f64> = (0..n).flat_map(|r| padded[r * stride..r * stride + p].to_vec()).collect();
    let y = Dense::random(&mut rng, n, 4);
    for est in ESTIMATORS {
        let a = linear_cka(&ctx, &Matrix::new(&padded, n, p, stride).unwrap(), &view(&y), est).unwrap();
        let b = linear_cka(&ctx, &Matrix::contiguous(&compact, n, p).unwrap(), &view(&y), est).unwrap();
        assert_eq!(a, b, "{est:?}");
    }
}

#[test]
fn accumulator_equals_full_data_for_any_split_and_merges() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(8);
    let n = 97;
    let base = Dense::random(&mut rng, n, 6);
    let xs: Vec<Dense> = [4, 7].iter().map(|&k| base.mix(&mut rng, k, 0.8)).collect();
    let ys: Vec<Dense> = [3, 1, 5].iter().map(|&k| base.mix(&mut rng, k, 1.1)).collect();
    let full = |est| -> Vec<f64> {
        let mut out = Vec::new();
        for x in &xs {
            for y in &ys {
                out.push(reference(x, y, est));
            }
        }
        out
    };
    let batch = |start: usize, rows: usize| -> (Vec<Matrix>, Vec<Matrix>) {
        (
            xs.iter().map(|d| view(d).row_range(start, rows).unwrap()).collect(),
            ys.iter().map(|d| view(d).row_range(start, rows).unwrap()).collect(),
        )
    };
    for est in ESTIMATORS {
        let want = full(est);
        // Random splits, batches of one row included, and an empty batch.
        for trial in 0..4 {
            let mut acc = CkaAccumulator::new(2, 3, est).unwrap();
            let mut start = 0;
            while start < n {
                let rows = if trial == 0 { 1 } else { (1 + rng.below(20)).min(n - start) };
                let (bx, by) = batch(start, rows);
                acc.update(&ctx, &bx, &by).unwrap();
                start += rows;
                if start == 40 {
                    let (ex, ey) = batch(start, 0);
                    acc.update(&ctx, &ex, &ey).unwrap();
                }
            }
            assert_eq!(acc.count(), n as u64);
            let got = acc.result().unwrap();
            for k in 0..want.len() {
                assert_close(got[k], want[k], 1e-10, &format!("{est:?} trial {trial} pair {k}"));
            }
        }
        // Three accumulators over parts of the data, merged.
        let parts = [(0, 30), (30, 1), (31, 66)];
        let accs: Vec<CkaAccumulator> = parts
            .iter()
            .map(|&(s, r)| {
                let mut a = CkaAccumulator::new(2, 3, est).unwrap();
                let (bx, by) = batch(s, r);
                a.update(&ctx, &bx, &by).unwrap();
                a
            })
            .collect();
        let mut merged = CkaAccumulator::new(2, 3, est).unwrap();
        for a in &accs {
            merged.merge(a).unwrap();
        }
        let got = merged.result().unwrap();
        for k in 0..want.len() {
            assert_close(got[k], want[k], 1e-10, &format!("{est:?} merged pair {k}"));
        }
        // The all-reduce protocol: rebase everyone on one shift, sum moment buffers, import.
        let (ls, lm) = accs[0].state_len();
        let mut shift0 = vec![0.0; ls];
        let mut scratch = vec![0.0; lm];
        accs[0].export(&mut shift0, &mut scratch).unwrap();
        let mut summed = vec![0.0; lm];
        for a in &accs {
            let mut a = a.clone();
            a.rebase(&shift0).unwrap();
            let mut s = vec![0.0; ls];
            let mut m = vec![0.0; lm];
            a.export(&mut s, &mut m).unwrap();
            assert_eq!(s, shift0);
            summed.iter_mut().zip(&m).for_each(|(t, v)| *t += v);
        }
        let mut fresh = CkaAccumulator::new(2, 3, est).unwrap();
        let widths: Vec<usize> = xs.iter().chain(&ys).map(|d| d.cols).collect();
        fresh.set_widths(&widths).unwrap();
        fresh.import(&shift0, &summed).unwrap();
        let got = fresh.result().unwrap();
        for k in 0..want.len() {
            assert_close(got[k], want[k], 1e-10, &format!("{est:?} all-reduced pair {k}"));
        }
    }
}

#[test]
fn minibatch_cka_is_the_mean_of_per_batch_unbiased_hsic() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(9);
    let (b, batches, p, q) = (11, 5, 7, 3);
    let x = Dense::random(&mut rng, b * batches, p);
    let y = x.mix(&mut rng, q, 1.0);
    let (mut kl, mut kk, mut ll) = (0.0, 0.0, 0.0);
    for t in 0..batches {
        let part =
            |d: &Dense| Dense { rows: b, cols: d.cols, data: d.data[t * b * d.cols..(t + 1) * b * d.cols].to_vec() };
        let (gx, gy) = (part(&x).gram(), part(&y).gram());
        kl += common::unbiased_hsic(&gx, &gy, b);
        kk += common::unbiased_hsic(&gx, &gx, b);
        ll += common::unbiased_hsic(&gy, &gy, b);
    }
    let want = kl / (kk * ll).sqrt();
    assert_close(cka::minibatch_cka(&ctx, &view(&x), &view(&y), b).unwrap(), want, 1e-11, "minibatch CKA");
    // HSIC_1 ignores constant offsets: the implementation centers each batch for precision.
    let xo = Dense { data: x.data.iter().map(|v| v + 5e3).collect(), ..x.clone() };
    assert_close(cka::minibatch_cka(&ctx, &view(&xo), &view(&y), b).unwrap(), want, 1e-9, "minibatch CKA, offset data");
    // Explicit weights: weighting every batch by 2 changes nothing.
    let mut acc = MinibatchCka::new(1, 1).unwrap();
    for t in 0..batches {
        let (bx, by) = (view(&x).row_range(t * b, b).unwrap(), view(&y).row_range(t * b, b).unwrap());
        acc.update_weighted(&ctx, &[bx], &[by], 2.0).unwrap();
    }
    assert_close(acc.result().unwrap()[0], want, 1e-11, "weighted minibatch CKA");
}

fn status_of<T: std::fmt::Debug>(r: Result<T, Error>) -> (transferlens::Status, String) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(!msg.is_empty());
    (e.status(), msg)
}

#[test]
fn degenerate_input_is_an_error_never_nan() {
    use transferlens::Status;
    let ctx = Context::cpu();
    let mut rng = TestRng::new(10);
    let x = Dense::random(&mut rng, 12, 3);
    let y = Dense::random(&mut rng, 12, 2);
    // Too few samples for each estimator.
    let (s, msg) = status_of(linear_cka(
        &ctx,
        &view(&x).row_range(0, 3).unwrap(),
        &view(&y).row_range(0, 3).unwrap(),
        Estimator::Debiased,
    ));
    assert_eq!(s, Status::DegenerateInput, "{msg}");
    assert!(msg.contains("at least 4"), "{msg}");
    let (s, _) = status_of(linear_cka(
        &ctx,
        &view(&x).row_range(0, 1).unwrap(),
        &view(&y).row_range(0, 1).unwrap(),
        Estimator::Biased,
    ));
    assert_eq!(s, Status::DegenerateInput);
    // Zero rows.
    let (s, _) = status_of(linear_cka(
        &ctx,
        &view(&x).row_range(0, 0).unwrap(),
        &view(&y).row_range(0, 0).unwrap(),
        Estimator::Biased,
    ));
    assert_eq!(s, Status::DegenerateInput);
    // A constant layer (values that do not average exactly in floating point).
    let constant = vec![0.1; 12 * 3];
    for est in ESTIMATORS {
        for route in [Route::Feature, Route::Sample] {
            let (s, msg) = status_of(cka_matrix_via(
                &ctx,
                &[view(&y)],
                &[Matrix::contiguous(&constant, 12, 3).unwrap()],
                est,
                route,
            ));
            assert_eq!(s, Status::DegenerateInput, "{msg}");
            assert!(msg.contains("y[0]"), "{msg}");
        }
    }
    // NaN and Inf, with their position.
    let mut bad = x.data.clone();
    bad[2 * 3 + 1] = f64::NAN;
    let (s, msg) = status_of(linear_cka(&ctx, &Matrix::contiguous(&bad, 12, 3).unwrap(), &view(&y), Estimator::Biased));
    assert_eq!(s, Status::NonFinite);
    assert!(msg.contains("x[0]") && msg.contains("row 2"), "{msg}");
    bad[2 * 3 + 1] = f64::INFINITY;
    let (s, _) = status_of(linear_cka(&ctx, &view(&y), &Matrix::contiguous(&bad, 12, 3).unwrap(), Estimator::Debiased));
    assert_eq!(s, Status::NonFinite);
    // Mismatched rows.
    let (s, msg) = status_of(linear_cka(&ctx, &view(&x), &view(&y).row_range(0, 11).unwrap(), Estimator::Biased));
    assert_eq!(s, Status::ShapeMismatch, "{msg}");
    // Shape errors of views.
    assert_eq!(Matrix::new(&x.data, 4, 3, 2).unwrap_err().status(), Status::InvalidArgument);
    assert_eq!(Matrix::new(&x.data, 13, 3, 3).unwrap_err().status(), Status::ShapeMismatch);
    assert_eq!(Matrix::new(&x.data, 4, 0, 0).unwrap_err().status(), Status::InvalidArgument);
    // Accumulator: the first update fixes the widths.
    let mut acc = CkaAccumulator::new(1, 1, Estimator::Biased).unwrap();
    acc.update(&ctx, &[view(&x)], &[view(&y)]).unwrap();
    let (s, msg) = status_of(acc.update(&ctx, &[view(&y)], &[view(&y)]));
    assert_eq!(s, Status::ShapeMismatch);
    assert!(msg.contains("x[0]"), "{msg}");
    assert_eq!(
        CkaAccumulator::new(1, 1, Estimator::Biased).unwrap().result().unwrap_err().status(),
        Status::DegenerateInput
    );
}

#[test]
fn debiased_self_similarity_that_is_not_positive_is_degenerate() {
    use transferlens::Status;
    // Four samples of a single feature: hsic_u(x, x) can vanish or go negative.
    let ctx = Context::cpu();
    let x = [1.0, -1.0, 1.0, -1.0f64];
    let y = [0.3, 1.2, -0.7, 2.0f64];
    let r = linear_cka(
        &ctx,
        &Matrix::contiguous(&x, 4, 1).unwrap(),
        &Matrix::contiguous(&y, 4, 1).unwrap(),
        Estimator::Debiased,
    );
    match r {
        Ok(v) => assert!(v.is_finite()),
        Err(e) => assert_eq!(e.status(), Status::DegenerateInput, "{e}"),
    }
}

/// Every exponent of f32, f16 and bf16: the data times 2^e, stored in the type, gives the CKA of
/// the f64 reference on the same stored values (linear CKA, both routes of the matrix, and the
/// accumulator), from the subnormals to the largest finite values. CKA does not change when a
/// layer is scaled, so the library may scale each layer into range; it must not let f32 products
/// underflow to zero or overflow to infinity.
#[test]
fn every_exponent_of_f32_f16_and_bf16_gives_the_f64_answer() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(13);
    let (n, p, p2, q) = (41, 6, 5, 4);
    let x = Dense::random(&mut rng, n, p);
    let x2 = x.mix(&mut rng, p2, 1.0);
    let y = x.mix(&mut rng, q, 1.5);
    // |normal| < 8 = 2^3, so 2^(e + 3) stays below each type's largest value.
    for (dtype, exponents) in [("f32", -146..=124), ("f16", -22..=12), ("bf16", -130..=124)] {
        for e in exponents {
            let stored = |d: &Dense| Stored::new(d, 2f64.powi(e), dtype);
            let (xs, x2s, ys) = (stored(&x), stored(&x2), stored(&y));
            for est in ESTIMATORS {
                let what = format!("{dtype} x 2^{e} {est:?}");
                let want = [reference(&xs.exact, &ys.exact, est), reference(&x2s.exact, &ys.exact, est)];
                assert!(want.iter().all(|w| w.is_finite() && w.abs() <= 1.0), "{what}: reference {want:?}");
                let got =
                    linear_cka(&ctx, &xs.rows(0..n), &ys.rows(0..n), est).unwrap_or_else(|err| panic!("{what}: {err}"));
                assert_rel(got, want[0], 2e-5, &format!("linear CKA, {what}"));
                for route in [Route::Feature, Route::Sample] {
                    let got = cka_matrix_via(&ctx, &[xs.rows(0..n), x2s.rows(0..n)], &[ys.rows(0..n)], est, route)
                        .unwrap_or_else(|err| panic!("{what} {route:?}: {err}"));
                    assert_rel(got[0], want[0], 2e-5, &format!("matrix {route:?}, {what}"));
                    assert_rel(got[1], want[1], 2e-5, &format!("matrix {route:?}, {what}"));
                }
                let mut acc = CkaAccumulator::new(2, 1, est).unwrap();
                for rows in [0..17, 17..n] {
                    acc.update(&ctx, &[xs.rows(rows.clone()), x2s.rows(rows.clone())], &[ys.rows(rows)])
                        .unwrap_or_else(|err| panic!("accumulator {what}: {err}"));
                }
                let got = acc.result().unwrap_or_else(|err| panic!("accumulator {what}: {err}"));
                assert_rel(got[0], want[0], 2e-5, &format!("accumulator, {what}"));
                assert_rel(got[1], want[1], 2e-5, &format!("accumulator, {what}"));
            }
        }
    }
}

/// A layer times `scale`, stored in a narrow type, and the stored values in f64 divided by
/// `scale` again (exactly: a power of two), where the plain f64 reference neither underflows nor
/// overflows: its CKA is that of the stored values.
struct Stored {
    exact: Dense,
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
}

impl Stored {
    fn new(d: &Dense, scale: f64, dtype: &str) -> Self {
        let values = d.data.iter().map(|&v| v * scale);
        let mut s = Stored { exact: d.clone(), f32: Vec::new(), f16: Vec::new(), bf16: Vec::new() };
        s.exact.data = match dtype {
            "f32" => {
                s.f32 = values.map(|v| v as f32).collect();
                s.f32.iter().map(|&v| v as f64 / scale).collect()
            }
            "f16" => {
                s.f16 = values.map(f16::from_f64).collect();
                s.f16.iter().map(|v| v.to_f64() / scale).collect()
            }
            _ => {
                s.bf16 = values.map(bf16::from_f64).collect();
                s.bf16.iter().map(|v| v.to_f64() / scale).collect()
            }
        };
        s
    }

    /// Rows `range` of the stored layer.
    fn rows(&self, range: std::ops::Range<usize>) -> Matrix<'_> {
        let cols = self.exact.cols;
        let (start, end, rows) = (range.start * cols, range.end * cols, range.len());
        if !self.f32.is_empty() {
            Matrix::contiguous(&self.f32[start..end], rows, cols)
        } else if !self.f16.is_empty() {
            Matrix::contiguous(&self.f16[start..end], rows, cols)
        } else {
            Matrix::contiguous(&self.bf16[start..end], rows, cols)
        }
        .unwrap()
    }
}

/// f64 input keeps its own range: from 2^-200 to 2^200 every route gives the unscaled answer
/// (CKA does not change with scale); beyond, where the fourth powers in the terms leave f64, the
/// answer is still right or a status that says what is wrong (NonFinite, "too large", for an
/// overflow; DegenerateInput for values whose squares vanish), never a panic or a wrong number.
#[test]
fn f64_input_of_any_magnitude_gives_the_answer_or_says_why_not() {
    let ctx = Context::cpu();
    let mut rng = TestRng::new(17);
    let (n, p, q) = (23, 5, 3);
    let x = Dense::random(&mut rng, n, p);
    let y = x.mix(&mut rng, q, 1.0);
    for e in (-1060..=1020).step_by(20) {
        let scaled =
            |d: &Dense| Dense { rows: d.rows, cols: d.cols, data: d.data.iter().map(|v| v * 2f64.powi(e)).collect() };
        let (xs, ys) = (scaled(&x), scaled(&y));
        for est in ESTIMATORS {
            let want = reference(&x, &y, est);
            for route in [Route::Feature, Route::Sample] {
                let what = format!("f64 x 2^{e} {est:?} {route:?}");
                match cka_matrix_via(&ctx, &[view(&xs)], &[view(&ys)], est, route) {
                    Ok(got) => assert_rel(got[0], want, 1e-9, &what),
                    Err(err) => {
                        assert!(!(-200..=200).contains(&e), "{what}: {err}");
                        let (status, msg) = status_of::<()>(Err(err));
                        let overflow = status == transferlens::Status::NonFinite && msg.contains("too large");
                        let vanishing = status == transferlens::Status::DegenerateInput;
                        assert!(overflow || vanishing, "{what}: {status:?} {msg}");
                    }
                }
            }
        }
    }
}
