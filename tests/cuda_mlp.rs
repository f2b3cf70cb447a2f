//! The built-in MLP's batched perturbed evaluation (module criticality's noisy copies) on the
//! CUDA backend against the CPU backend on the same inputs: every layer, every storage dtype,
//! awkward widths, more copies than one device group, one row, NaN weights; and whole
//! criticality searches on both backends.
//!
//! Where no driver or device works the tests that need one are reported as ignored (the
//! closing line counts them), unless the environment sets `TL_REQUIRE_CUDA=1`: then they run and
//! fail. The harness is `common::run_gpu_tests` (`harness = false` in Cargo.toml).
//!
//! Tolerances: the products run in f32 on both sides, in different summation orders, so
//! activations differ by a few ulp; the noise is the same Philox stream, computed in f32 on the
//! device (f64 for f64 weights) and in f64 on the CPU, so a noisy value can round to the
//! neighbouring storage value (one ulp of f16 / bf16). Losses agree to 1e-4 relative (2e-5 for
//! f32 and f64 weights); the 0-1 error can differ only where a row's two largest logits are
//! within that noise of each other, and no more than two rows per copy are allowed to flip.
mod common;
use transferlens::criticality::{self, Eps, Noise, Options, Path, Search};
use transferlens::eval::{Evaluator, Metric, Metrics, MlpEvaluator, ModuleNoise};
use transferlens::{Context, DType, Error};

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

use common::cuda_context as cuda;

fn assert_metrics_close(got: &[Metrics], want: &[Metrics], rows: usize, loss_tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of copies");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.loss.abs().max(1e-3);
        assert!((g.loss - w.loss).abs() <= loss_tol * scale, "{what} copy {k}: loss {} vs CPU {}", g.loss, w.loss);
        let flipped = ((g.error - w.error) * rows as f64).abs().round();
        assert!(flipped <= 2.0, "{what} copy {k}: error {} vs CPU {} ({flipped} rows differ)", g.error, w.error);
        assert_eq!(g.accuracy, 1.0 - g.error, "{what} copy {k}");
    }
}

fn noisy_copies_on_cuda_match_the_cpu() {
    let gpu = cuda();
    let cpu = Context::cpu();
    // (widths, rows, copies): awkward widths, widths not a multiple of 4 (the scalar bias path),
    // one row, a two-layer net, more copies than one device group (256).
    let cases: [(&[usize], usize, usize); 5] = [
        (&[37, 129, 65, 10], 3001, 7),
        (&[16, 64, 32, 8], 1200, 3),
        (&[5, 3], 17, 4),
        (&[9, 11, 2], 1, 2),
        (&[20, 24, 24, 10], 300, 300),
    ];
    for (sizes, rows, copies) in cases {
        let (mlp, set, data) = common::mlp_fixture(sizes, rows, 5);
        let mut on_cpu = MlpEvaluator::new(mlp.clone(), data.clone());
        let mut on_gpu = MlpEvaluator::new(mlp.clone(), data.clone());
        for dtype in DTYPES {
            let point = common::set_as(&set, dtype);
            let tol = if matches!(dtype, DType::F32 | DType::F64) { 2e-5 } else { 1e-4 };
            for module in 0..mlp.layers() {
                for std in [0.0, 0.05] {
                    let noise = ModuleNoise { point: &point, module, std, seed: 21, samples: copies };
                    let want = on_cpu.evaluate_module_noise(&cpu, &noise).unwrap().unwrap();
                    let got = on_gpu.evaluate_module_noise(&gpu, &noise).unwrap().unwrap();
                    let what = format!("{sizes:?} rows {rows} {dtype:?} layer {module} std {std}");
                    assert_metrics_close(&got, &want, rows, tol, &what);
                    // The same call again gives the same bits: the reductions have a fixed order.
                    let again = on_gpu.evaluate_module_noise(&gpu, &noise).unwrap().unwrap();
                    assert_eq!(got, again, "{what}: repeated call");
                }
            }
        }
    }
}

/// Plain evaluation (what interpolation and rewind curves ask for) runs on the device with a
/// CUDA context: one model at a time through the same schedule, with no noise.
fn plain_evaluation_and_curves_on_cuda_match_the_cpu() {
    let gpu = cuda();
    let cpu = Context::cpu();
    let sizes = [23usize, 70, 33, 6];
    let (mlp, a32, data) = common::mlp_fixture(&sizes, 1500, 12);
    let (_, b32, _) = common::mlp_fixture(&sizes, 1, 13);
    let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
    for dtype in DTYPES {
        let (a, b) = (common::set_as(&a32, dtype), common::set_as(&b32, dtype));
        let want = ev.evaluate(&cpu, &[&a, &b]).unwrap();
        let got = ev.evaluate(&gpu, &[&a, &b]).unwrap();
        assert_metrics_close(&got, &want, data.n, 2e-5, &format!("{dtype:?} plain"));
        let lambdas = [-0.5, 0.0, 0.25, 0.5, 1.0, 1.5];
        let curve = |ctx: &Context, ev: &mut MlpEvaluator| {
            let mut live = a.try_clone().unwrap();
            transferlens::landscape::interpolation_curve(ctx, ev, &a, &b, &mut live, &lambdas, None).unwrap()
        };
        let (want, got) = (curve(&cpu, &mut ev), curve(&gpu, &mut ev));
        assert_metrics_close(&got, &want, data.n, 2e-5, &format!("{dtype:?} curve"));
    }
}

fn noisy_copies_of_nan_weights_are_an_error_on_cuda() {
    let gpu = cuda();
    let (mlp, set, data) = common::mlp_fixture(&[6, 8, 3], 50, 2);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = set
        .tensors()
        .iter()
        .map(|t| {
            let transferlens::tensor::HostSlice::F32(v) = t.host().unwrap() else { unreachable!("the fixture is f32") };
            let mut v = v.to_vec();
            if t.name() == "fc2.weight" {
                v[3] = f32::NAN;
            }
            (t.name().to_string(), t.shape().to_vec(), v)
        })
        .collect();
    let values = transferlens::model::f32_set(&tensors).unwrap();
    let mut ev = MlpEvaluator::new(mlp, data);
    // Noise on the layer below the NaN: the NaN reaches the logits of every copy.
    let noise = ModuleNoise { point: &values, module: 0, std: 0.1, seed: 1, samples: 3 };
    let err = ev.evaluate_module_noise(&gpu, &noise).unwrap().unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
    let err = ev.evaluate_module_noise(&Context::cpu(), &noise).unwrap().unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err:?}");
}

/// A whole criticality search on both backends: the device evaluates every noisy copy, and each
/// grid point's decision compares a device loss with eps. The grid makes the same decisions,
/// hence the same values, unless a point's mean loss lies within the loss tolerance (2e-5
/// relative) of eps, which these seeds do not produce.
fn network_criticality_on_cuda_matches_the_cpu() {
    let gpu = cuda();
    let (mlp, init, data) = common::mlp_fixture(&[12, 40, 24, 5], 600, 8);
    let mut fin = init.try_clone().unwrap();
    let train = transferlens::model::TrainOptions { epochs: 15, batch: 32, lr: 0.02, ..Default::default() };
    mlp.train(&mut fin, &data, &train).unwrap();
    let o = Options {
        metric: Metric::Loss,
        eps: Eps::Relative(0.05),
        noise: Noise::Relative,
        search: Search::Grid { alphas: 6, sigmas: 7 },
        samples: 6,
        seed: 3,
        ..Options::reference()
    };
    let run = |ctx: &Context| {
        let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
        let mut live = fin.try_clone().unwrap();
        criticality::network_criticality(ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
            .unwrap()
    };
    let (want, got) = (run(&Context::cpu()), run(&gpu));
    assert!((got.final_metric - want.final_metric).abs() <= 1e-5 * want.final_metric.abs());
    assert!(want.modules.iter().any(|m| m.value.is_finite() && m.value > 0.0), "a case with feasible points");
    for (g, w) in got.modules.iter().zip(&want.modules) {
        assert_eq!((&g.module, g.value, g.alpha, g.sigma), (&w.module, w.value, w.alpha, w.sigma));
        assert!(
            (g.expected - w.expected).abs() <= 2e-5 * w.expected.abs(),
            "{}: {} vs {}",
            g.module,
            g.expected,
            w.expected
        );
    }
}

gpu_test_main! {
    everywhere: [],
    on_device: [noisy_copies_on_cuda_match_the_cpu, plain_evaluation_and_curves_on_cuda_match_the_cpu, noisy_copies_of_nan_weights_are_an_error_on_cuda, network_criticality_on_cuda_matches_the_cpu],
}
