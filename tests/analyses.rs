//! The loss-landscape analyses against analytic cases: criticality of a quadratic toy loss, grid
//! against refined search, determinism for a seed, barriers and curves of the built-in MLP.

mod common;

use transferlens::criticality::{self, Eps, Noise, Options, Path, Search};
use transferlens::eval::{Evaluator, FnEvaluator, Metric, Metrics, MlpEvaluator, ModuleNoise};
use transferlens::landscape;
use transferlens::model::{f32_set, Dataset, Mlp, TrainOptions};
use transferlens::params::TensorSpec;
use transferlens::tensor::HostSlice;
use transferlens::{Context, DType, Error, Grouping, ParamSet};

const K: usize = 20000;

/// L(theta) = ||theta||^2 / (2k) over the one module "w" (in f64 from the f32 weights).
fn quadratic(p: &ParamSet) -> transferlens::Result<Metrics> {
    let HostSlice::F32(w) = p.tensor("w.weight").unwrap().host()? else { panic!("f32 expected") };
    let l = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (2.0 * K as f64);
    Ok(Metrics { loss: l, error: l, accuracy: 1.0 - l })
}

/// theta^0: standard normals (mean square a), theta^F = 0 (the minimum).
fn toy() -> (ParamSet, ParamSet, f64) {
    let mut z = vec![0f32; K];
    transferlens::rng::normals_f32(77, 0, 0, &mut z);
    let a = z.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / K as f64;
    let init = f32_set(&[("w.weight".into(), vec![K], z)]).unwrap();
    let fin = f32_set(&[("w.weight".into(), vec![K], vec![0f32; K])]).unwrap();
    (init, fin, a)
}

/// E[L(theta_alpha + sigma z)] = (1 - alpha)^2 a / 2 + sigma^2 / 2 <= eps; minimise
/// alpha^2 k a / sigma^2 with sigma^2 = 2 eps - (1 - alpha)^2 a (<= 1 here): a 1-d search in f64.
fn analytic(a: f64, eps: f64) -> f64 {
    let mut best = f64::INFINITY;
    for i in 1..=200000 {
        let alpha = i as f64 / 200000.0;
        let s2 = 2.0 * eps - (1.0 - alpha).powi(2) * a;
        if s2 > 0.0 && s2 <= 1.0 {
            best = best.min(alpha * alpha * K as f64 * a / s2);
        }
    }
    best
}

fn opts(search: Search) -> Options {
    Options {
        metric: Metric::Loss,
        eps: Eps::Absolute(0.3),
        noise: Noise::Absolute { scale: 1.0 },
        search,
        samples: 10,
        seed: 3,
        ..Options::reference()
    }
}

#[test]
fn refined_criticality_of_a_quadratic_matches_the_analytic_value() {
    let (init, fin, a) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let o = opts(Search::Refined { alphas: 11, tolerance: 1e-4, alpha_steps: 40 });
    let c =
        criticality::module_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, 0, &o)
            .unwrap();
    let want = analytic(a, 0.3);
    assert!(
        (c.value - want).abs() < 0.03 * want,
        "refined {} vs analytic {want} (alpha {}, sigma {})",
        c.value,
        c.alpha,
        c.sigma
    );
    assert!(c.expected <= 0.3);
}

#[test]
fn refined_search_agrees_with_the_grid() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let path = Path::Straight { init: &init, final_: &fin };
    let tol = 1e-3;
    let grid = criticality::module_criticality(
        &ctx,
        &mut ev,
        path,
        &mut live,
        0,
        &opts(Search::Grid { alphas: 11, sigmas: 11 }),
    )
    .unwrap();
    let refined = criticality::module_criticality(
        &ctx,
        &mut ev,
        path,
        &mut live,
        0,
        &opts(Search::Refined { alphas: 11, tolerance: tol, alpha_steps: 0 }),
    )
    .unwrap();
    // The grid's point is feasible, so bisection at its alpha finds a sigma at least as large
    // (up to the bracket); the grid holds a sigma within one step (0.1) below the refined one.
    assert!(refined.value <= grid.value * (1.0 + tol).powi(2), "refined {} grid {}", refined.value, grid.value);
    let step = (1.0 - 1e-16) / 10.0;
    let bound = refined.value * (refined.sigma / (refined.sigma - step)).powi(2);
    assert!(grid.value <= bound * (1.0 + 1e-9), "grid {} above {bound}", grid.value);
    assert!(grid.value.is_finite() && grid.sigma > 0.0);
}

fn task() -> (Mlp, Dataset, Dataset) {
    let (n, d) = (240, 6);
    let mut x = vec![0f32; n * d];
    transferlens::rng::normals_f32(1, 2, 0, &mut x);
    let y: Vec<u32> =
        (0..n).map(|i| u32::from(x[i * d] + 0.5 * x[i * d + 1] > 0.0) + 2 * u32::from(x[i * d + 2] > 0.3)).collect();
    let all = Dataset::new(x, y, d, 4).unwrap();
    let train = all.subset(&(0..160).collect::<Vec<_>>());
    let test = all.subset(&(160..240).collect::<Vec<_>>());
    (Mlp::new(&[d, 12, 8, 4]).unwrap(), train, test)
}

fn trained(mlp: &Mlp, train: &Dataset) -> (ParamSet, ParamSet) {
    let init = mlp.init(4).unwrap();
    let mut fin = init.try_clone().unwrap();
    mlp.train(&mut fin, train, &TrainOptions { epochs: 40, batch: 16, ..Default::default() }).unwrap();
    (init, fin)
}

#[test]
fn criticality_is_deterministic_for_a_seed_whatever_the_thread_count() {
    let (mlp, train, test) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let o = Options {
        noise: Noise::Relative,
        search: Search::Refined { alphas: 5, tolerance: 0.05, alpha_steps: 3 },
        samples: 4,
        seed: 9,
        ..Options::reference()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut ev = MlpEvaluator::new(mlp.clone(), test.clone());
            let mut live = fin.try_clone().unwrap();
            criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
                .unwrap()
        })
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a, b);
    assert_eq!(a.modules.len(), 3);
    assert_eq!(a.total, a.modules.iter().map(|m| m.value).sum::<f64>());
    let other = {
        let mut ev = MlpEvaluator::new(mlp.clone(), test.clone());
        let mut live = fin.try_clone().unwrap();
        let o2 = Options { seed: 10, ..o.clone() };
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o2)
            .unwrap()
    };
    assert_ne!(a, other, "another seed draws other noise");
}

#[test]
fn infeasible_modules_are_infinite_and_so_is_the_bound() {
    let (mlp, train, test) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let mut ev = MlpEvaluator::new(mlp, test);
    let mut live = fin.try_clone().unwrap();
    let o = Options {
        eps: Eps::Absolute(-1.0),
        search: Search::Grid { alphas: 3, sigmas: 3 },
        samples: 2,
        ..Options::reference()
    };
    let net =
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
            .unwrap();
    assert!(net.modules.iter().all(|m| m.value == f64::INFINITY));
    assert_eq!(net.total, f64::INFINITY);
    assert_eq!(criticality::pac_bayes_bound(&net, 80, 0.05).unwrap(), f64::INFINITY);
    assert!(criticality::pac_bayes_bound(&net, 1, 0.05).is_err());
}

#[test]
fn checkpoint_path_of_two_points_is_the_straight_path() {
    let (mlp, train, test) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let o = Options {
        search: Search::Grid { alphas: 4, sigmas: 4 },
        samples: 3,
        noise: Noise::Relative,
        ..Options::reference()
    };
    let mut ev = MlpEvaluator::new(mlp, test);
    let mut live = fin.try_clone().unwrap();
    let s =
        criticality::module_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, 1, &o)
            .unwrap();
    let ck = [&init, &fin];
    let c = criticality::module_criticality(&ctx, &mut ev, Path::Checkpoints(&ck), &mut live, 1, &o).unwrap();
    assert_eq!(s.alpha, c.alpha);
    assert!((s.value - c.value).abs() <= 1e-6 * s.value.abs().max(1.0), "{} vs {}", s.value, c.value);
}

#[test]
fn rewind_curve_ends_at_the_final_and_initial_module() {
    let (mlp, train, test) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let mut ev = MlpEvaluator::new(mlp.clone(), test.clone());
    let mut live = fin.try_clone().unwrap();
    let c = criticality::rewind_curve(&ctx, &mut ev, &init, &fin, &mut live, 0, &[1.0, 0.5, 0.0]).unwrap();
    assert_eq!(c[0], mlp.evaluate(&fin, &test).unwrap());
    let mut rewound = fin.try_clone().unwrap();
    transferlens::geometry::rewind(&ctx, &init, &fin, 0, 0.0, &mut rewound).unwrap();
    assert_eq!(c[2], mlp.evaluate(&rewound, &test).unwrap());
}

#[test]
fn interpolation_curve_and_barrier_of_two_models() {
    let (mlp, train, test) = task();
    let (_, a) = trained(&mlp, &train);
    let mut b = mlp.init(8).unwrap();
    mlp.train(&mut b, &train, &TrainOptions { epochs: 40, batch: 16, seed: 5, ..Default::default() }).unwrap();
    let ctx = Context::cpu();
    let lambdas = landscape::extrapolation_lambdas(4);
    let mut ev = MlpEvaluator::new(mlp.clone(), test.clone());
    let mut live = a.try_clone().unwrap();
    let curve = landscape::interpolation_curve(&ctx, &mut ev, &a, &b, &mut live, &lambdas, None).unwrap();
    let i0 = lambdas.iter().position(|&l| l == 0.0).unwrap();
    let i1 = lambdas.iter().position(|&l| l == 1.0).unwrap();
    assert_eq!(curve[i0], mlp.evaluate(&a, &test).unwrap());
    assert_eq!(curve[i1], mlp.evaluate(&b, &test).unwrap());
    let bar = landscape::curve_barrier(&lambdas, &curve, Metric::Loss, 0.0).unwrap();
    // The reference: the largest excess over the chord, by hand.
    let (m0, m1) = (curve[i0].loss, curve[i1].loss);
    let want = lambdas
        .iter()
        .zip(&curve)
        .filter(|(l, _)| (0.0..=1.0).contains(*l))
        .map(|(&l, c)| c.loss - ((1.0 - l) * m0 + l * m1))
        .fold(0.0, f64::max);
    assert!((bar.value - want).abs() < 1e-12);
    // Per module at lambda = 1: b itself.
    let per = landscape::interpolation_curve(&ctx, &mut ev, &a, &b, &mut live, &[1.0], Some(0)).unwrap();
    assert_eq!(per[0], curve[i1]);
}

#[test]
fn a_failing_evaluator_aborts_the_analysis() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut calls = 0;
    let mut ev = FnEvaluator(|_: &ParamSet| {
        calls += 1;
        Err(Error::Callback("host says no".into()))
    });
    let e = criticality::module_criticality(
        &ctx,
        &mut ev,
        Path::Straight { init: &init, final_: &fin },
        &mut live,
        0,
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e, Error::Callback("host says no".into()));
    assert_eq!(ev.batch(), 1);
}

/// A second set over the weights of `set` (the one tensor "w.weight"), as a C caller makes by
/// wrapping the same array twice.
///
/// # Safety
/// The returned set must not outlive `set`, and neither set may be written while both live.
unsafe fn over_the_memory_of(set: &ParamSet) -> ParamSet {
    let t = set.tensor("w.weight").unwrap();
    let ptr = t.bytes().unwrap().as_ptr() as *mut u8;
    let spec = TensorSpec { name: "w.weight".into(), dtype: DType::F32, shape: t.shape().to_vec(), ptr, device: -1 };
    // SAFETY: the caller's contract; the memory is `set`'s, valid and aligned for its f32s.
    unsafe { ParamSet::wrap(vec![spec]) }.unwrap()
}

#[test]
fn a_live_set_over_the_memory_of_an_input_is_refused_by_name() {
    let (init, fin, _) = toy();
    let mid = init.try_clone().unwrap();
    let ctx = Context::cpu();
    let mut ev = FnEvaluator(quadratic);
    let refused = |e: Error, input: &str| {
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidArgument(_)), "{msg}");
        assert!(msg.starts_with(&format!("live shares memory with {input} (tensor \"w.weight\")")), "{msg}");
    };
    let o = Options {
        search: Search::Grid { alphas: 2, sigmas: 2 },
        samples: 1,
        ..opts(Search::Grid { alphas: 2, sigmas: 2 })
    };
    let checkpoints = [&init, &mid, &fin];
    for (i, set) in checkpoints.iter().enumerate() {
        // SAFETY: each refusal happens before anything is written, and `live` is dropped first.
        let mut live = unsafe { over_the_memory_of(set) };
        let path = Path::Checkpoints(&checkpoints);
        refused(
            criticality::module_criticality(&ctx, &mut ev, path, &mut live, 0, &o).unwrap_err(),
            &format!("checkpoints[{i}]"),
        );
        refused(
            criticality::network_criticality(&ctx, &mut ev, path, &mut live, &o).unwrap_err(),
            &format!("checkpoints[{i}]"),
        );
    }
    for (name, set) in [("init", &init), ("final", &fin)] {
        // SAFETY: as above.
        let mut live = unsafe { over_the_memory_of(set) };
        let path = Path::Straight { init: &init, final_: &fin };
        refused(criticality::module_criticality(&ctx, &mut ev, path, &mut live, 0, &o).unwrap_err(), name);
        refused(criticality::network_criticality(&ctx, &mut ev, path, &mut live, &o).unwrap_err(), name);
        refused(criticality::rewind_curve(&ctx, &mut ev, &init, &fin, &mut live, 0, &[0.5]).unwrap_err(), name);
    }
    for (name, set) in [("a", &init), ("b", &fin)] {
        // SAFETY: as above.
        let mut live = unsafe { over_the_memory_of(set) };
        let e = landscape::interpolation_curve(&ctx, &mut ev, &init, &fin, &mut live, &[0.5], None).unwrap_err();
        refused(e, name);
    }
    assert_eq!(init.tensors()[0].bytes().unwrap(), mid.tensors()[0].bytes().unwrap(), "nothing was written");
}

/// An evaluator that breaks its contract: one result too many.
struct OneTooMany;

impl Evaluator for OneTooMany {
    fn evaluate(&mut self, _ctx: &Context, sets: &[&ParamSet]) -> transferlens::Result<Vec<Metrics>> {
        Ok(vec![Metrics { loss: 0.0, error: 0.0, accuracy: 1.0 }; sets.len() + 1])
    }
}

#[test]
fn an_evaluator_with_the_wrong_result_count_is_a_callback_error_not_a_panic() {
    let (init, fin, _) = toy();
    let mut live = fin.try_clone().unwrap();
    let e = criticality::rewind_curve(&Context::cpu(), &mut OneTooMany, &init, &fin, &mut live, 0, &[1.0]).unwrap_err();
    assert_eq!(e, Error::Callback("the evaluator returned 2 results for 1 sets".into()));
}

#[test]
fn the_bound_uses_the_joint_perturbation_which_for_one_module_is_the_module_constraint() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let o = opts(Search::Grid { alphas: 11, sigmas: 11 });
    let net =
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
            .unwrap();
    // One module: the joint point is the module's minimiser with the same noise samples.
    assert_eq!(net.joint_expected, net.modules[0].expected);
    let c = &net.modules[0];
    let kl = c.numel as f64 * (c.value / c.numel as f64).ln_1p();
    let want = net.joint_expected + ((0.25 * kl + (1000f64 / 0.05).ln()) / 999.0).sqrt();
    assert!((criticality::pac_bayes_bound(&net, 1000, 0.05).unwrap() - want).abs() < 1e-12);
    let short = criticality::pac_bayes_short(net.eps, net.total, 1000, 0.05).unwrap();
    assert!((short - (0.3 + ((net.total / 4.0 + (1000f64 / 0.05).ln()) / 1000.0).sqrt())).abs() < 1e-12);
}

/// The MLP's own way with criticality's noisy copies (layers below the noisy one computed once,
/// copies in parallel) gives bit for bit the metrics of writing each copy into a set and
/// evaluating it, for every layer, every storage dtype (the noise is rounded to it), with and
/// without noise, over more rows than one forward chunk.
#[test]
fn mlp_noisy_copies_match_writing_each_copy() {
    let (mlp, f32_set, data) = common::mlp_fixture(&[7, 13, 5, 4], 1100, 3);
    let ctx = Context::cpu();
    let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let point = common::set_as(&f32_set, dtype);
        for module in 0..3 {
            for std in [0.0, 0.02, 0.4] {
                let noise = ModuleNoise { point: &point, module, std, seed: 11, samples: 5 };
                let fast = ev.evaluate_module_noise(&ctx, &noise).expect("each module is one MLP layer").unwrap();
                let slow: Vec<Metrics> = (0..5)
                    .map(|k| {
                        let mut copy = point.try_clone().unwrap();
                        noise.add_to(k, &mut copy).unwrap();
                        mlp.evaluate(&copy, &data).unwrap()
                    })
                    .collect();
                assert_eq!(fast, slow, "{dtype:?} module {module} std {std}");
                if std == 0.0 {
                    assert!(fast.iter().all(|m| *m == mlp.evaluate(&point, &data).unwrap()));
                } else {
                    assert_ne!(fast[0].loss, fast[1].loss, "copies draw different noise");
                }
            }
        }
    }
    // A module that is not one whole layer (here: one tensor) takes the general path.
    let mut per_tensor = f32_set.try_clone().unwrap();
    per_tensor.set_grouping(Grouping::Tensor).unwrap();
    let noise = ModuleNoise { point: &per_tensor, module: 0, std: 0.1, seed: 1, samples: 2 };
    assert!(ev.evaluate_module_noise(&ctx, &noise).is_none());
}

/// Every numeric option is checked before any work: a tolerance with 1 + tol == 1 (which would
/// bisect forever), sizes that would allocate without bound, NaN and out-of-range values.
#[test]
fn every_numeric_option_is_validated() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let refined = |tolerance, alpha_steps| Search::Refined { alphas: 3, tolerance, alpha_steps };
    let bad = [
        Options { search: refined(1e-300, 0), ..Options::default() },
        Options { search: refined(f64::NAN, 0), ..Options::default() },
        Options { search: refined(0.0, 0), ..Options::default() },
        Options { search: refined(0.01, 1_000_000), ..Options::default() },
        Options {
            search: Search::Refined { alphas: u32::MAX as usize, tolerance: 0.1, alpha_steps: 0 },
            ..Options::default()
        },
        Options { search: Search::Grid { alphas: 3, sigmas: u32::MAX as usize }, ..Options::default() },
        Options { search: Search::Grid { alphas: 1, sigmas: 3 }, ..Options::default() },
        Options { samples: u32::MAX as usize, ..Options::default() },
        Options { samples: 0, ..Options::default() },
        Options { repeats: 0, ..Options::default() },
        Options { repeats: 1_000_000, ..Options::default() },
        Options { sigma_floor: 1.0, ..Options::default() },
        Options { sigma_floor: -0.1, ..Options::default() },
        Options { sigma_floor: f64::NAN, ..Options::default() },
        Options { confidence: f64::INFINITY, ..Options::default() },
        Options { confidence: -1.0, ..Options::default() },
        Options { eps: Eps::Increase(f64::NAN), ..Options::default() },
        Options { eps: Eps::Relative(-0.5), ..Options::default() },
        Options { noise: Noise::Absolute { scale: 0.0 }, ..Options::default() },
    ];
    for o in &bad {
        let path = Path::Straight { init: &init, final_: &fin };
        let e = criticality::module_criticality(&ctx, &mut ev, path, &mut live, 0, o).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{o:?}: {e}");
        let e = criticality::network_criticality(&ctx, &mut ev, path, &mut live, o).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{o:?}: {e}");
    }
    assert_eq!(ev.batch(), 1, "nothing was evaluated");
    // The smallest tolerance allowed ends.
    let o = Options { search: refined(criticality::MIN_TOLERANCE, 0), ..opts(refined(0.1, 0)) };
    let c =
        criticality::module_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, 0, &o)
            .unwrap();
    assert!(c.value.is_finite());
}

/// The analytic quadratic with every output: three repeats each near the analytic value, their
/// spread, the size-aware measures, the rewind measures L(init) = a / 2 and the area a / 6.
#[test]
fn quadratic_reports_every_measure() {
    let (init, fin, a) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let o = Options { repeats: 3, ..opts(Search::Refined { alphas: 11, tolerance: 1e-4, alpha_steps: 40 }) };
    let net =
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
            .unwrap();
    let c = &net.modules[0];
    let want = analytic(a, 0.3);
    assert_eq!(c.repeats.len(), 3);
    for v in &c.repeats {
        assert!((v - want).abs() < 0.03 * want, "repeat {v} vs analytic {want}");
    }
    assert_ne!(c.repeats[0], c.repeats[1], "each repeat draws its own noise");
    let mean = c.repeats.iter().sum::<f64>() / 3.0;
    let sd = (c.repeats.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert_eq!(c.value, mean);
    assert!((c.spread - sd).abs() <= 1e-12 * sd && c.spread > 0.0 && c.spread < 0.03 * want);
    assert!(c.feasible);
    assert_eq!(c.per_parameter, c.value / K as f64);
    assert_eq!(c.pac_bayes_term, K as f64 * (c.value / K as f64).ln_1p());
    assert!(c.expected + o.confidence * c.expected_se <= 0.3 && c.expected_se > 0.0);
    assert!((c.rewound_metric - a / 2.0).abs() < 1e-6, "L(init) {} vs {}", c.rewound_metric, a / 2.0);
    // Trapezoids of (1 - alpha)^2 a / 2 on 11 points: a / 6 plus (h^2 / 12) a, h = 0.1.
    let area = a / 6.0 + a * 0.01 / 12.0;
    assert!((c.rewind_area - area).abs() < 1e-6, "area {} vs {area}", c.rewind_area);
    assert_eq!(net.total, c.value);
    assert!((net.total_spread - c.spread).abs() <= 1e-12 * sd);
    assert_eq!(net.ranking_agreement, 1.0, "one module ranks one way");
}

/// A constraint that only sigma below the floor meets: +inf and infeasible in every mode with the
/// default floor; the reference grid (floor 0) scores at sigma = 1e-16, as the public
/// implementation does, and the refined search with floor 0 finds the true small sigma.
#[test]
fn below_the_floor_is_infeasible_in_every_mode() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let path = Path::Straight { init: &init, final_: &fin };
    // At alpha = 1, L = sigma^2 / 2 (up to the sample): feasible for sigma up to about 1.4e-4.
    let base = Options {
        eps: Eps::Absolute(1e-8),
        noise: Noise::Absolute { scale: 1.0 },
        samples: 2,
        seed: 1,
        ..Options::default()
    };
    for search in
        [Search::Grid { alphas: 11, sigmas: 11 }, Search::Refined { alphas: 11, tolerance: 0.01, alpha_steps: 2 }]
    {
        let o = Options { search, ..base.clone() };
        let net = criticality::network_criticality(&ctx, &mut ev, path, &mut live, &o).unwrap();
        let c = &net.modules[0];
        assert!(c.value == f64::INFINITY && !c.feasible && c.spread == f64::INFINITY, "{search:?}: {c:?}");
        assert_eq!(c.per_parameter, f64::INFINITY);
        assert_eq!(net.total, f64::INFINITY);
        assert_eq!(criticality::pac_bayes_bound(&net, 100, 0.05).unwrap(), f64::INFINITY);
    }
    let reference = Options { eps: Eps::Absolute(1e-8), ..Options::reference() };
    let c = criticality::module_criticality(&ctx, &mut ev, path, &mut live, 0, &reference).unwrap();
    assert_eq!(c.sigma, 1e-16, "the public grid's smallest sigma");
    assert!(c.value > 1e30 && c.feasible);
    let o =
        Options { sigma_floor: 0.0, search: Search::Refined { alphas: 11, tolerance: 0.01, alpha_steps: 0 }, ..base };
    let c = criticality::module_criticality(&ctx, &mut ev, path, &mut live, 0, &o).unwrap();
    assert!(c.feasible && c.sigma > 5e-5 && c.sigma < 2e-4, "sigma {}", c.sigma);
}

/// The public implementation written plainly: every alpha x sigma point of the 11 x 11 grid, the
/// mean error of 10 noisy copies (the same Philox streams), feasible when <= 1.01 L(final), the
/// smallest score. The reference mode returns the same point and value, bit for bit.
#[test]
fn reference_grid_is_the_public_implementation() {
    let (mlp, train, _) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let o = Options::reference();
    let l = mlp.evaluate(&fin, &train).unwrap().error;
    for module in 0..3 {
        let mut ev = MlpEvaluator::new(mlp.clone(), train.clone());
        let mut live = fin.try_clone().unwrap();
        let got = criticality::module_criticality(
            &ctx,
            &mut ev,
            Path::Straight { init: &init, final_: &fin },
            &mut live,
            module,
            &o,
        )
        .unwrap();
        let mut want = (f64::INFINITY, 0.0, 0.0);
        for &alpha in &landscape::linspace(0.0, 1.0, 11) {
            let mut point = fin.try_clone().unwrap();
            transferlens::geometry::rewind(&ctx, &init, &fin, module, alpha, &mut point).unwrap();
            let num = transferlens::geometry::distance(&ctx, &point, &init).unwrap().modules[module].powi(2);
            for &sigma in &landscape::linspace(1e-16, 1.0, 11) {
                let noise = ModuleNoise { point: &point, module, std: sigma, seed: 0, samples: 10 };
                let mean = (0..10)
                    .map(|k| {
                        let mut copy = point.try_clone().unwrap();
                        noise.add_to(k, &mut copy).unwrap();
                        mlp.evaluate(&copy, &train).unwrap().error
                    })
                    .sum::<f64>()
                    / 10.0;
                let score = num / (sigma * sigma);
                if mean <= 1.01 * l && score < want.0 {
                    want = (score, alpha, sigma);
                }
            }
        }
        assert_eq!((got.value, got.alpha, got.sigma), want, "module {module}");
    }
}

/// The defaults on a trained MLP, measured on its training sample: every module finite, and five
/// independent seeds agree within the spread they report. The criterion, fixed before the run:
/// for every module, each seed's value lies within 3 x (the mean reported spread) of the mean over
/// the seeds.
#[test]
fn defaults_on_a_trained_mlp_are_finite_and_stable_over_seeds() {
    let (mlp, train, _) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let runs: Vec<_> = [0u64, 10, 20, 30, 40]
        .iter()
        .map(|&seed| {
            let mut ev = MlpEvaluator::new(mlp.clone(), train.clone());
            let mut live = fin.try_clone().unwrap();
            let o = Options { seed, ..Options::default() };
            criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
                .unwrap()
        })
        .collect();
    for (i, name) in ["fc1", "fc2", "fc3"].iter().enumerate() {
        let values: Vec<f64> = runs.iter().map(|r| r.modules[i].value).collect();
        let spreads: Vec<f64> = runs.iter().map(|r| r.modules[i].spread).collect();
        eprintln!("{name}: values {values:?} spreads {spreads:?}");
        assert!(runs.iter().all(|r| r.modules[i].feasible && r.modules[i].value.is_finite()), "{name}: {values:?}");
        let mean = values.iter().sum::<f64>() / 5.0;
        let spread = spreads.iter().sum::<f64>() / 5.0;
        for v in &values {
            assert!((v - mean).abs() <= 3.0 * spread, "{name}: {v} vs mean {mean} (spread {spread})");
        }
    }
    for r in &runs {
        eprintln!("ranking agreement {} bound {:?}", r.ranking_agreement, criticality::pac_bayes(r, 160, 0.05, None));
    }
}

/// The bound refuses what would make it NaN, and reads itself: vacuous above 1, the held-out
/// estimate beside it.
#[test]
fn the_bound_refuses_nan_and_says_when_it_is_vacuous() {
    let (init, fin, _) = toy();
    let ctx = Context::cpu();
    let mut live = fin.try_clone().unwrap();
    let mut ev = FnEvaluator(quadratic);
    let o = opts(Search::Grid { alphas: 11, sigmas: 11 });
    let net =
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, &o)
            .unwrap();
    let b = criticality::pac_bayes(&net, 1000, 0.05, Some(criticality::HeldOut { error: 0.1, n: 500 })).unwrap();
    assert_eq!(b.value, criticality::pac_bayes_bound(&net, 1000, 0.05).unwrap());
    assert_eq!(b.vacuous, b.value > 1.0);
    assert_eq!(b.held_out, Some(0.1 + ((1.0f64 / 0.05).ln() / 1000.0).sqrt()));
    let small = criticality::pac_bayes_from_kl(0.0, 0.01, 1_000_000, 0.05, None).unwrap();
    assert!(!small.vacuous && small.value < 1.0 && small.held_out.is_none());
    let mut bad = net.clone();
    bad.joint_expected = f64::NAN;
    assert!(matches!(criticality::pac_bayes_bound(&bad, 1000, 0.05), Err(Error::InvalidArgument(_))));
    let mut bad = net.clone();
    bad.modules[0].value = f64::NAN;
    assert!(matches!(criticality::pac_bayes_bound(&bad, 1000, 0.05), Err(Error::InvalidArgument(_))));
    let mut bad = net.clone();
    bad.modules[0].numel = 0;
    assert!(matches!(criticality::pac_bayes_bound(&bad, 1000, 0.05), Err(Error::InvalidArgument(_))));
    assert!(criticality::pac_bayes_bound(&net, 1000, f64::NAN).is_err());
    assert!(criticality::held_out_estimate(1.5, 10, 0.05).is_err());
    assert!(criticality::held_out_estimate(0.1, 0, 0.05).is_err());
    assert!(criticality::bound_from_kl(-1.0, 0.0, 1000, 0.05).is_err());
}

/// The measurement behind the defaults (docs/analyses.md, section 6): the same trained MLP on its
/// training sample S and on S without one sample, five noise seeds each. The criterion, fixed
/// before the run: with the defaults no module flips between finite and infinite, and the value
/// without the sample lies within 3 x the reported spread of the value on S. The public-style
/// constraint (eps = 1.01 x the final error, the mean within eps, one seed, no floor) is printed
/// beside it for comparison.
#[test]
fn one_sample_of_s_does_not_flip_the_defaults() {
    let (mlp, train, _) = task();
    let (init, fin) = trained(&mlp, &train);
    let ctx = Context::cpu();
    let run = |data: &Dataset, o: &Options| {
        let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
        let mut live = fin.try_clone().unwrap();
        criticality::network_criticality(&ctx, &mut ev, Path::Straight { init: &init, final_: &fin }, &mut live, o)
            .unwrap()
    };
    let public_style =
        Options { eps: Eps::Relative(0.01), sigma_floor: 0.0, confidence: 0.0, repeats: 1, ..Options::default() };
    for (s, seed) in [0u64, 10, 20, 30, 40].into_iter().enumerate() {
        // Drop the seed's own sample: a different one each time.
        let keep: Vec<usize> = (0..train.n).filter(|&i| i != 7 + 31 * s).collect();
        let without = train.subset(&keep);
        let o = Options { seed, ..Options::default() };
        let (full, less) = (run(&train, &o), run(&without, &o));
        let p = Options { seed, ..public_style.clone() };
        let (pfull, pless) = (run(&train, &p), run(&without, &p));
        let values = |n: &criticality::NetworkCriticality| n.modules.iter().map(|m| m.value).collect::<Vec<_>>();
        eprintln!(
            "seed {seed}: defaults S {:?} S-1 {:?} spread {:?}; public-style S {:?} S-1 {:?}",
            values(&full),
            values(&less),
            full.modules.iter().map(|m| m.spread).collect::<Vec<_>>(),
            values(&pfull),
            values(&pless)
        );
        for (a, b) in full.modules.iter().zip(&less.modules) {
            assert!(a.feasible && b.feasible, "seed {seed} {}: {} vs {}", a.module, a.value, b.value);
            assert!(
                (a.value - b.value).abs() <= 3.0 * a.spread,
                "seed {seed} {}: {} vs {} (spread {})",
                a.module,
                a.value,
                b.value,
                a.spread
            );
        }
    }
}
