//! CKA's uncertainty (`cka::stats`): bootstrap intervals that cover the population CKA at their
//! nominal rate, permutation p-values that are uniform under independence, and the closed-form
//! leave-one-out influence against recomputing CKA without each sample (f64 references from
//! tests/common).

mod common;
mod scratch;

use common::{assert_rel, reference_cka_feature, Dense, TestRng};
use transferlens::cka::{self, Estimator, IntervalKind};
use transferlens::{Context, Error, Matrix};

const ESTIMATORS: [Estimator; 2] = [Estimator::Biased, Estimator::Debiased];

fn view(d: &Dense) -> Matrix<'_> {
    Matrix::contiguous(&d.data, d.rows, d.cols).unwrap()
}

fn without_row(d: &Dense, i: usize) -> Dense {
    let data = (0..d.rows).filter(|&r| r != i).flat_map(|r| d.data[r * d.cols..(r + 1) * d.cols].to_vec()).collect();
    Dense { rows: d.rows - 1, cols: d.cols, data }
}

fn to_f32(d: &Dense) -> Vec<f32> {
    d.data.iter().map(|&v| v as f32).collect()
}

#[test]
fn influence_equals_recomputing_without_each_sample() {
    let mut rng = TestRng::new(20);
    let x = Dense::random(&mut rng, 37, 5);
    // Correlated with x, with an offset so that centering matters, and one outlying sample.
    let mut y = x.mix(&mut rng, 11, 0.7);
    y.data.iter_mut().for_each(|v| *v += 4.0);
    y.data[17 * 11..18 * 11].iter_mut().for_each(|v| *v *= 6.0);
    for est in ESTIMATORS {
        let got = cka::influence(&view(&x), &view(&y), est).unwrap();
        assert_rel(got.cka, reference_cka_feature(&x, &y, est == Estimator::Debiased), 1e-9, "whole data");
        assert_eq!(got.delta.len(), 37);
        for i in 0..37 {
            let want = reference_cka_feature(&without_row(&x, i), &without_row(&y, i), est == Estimator::Debiased);
            assert_rel(got.cka + got.delta[i], want, 1e-9, &format!("{est:?} without sample {i}"));
        }
        let top = got.top(3);
        assert_eq!(top[0].0, 17, "{est:?}: the outlier is the most influential sample: {top:?}");
        assert!(top[0].1.abs() >= top[1].1.abs() && top[1].1.abs() >= top[2].1.abs());
        assert_eq!(got.top(100).len(), 37);
    }
}

#[test]
fn influence_in_f32_follows_the_f64_values() {
    let mut rng = TestRng::new(21);
    let x = Dense::random(&mut rng, 500, 40);
    let y = x.mix(&mut rng, 30, 1.0);
    let (x32, y32) = (to_f32(&x), to_f32(&y));
    for est in ESTIMATORS {
        let exact = cka::influence(&view(&x), &view(&y), est).unwrap();
        let single = cka::influence(
            &Matrix::contiguous(&x32, 500, 40).unwrap(),
            &Matrix::contiguous(&y32, 500, 30).unwrap(),
            est,
        )
        .unwrap();
        let largest = exact.delta.iter().fold(0.0f64, |a, d| a.max(d.abs()));
        for (a, b) in single.delta.iter().zip(&exact.delta) {
            assert!((a - b).abs() <= 1e-3 * largest, "{est:?}: f32 delta {a} against f64 {b} (largest {largest})");
        }
    }
}

#[test]
fn bootstrap_estimate_is_the_cka_and_the_interval_is_ordered() {
    let mut rng = TestRng::new(22);
    let ctx = Context::cpu();
    let x = Dense::random(&mut rng, 200, 12);
    let y = x.mix(&mut rng, 7, 1.5);
    for est in ESTIMATORS {
        let want = cka::linear_cka(&ctx, &view(&x), &view(&y), est).unwrap();
        let kinds = [IntervalKind::Bca, IntervalKind::Percentile];
        for (blocks, kind) in [0, 200, 13].into_iter().flat_map(|b| kinds.map(|k| (b, k))) {
            let got = cka::bootstrap(&view(&x), &view(&y), est, 0.9, kind, 300, blocks, 5).unwrap();
            assert_rel(got.cka, want, 1e-9, &format!("{est:?}, {blocks} blocks"));
            assert_eq!(got.blocks, if blocks == 0 { 64 } else { blocks });
            assert_eq!(got.block_size, 200usize.div_ceil(got.blocks));
            assert_eq!(got.resamples.len() + got.degenerate, 300);
            assert!(got.lower < got.cka && got.cka < got.upper, "{est:?}: {got:?}");
            assert!(got.std_error > 0.0 && got.std_error < 0.2);
            let mut sorted = got.resamples.clone();
            sorted.sort_by(f64::total_cmp);
            assert!(got.lower >= sorted[0] && got.upper <= sorted[sorted.len() - 1]);
        }
    }
}

#[test]
fn bootstrap_depends_on_the_seed_only() {
    let mut rng = TestRng::new(23);
    let x = Dense::random(&mut rng, 300, 20);
    let y = x.mix(&mut rng, 9, 2.0);
    let (x32, y32) = (to_f32(&x), to_f32(&y));
    let (xv, yv) = (Matrix::contiguous(&x32, 300, 20).unwrap(), Matrix::contiguous(&y32, 300, 9).unwrap());
    let run = |threads: usize, seed: u64| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| cka::bootstrap(&xv, &yv, Estimator::Debiased, 0.95, IntervalKind::Bca, 200, 0, seed).unwrap())
    };
    let one = run(1, 9);
    assert_eq!(one, run(3, 9), "the same seed on 1 and 3 threads");
    assert_eq!(one, run(1, 9));
    assert_ne!(one.resamples, run(1, 10).resamples, "another seed draws other resamples");
    // The same data in f64 gives the same interval up to the f32 products' rounding.
    let wide = cka::bootstrap(&view(&x), &view(&y), Estimator::Debiased, 0.95, IntervalKind::Bca, 200, 0, 9).unwrap();
    for (a, b) in [(one.lower, wide.lower), (one.upper, wide.upper), (one.cka, wide.cka)] {
        assert!((a - b).abs() < 1e-5, "f32 {a} against f64 {b}");
    }
}

/// The population CKA of `x ~ N(0, I_p)` and `y = x A + sigma e`: `Sigma_xy = A`,
/// `Sigma_yy = A^T A + sigma^2 I`, so CKA = `||A||^2 / (sqrt(p) ||A^T A + sigma^2 I||)`.
fn population_cka(a: &Dense, sigma: f64) -> f64 {
    let (p, q) = (a.rows, a.cols);
    let fro2_a: f64 = a.data.iter().map(|v| v * v).sum();
    let ata = a.t_mul(a);
    let fro2_yy: f64 =
        (0..q * q).map(|e| ata[e] + if e / q == e % q { sigma * sigma } else { 0.0 }).map(|v| v * v).sum();
    fro2_a / ((p as f64).sqrt() * fro2_yy.sqrt())
}

/// The simulation with a known population CKA in which the intervals' coverage is counted:
/// `x ~ N(0, I_p)`, `y = x A + sigma e` (`q = p`), 200 repetitions of `n = 400` samples per
/// estimator. `covers(x, y, estimator, repetition, population CKA)` says which of `K` intervals
/// contain the population CKA; returned per estimator: how many repetitions each covered in,
/// and the population CKA. Two cases, fixed before the first run: narrow (`p = 4`,
/// `sigma = 2`) and wide (`p = 20`, `p / n = 0.05` as in BENCHMARKS.md's 20000 x 1024 pair,
/// `sigma = 2 sqrt(5)`: the same signal to noise per feature of `y`).
///
/// The criterion, also fixed before the first run: the binomial standard error of a coverage
/// of 0.95 over 200 repetitions is 0.0154, so a kind is acceptable in a case when it covers in
/// 181 to 199 of the 200 (0.95 +- 3 standard errors).
fn coverage<const K: usize>(
    p: usize,
    sigma: f64,
    seed: u64,
    tails: Tails,
    covers: impl Fn(&Dense, &Dense, Estimator, u64, f64) -> [bool; K],
) -> Vec<(Estimator, [usize; K], f64)> {
    let (n, reps) = (400, 200);
    let mut rng = TestRng::new(seed);
    let a = Dense::random(&mut rng, p, p);
    let truth = population_cka(&a, sigma);
    let mut counts = Vec::new();
    for est in ESTIMATORS {
        let mut covered = [0; K];
        for rep in 0..reps {
            let mut x = Dense::random(&mut rng, n, p);
            let mut y = Dense { rows: n, cols: p, data: vec![0.0; n * p] };
            for r in 0..n {
                let (x_scale, noise_scale) = (tails.row_scale(&mut rng), tails.row_scale(&mut rng));
                x.data[r * p..(r + 1) * p].iter_mut().for_each(|v| *v *= x_scale);
                for j in 0..p {
                    let signal: f64 = (0..p).map(|c| x.at(r, c) * a.at(c, j)).sum();
                    y.data[r * p + j] = signal + sigma * noise_scale * rng.normal();
                }
            }
            for (count, hit) in covered.iter_mut().zip(covers(&x, &y, est, rep, truth)) {
                *count += usize::from(hit);
            }
        }
        counts.push((est, covered, truth));
    }
    counts
}

/// The distribution of the simulation's rows (of `x`, and of the noise `e`).
#[derive(Clone, Copy)]
enum Tails {
    /// Gaussian rows.
    Normal,
    /// Multivariate Student t rows with this many degrees of freedom: each row's Gaussian draw
    /// divided by `sqrt(w / nu)`, `w ~ chi-square(nu)`, one `w` per row of `x` and another per
    /// row of `e`. Every covariance is the Gaussian one times `nu / (nu - 2)`, so the
    /// population CKA is unchanged.
    StudentT(usize),
}

impl Tails {
    /// The factor of one row; draws nothing for Gaussian rows (so that their simulation keeps
    /// the random stream it was measured with).
    fn row_scale(self, rng: &mut TestRng) -> f64 {
        match self {
            Tails::Normal => 1.0,
            Tails::StudentT(nu) => {
                let w: f64 = (0..nu).map(|_| rng.normal().powi(2)).sum();
                (nu as f64 / w).sqrt()
            }
        }
    }
}

/// Coverage of both bootstrap kinds, each repetition's two intervals from the same 400
/// resamples in the default 64 blocks. BCa would be the default if it were acceptable in every
/// case where percentile is, and no further from 0.95 than percentile in any case.
fn bootstrap_coverage(p: usize, sigma: f64, seed: u64) -> Vec<(Estimator, usize, usize)> {
    let counts = coverage(p, sigma, seed, Tails::Normal, |x, y, est, rep, truth| {
        [IntervalKind::Bca, IntervalKind::Percentile].map(|kind| {
            let ci = cka::bootstrap(&view(x), &view(y), est, 0.95, kind, 400, 0, rep).unwrap();
            ci.lower <= truth && truth <= ci.upper
        })
    });
    counts
        .into_iter()
        .map(|(est, [bca, percentile], truth)| {
            println!(
                "p = {p}, population CKA {truth:.4}, {est:?}: 0.95 intervals covered it in {bca} of 200 (BCa) and {percentile} of 200 (percentile)"
            );
            (est, bca, percentile)
        })
        .collect()
}

const ACCEPTABLE: std::ops::RangeInclusive<usize> = 181..=199;

/// Measured: percentile 183 (biased) and 186 (debiased) of 200, BCa 184 and 187.
#[test]
fn bootstrap_intervals_cover_the_population_cka_at_about_their_level() {
    for (est, bca, percentile) in bootstrap_coverage(4, 2.0, 24) {
        assert!(ACCEPTABLE.contains(&bca), "{est:?}: BCa covered in {bca} of 200");
        assert!(ACCEPTABLE.contains(&percentile), "{est:?}: percentile covered in {percentile} of 200");
    }
}

/// The wide case, as measured (docs/analyses.md, "Uncertainty"): percentile covered in 0
/// (biased) and 100 (debiased) of 200, BCa in 16 and 47: neither bootstrap interval is
/// acceptable there (the jackknife interval is, below). A fix of the bootstrap intervals on
/// wide layers turns this test red: then update it and the docs.
#[test]
#[ignore = "a simulation of several minutes on two cores; documents a limitation"]
fn on_wide_layers_neither_bootstrap_interval_covers_at_its_level() {
    for (est, bca, percentile) in bootstrap_coverage(20, 2.0 * 5f64.sqrt(), 30) {
        assert!(
            bca < *ACCEPTABLE.start() && percentile < *ACCEPTABLE.start(),
            "{est:?}: BCa {bca}, percentile {percentile}"
        );
    }
}

/// The jackknife interval in the same simulation, on the same data as the bootstrap's
/// coverage (the same seeds), with the same criterion. The decision, written down before the
/// first run: the jackknife interval is offered if it is acceptable in the wide case for an
/// estimator and in the narrow case for that estimator, and becomes the default interval if it
/// is acceptable in all four cells. Measured: narrow 186 (biased) and 190 (debiased), wide 185
/// and 192: the default.
#[test]
fn jackknife_intervals_cover_the_population_cka_on_narrow_and_wide_layers() {
    for (case, p, sigma, seed) in [("narrow", 4, 2.0, 24), ("wide", 20, 2.0 * 5f64.sqrt(), 30)] {
        for (est, [covered], truth) in coverage(p, sigma, seed, Tails::Normal, |x, y, est, _, truth| {
            let ci = cka::jackknife(&view(x), &view(y), est, 0.95).unwrap();
            [ci.lower <= truth && truth <= ci.upper]
        }) {
            println!("{case} (p = {p}), population CKA {truth:.4}, {est:?}: the jackknife interval covered it in {covered} of 200");
            assert!(
                ACCEPTABLE.contains(&covered),
                "{case}, {est:?}: the jackknife interval covered in {covered} of 200"
            );
        }
    }
}

/// Heavy tails, added after the jackknife interval became the default (its docs said that
/// heavy-tailed data had not been simulated). Written down before the first run: the narrow
/// and wide cases above, with their seeds, n and criterion (181 to 199 of 200), on rows of `x`
/// and of the noise drawn from multivariate Student t with 5 degrees of freedom
/// ([`Tails::StudentT`]): the same population CKA, finite fourth moments (which the interval's
/// standard error needs: 5 > 4) but far heavier tails. The counts are recorded here and in
/// docs/analyses.md whichever way they fall, and the interval is not changed for them.
/// Measured (first run): narrow 191 (biased) and 182 (debiased), wide 193 and 193: acceptable
/// in all four cells, the debiased narrow one near the lower edge.
#[test]
fn jackknife_intervals_cover_on_heavy_tailed_rows() {
    for (case, p, sigma, seed) in [("narrow", 4, 2.0, 24), ("wide", 20, 2.0 * 5f64.sqrt(), 30)] {
        for (est, [covered], truth) in coverage(p, sigma, seed, Tails::StudentT(5), |x, y, est, _, truth| {
            let ci = cka::jackknife(&view(x), &view(y), est, 0.95).unwrap();
            [ci.lower <= truth && truth <= ci.upper]
        }) {
            println!("t5 {case} (p = {p}), population CKA {truth:.4}, {est:?}: the jackknife interval covered it in {covered} of 200");
            assert!(
                ACCEPTABLE.contains(&covered),
                "t5 {case}, {est:?}: the jackknife interval covered in {covered} of 200"
            );
        }
    }
}

/// Every field of the jackknife interval from CKA recomputed without each sample by the f64
/// reference, with the textbook formulas.
#[test]
fn jackknife_interval_is_formed_from_the_leave_one_out_values() {
    let mut rng = TestRng::new(25);
    let x = Dense::random(&mut rng, 41, 6);
    let mut y = x.mix(&mut rng, 9, 1.2);
    y.data.iter_mut().for_each(|v| *v -= 2.5);
    for est in ESTIMATORS {
        let debiased = est == Estimator::Debiased;
        let all = reference_cka_feature(&x, &y, debiased);
        let left_out: Vec<f64> =
            (0..41).map(|i| reference_cka_feature(&without_row(&x, i), &without_row(&y, i), debiased)).collect();
        let n = 41.0;
        let mean = left_out.iter().sum::<f64>() / n;
        let estimate = n * all - (n - 1.0) * mean;
        let std_error = ((n - 1.0) / n * left_out.iter().map(|v| (v - mean).powi(2)).sum::<f64>()).sqrt();
        let z90 = 1.6448536269514722; // Phi^-1(0.95): a 0.90 interval
        let got = cka::jackknife(&view(&x), &view(&y), est, 0.90).unwrap();
        assert_rel(got.cka, all, 1e-9, "cka");
        assert_rel(got.estimate, estimate, 1e-9, "estimate");
        assert_rel(got.std_error, std_error, 1e-9, "standard error");
        assert_rel(got.lower, estimate - z90 * std_error, 1e-9, "lower");
        assert_rel(got.upper, estimate + z90 * std_error, 1e-9, "upper");
        assert_eq!(got.level, 0.90);
        // The same from an influence computed once (what the CLI and the C call do).
        assert_eq!(cka::influence(&view(&x), &view(&y), est).unwrap().jackknife(0.90).unwrap(), got);
        for level in [0.0, 1.0, -0.5, f64::NAN] {
            match cka::jackknife(&view(&x), &view(&y), est, level) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("level"), "{m}"),
                other => panic!("level {level}: {other:?}"),
            }
        }
    }
}

/// In f32 the leave-one-out values' mean is multiplied by n - 1: the bias-corrected estimate
/// must not carry the f32 products' rounding up by that factor.
#[test]
fn jackknife_in_f32_follows_the_f64_values() {
    let mut rng = TestRng::new(26);
    let (n, p) = (4000, 48);
    let x = Dense::random(&mut rng, n, p);
    let y = x.mix(&mut rng, 40, 3.0);
    // The f64 run sees exactly the f32 values.
    let (x32, y32) = (to_f32(&x), to_f32(&y));
    let widen = |v: &[f32], cols| Dense { rows: n, cols, data: v.iter().map(|&e| e as f64).collect() };
    let (xr, yr) = (widen(&x32, p), widen(&y32, 40));
    for est in ESTIMATORS {
        let exact = cka::jackknife(&view(&xr), &view(&yr), est, 0.95).unwrap();
        let single = cka::jackknife(
            &Matrix::contiguous(&x32, n, p).unwrap(),
            &Matrix::contiguous(&y32, n, 40).unwrap(),
            est,
            0.95,
        )
        .unwrap();
        assert!((single.estimate - exact.estimate).abs() < 1e-8, "{est:?}: {single:?} against {exact:?}");
        assert!((single.std_error - exact.std_error).abs() < 1e-8 * exact.std_error.max(1e-3), "{est:?}");
    }
}

#[test]
fn permutation_p_values_are_uniform_under_independence_and_tiny_under_dependence() {
    let (n, reps, perms) = (32, 200, 99);
    let mut rng = TestRng::new(25);
    for est in ESTIMATORS {
        let mut p_values = Vec::with_capacity(reps);
        for rep in 0..reps {
            let (x, y) = (Dense::random(&mut rng, n, 6), Dense::random(&mut rng, n, 5));
            p_values.push(cka::permutation_null(&view(&x), &view(&y), est, perms, rep as u64).unwrap().p_value);
        }
        // Kolmogorov-Smirnov distance from the uniform law on (0, 1]; the 1% critical value for
        // 200 draws is 0.115, and p-values on a grid of 1/100 add up to 0.01.
        p_values.sort_by(f64::total_cmp);
        let ks = p_values
            .iter()
            .enumerate()
            .map(|(i, &pv)| ((i + 1) as f64 / reps as f64 - pv).abs().max((pv - i as f64 / reps as f64).abs()))
            .fold(0.0f64, f64::max);
        println!("{est:?}: KS distance of {reps} null p-values from uniform: {ks:.3}");
        assert!(ks < 0.15, "{est:?}: KS distance {ks}");

        let x = Dense::random(&mut rng, n, 6);
        let y = x.mix(&mut rng, 5, 0.5);
        let null = cka::permutation_null(&view(&x), &view(&y), est, perms, 1).unwrap();
        assert_eq!(null.p_value, 0.01, "{est:?}: dependent data: {null:?}");
        assert_eq!(null.values.len(), perms);
        assert!(null.mean < null.cka && null.std > 0.0);
    }
}

#[test]
fn the_null_mean_shows_the_biased_estimator_bias_at_small_n() {
    let mut rng = TestRng::new(26);
    for width in [8, 512] {
        let (x, y) = (Dense::random(&mut rng, 32, width), Dense::random(&mut rng, 32, width));
        let biased = cka::permutation_null(&view(&x), &view(&y), Estimator::Biased, 200, 3).unwrap();
        let debiased = cka::permutation_null(&view(&x), &view(&y), Estimator::Debiased, 200, 3).unwrap();
        println!(
            "n = 32, {width} independent features each: null mean biased {:.4} (sd {:.4}), debiased {:.4} (sd {:.4})",
            biased.mean, biased.std, debiased.mean, debiased.std
        );
        assert!(biased.mean > 0.15, "{biased:?}");
        assert!(debiased.mean.abs() < 0.05, "{debiased:?}");
        assert!(biased.p_value > 0.01 && debiased.p_value > 0.01);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let mut rng = TestRng::new(27);
    let (x, y) = (Dense::random(&mut rng, 10, 3), Dense::random(&mut rng, 10, 2));
    let (xv, yv) = (view(&x), view(&y));
    let invalid = |r: Result<_, Error>, what: &str| match r {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected InvalidArgument about {what}, got {other:?}"),
    };
    for level in [0.0, 1.0, f64::NAN, -0.5] {
        invalid(cka::bootstrap(&xv, &yv, Estimator::Biased, level, IntervalKind::Bca, 10, 0, 1).map(|_| ()), "level");
    }
    invalid(
        cka::bootstrap(&xv, &yv, Estimator::Biased, 0.9, IntervalKind::Bca, 1, 0, 1).map(|_| ()),
        "at least 2 resamples",
    );
    invalid(cka::bootstrap(&xv, &yv, Estimator::Biased, 0.9, IntervalKind::Bca, 10, 11, 1).map(|_| ()), "blocks");
    invalid(cka::permutation_null(&xv, &yv, Estimator::Biased, 0, 1).map(|_| ()), "at least 1 permutation");

    let short = Dense::random(&mut rng, 9, 2);
    match cka::influence(&xv, &view(&short), Estimator::Biased) {
        Err(Error::ShapeMismatch(_)) => {}
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let four = Dense::random(&mut rng, 4, 3);
    match cka::influence(&view(&four), &view(&four), Estimator::Debiased) {
        Err(Error::DegenerateInput(msg)) => assert!(msg.contains("too few"), "{msg}"),
        other => panic!("expected DegenerateInput, got {other:?}"),
    }
    let constant = Dense { rows: 10, cols: 2, data: vec![1.5; 20] };
    match cka::bootstrap(&xv, &view(&constant), Estimator::Biased, 0.9, IntervalKind::Bca, 10, 0, 1) {
        Err(Error::DegenerateInput(msg)) => assert!(msg.contains("zero variance"), "{msg}"),
        other => panic!("expected DegenerateInput, got {other:?}"),
    }
    let mut nan = y.clone();
    nan.data[7] = f64::NAN;
    match cka::permutation_null(&xv, &view(&nan), Estimator::Biased, 5, 1) {
        Err(Error::NonFinite(msg)) => assert!(msg.contains("row 3"), "{msg}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

/// Writes layers as an F64 safetensors file, in the given order.
fn write_layers(path: &std::path::Path, layers: &[(&str, &Dense)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, d) in layers {
        let start = data.len();
        d.data.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F64", "shape": [d.rows, d.cols], "data_offsets": [start, data.len()]}),
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
fn tlens_cka_reports_the_statistics_of_every_pair() {
    let dir = scratch::Scratch::new("cka-stats-cli");
    let mut rng = TestRng::new(29);
    let x = Dense::random(&mut rng, 45, 6);
    let mut y = x.mix(&mut rng, 4, 0.6);
    y.data[30 * 4..31 * 4].iter_mut().for_each(|v| *v *= 12.0);
    let other = Dense::random(&mut rng, 45, 3);
    let (fa, fb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_layers(&fa, &[("x", &x)]);
    write_layers(&fb, &[("y", &y), ("other", &other)]);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlens"))
            .args(["cka", fa.to_str().unwrap(), fb.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let flags = ["--ci", "0.9", "--bootstrap", "300", "--null", "39", "--influence", "2", "--seed", "4", "--json"];
    let (code, stdout, stderr) = run(&flags);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["estimator"], "biased");
    let pairs = v["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!((pairs[0]["a"].as_str(), pairs[0]["b"].as_str()), (Some("x"), Some("y")));
    let cka_xy = pairs[0]["cka"].as_f64().unwrap();
    assert_rel(cka_xy, reference_cka_feature(&x, &y, false), 1e-9, "CLI CKA");
    let ci = &pairs[0]["interval"];
    assert_eq!(
        (ci["level"].as_f64(), ci["resamples"].as_u64(), ci["blocks"].as_u64()),
        (Some(0.9), Some(300), Some(45))
    );
    assert!(ci["lower"].as_f64().unwrap() < cka_xy && cka_xy < ci["upper"].as_f64().unwrap());
    assert_eq!(pairs[0]["null"]["p_value"].as_f64(), Some(0.025));
    let top = pairs[0]["influence"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["sample"].as_u64(), Some(30));
    let without = reference_cka_feature(&without_row(&x, 30), &without_row(&y, 30), false);
    assert_rel(cka_xy + top[0]["delta"].as_f64().unwrap(), without, 1e-9, "CLI influence");
    assert_eq!(ci["kind"], "percentile");
    // BCa from the same resamples: the same z0 and standard error, other ends; the acceleration
    // (a jackknife) only for BCa.
    assert!(ci["acceleration"].is_null(), "{ci}");
    let (code, bca_out, stderr) = run(&[&flags[..], &["--interval", "bca"]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    let bca: serde_json::Value = serde_json::from_str(&bca_out).unwrap();
    let bca = &bca["pairs"][0]["interval"];
    assert_eq!(bca["kind"], "bca");
    assert!(bca["acceleration"].as_f64().is_some_and(f64::is_finite), "{bca}");
    for same in ["bias_correction", "std_error"] {
        assert_eq!(bca[same], ci[same], "{same}");
    }
    assert!(bca["lower"] != ci["lower"] || bca["upper"] != ci["upper"]);
    let (code, _, stderr) = run(&["--ci", "0.9", "--interval", "basic"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--interval"), "{stderr}");
    // The same seed, the same numbers; the text output names the interval and the samples.
    assert_eq!(run(&flags).1, stdout);
    let (code, text, _) = run(&["--ci", "0.95", "--bootstrap", "100", "--influence", "1"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("x \\ y: CKA") && text.contains("95% interval") && text.contains("#30"), "{text}");
    // --ci alone: the jackknife interval (the default), from the same leave-one-out values as
    // --influence, equal to the library's.
    let (code, jack_out, stderr) = run(&["--ci", "0.9", "--influence", "2", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let jack: serde_json::Value = serde_json::from_str(&jack_out).unwrap();
    let want = cka::jackknife(&view(&x), &view(&y), Estimator::Biased, 0.9).unwrap();
    let got = &jack["pairs"][0]["interval"];
    assert_eq!(got["kind"], "jackknife");
    for (field, value) in
        [("lower", want.lower), ("upper", want.upper), ("estimate", want.estimate), ("std_error", want.std_error)]
    {
        assert_rel(got[field].as_f64().unwrap(), value, 1e-12, field);
    }
    assert_eq!(jack["pairs"][0]["influence"], pairs[0]["influence"]);
    let (code, text, _) = run(&["--ci", "0.95", "--estimator", "debiased"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("95% interval") && text.contains("jackknife"), "{text}");
    // The jackknife draws no resamples; an --interval needs a level.
    let (code, _, stderr) = run(&["--interval", "jackknife", "--bootstrap", "50"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--bootstrap") && stderr.contains("leave-one-out"), "{stderr}");
    let (code, _, stderr) = run(&["--interval", "bca"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--ci"), "{stderr}");
    // Errors: a level out of range names the pair; --mask is refused.
    let (code, _, stderr) = run(&["--ci", "1.5"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("level") && stderr.contains("\"x\""), "{stderr}");
    let (code, _, stderr) = run(&["--null", "5", "--mask", "m"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--mask"), "{stderr}");
}

/// The costs for BENCHMARKS.md, side by side in one run: the plain CKA, a 1000-resample
/// interval, a 10-permutation null and the influence of every sample (with the jackknife
/// interval formed from it) on a 20000 x 1024 f32 pair. `cargo test --release --test cka_stats -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: about a minute on two cores"]
fn costs_on_a_20000_by_1024_pair() {
    let (n, p, q) = (20000, 1024, 1024);
    let mut rng = TestRng::new(28);
    let x: Vec<f32> = (0..n * p).map(|_| rng.normal() as f32).collect();
    // y shares x's first 512 features, so that CKA is far from 0.
    let y: Vec<f32> =
        (0..n * q).map(|e| if e % q < 512 { x[e / q * p + e % q] } else { 0.0 } + rng.normal() as f32).collect();
    let (xv, yv) = (Matrix::contiguous(&x, n, p).unwrap(), Matrix::contiguous(&y, n, q).unwrap());
    let ctx = Context::cpu();
    let time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut value = 0.0;
    for est in ESTIMATORS {
        let plain = time(&mut || value = cka::linear_cka(&ctx, &xv, &yv, est).unwrap());
        let mut ci = None;
        let boot =
            time(&mut || ci = Some(cka::bootstrap(&xv, &yv, est, 0.95, IntervalKind::Percentile, 1000, 0, 1).unwrap()));
        let null = time(&mut || {
            cka::permutation_null(&xv, &yv, est, 10, 1).unwrap();
        });
        let mut jack = None;
        let infl = time(&mut || jack = Some(cka::jackknife(&xv, &yv, est, 0.95).unwrap()));
        let (ci, jack) = (ci.unwrap(), jack.unwrap());
        println!(
            "{est:?}: CKA {value:.5} in {plain:.2} s; bootstrap 1000 [{:.5}, {:.5}] in {boot:.2} s ({:.2}x); \
             null 10 permutations {null:.2} s ({:.2}x, {:.2}x per permutation); influence and jackknife \
             [{:.5}, {:.5}] (estimate {:.5}) {infl:.2} s ({:.2}x)",
            ci.lower,
            ci.upper,
            boot / plain,
            null / plain,
            null / plain / 10.0,
            jack.lower,
            jack.upper,
            jack.estimate,
            infl / plain
        );
    }
}
