//! Layer-wise connectivity (issue 18): the points of a layer-wise curve (moving modules
//! interpolated, the others A's bit for bit), the curve with every module moving equal to the
//! plain interpolation curve, the barrier, alignment lowering the barrier between two trained MLPs
//! (the numbers shown), and the errors.

mod common;

use common::TestRng;
use std::cell::RefCell;
use transferlens::align::{apply, layerwise_barrier, layerwise_curve, match_weights, MatchOptions, Moving, PermSpec};
use transferlens::eval::{FnEvaluator, Metric, Metrics, MlpEvaluator};
use transferlens::model::{Dataset, Mlp, TrainOptions};
use transferlens::{geometry, landscape, Context, Error, ParamSet};

fn data(n: usize, seed: u64) -> Dataset {
    let (dim, classes) = (8, 3);
    let mut rng = TestRng::new(seed);
    let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    let y = (0..n)
        .map(|i| {
            if x[i * dim] + 0.5 * x[i * dim + 1] > 0.3 {
                0
            } else if x[i * dim + 2] > 0.0 {
                1
            } else {
                2
            }
        })
        .collect();
    Dataset::new(x, y, dim, classes).unwrap()
}

fn same_bits(x: &ParamSet, y: &ParamSet, name: &str) -> bool {
    x.tensor(name).unwrap().bytes().unwrap() == y.tensor(name).unwrap().bytes().unwrap()
}

/// Every point the evaluator sees: moving modules as geometry::interpolate writes them, the rest
/// A's bit for bit.
#[test]
fn points_move_the_chosen_modules_and_hold_the_rest_at_a() {
    let mlp = Mlp::new(&[8, 12, 10, 3]).unwrap();
    let (a, b) = (mlp.init(1).unwrap(), mlp.init(2).unwrap());
    let names: Vec<String> = a.modules().iter().map(|m| m.name.clone()).collect();
    assert_eq!(names, ["fc1", "fc2", "fc3"]);
    let lambdas = [0.0, 0.3, 1.0];
    let ctx = Context::cpu();
    for (moving, moved) in [
        (Moving::Module(1), vec!["fc2"]),
        (Moving::First(2), vec!["fc1", "fc2"]),
        (Moving::Last(1), vec!["fc3"]),
        (Moving::Last(3), vec!["fc1", "fc2", "fc3"]),
    ] {
        let seen = RefCell::new(Vec::new());
        let mut ev = FnEvaluator(|p: &ParamSet| {
            seen.borrow_mut().push(p.try_clone()?);
            Ok(Metrics { loss: 0.0, error: 0.0, accuracy: 1.0 })
        });
        let mut live = a.try_clone().unwrap();
        layerwise_curve(&ctx, &mut ev, &a, &b, &mut live, &lambdas, moving).unwrap();
        let seen = seen.into_inner();
        assert_eq!(seen.len(), lambdas.len());
        for (point, &l) in seen.iter().zip(&lambdas) {
            let mut want = a.try_clone().unwrap();
            geometry::interpolate(&ctx, &a, &b, l, &mut want).unwrap();
            for t in a.tensors() {
                let module = t.name().split('.').next().unwrap();
                let reference = if moved.contains(&module) { &want } else { &a };
                assert!(same_bits(point, reference, t.name()), "{moving:?}, lambda {l}: tensor {}", t.name());
            }
        }
    }
}

#[test]
fn every_module_moving_is_the_plain_curve_and_barriers_follow() {
    let mlp = Mlp::new(&[8, 16, 3]).unwrap();
    let d = data(150, 3);
    let (mut a, mut b) = (mlp.init(3).unwrap(), mlp.init(4).unwrap());
    let opts = TrainOptions { epochs: 10, ..Default::default() };
    mlp.train(&mut a, &d, &opts).unwrap();
    mlp.train(&mut b, &d, &opts).unwrap();
    let ctx = Context::cpu();
    let lambdas = landscape::linspace(0.0, 1.0, 6);
    let mut ev = MlpEvaluator::new(mlp.clone(), d.clone());
    let mut live = a.try_clone().unwrap();
    let plain = landscape::interpolation_curve(&ctx, &mut ev, &a, &b, &mut live, &lambdas, None).unwrap();
    let (curve, barrier) =
        layerwise_barrier(&ctx, &mut ev, &a, &b, &mut live, &lambdas, Moving::First(2), Metric::Loss, 0.01).unwrap();
    assert_eq!(curve, plain);
    assert_eq!(barrier, landscape::curve_barrier(&lambdas, &plain, Metric::Loss, 0.01).unwrap());
    // One module: its end point is A with that module from B, not B.
    let one = layerwise_curve(&ctx, &mut ev, &a, &b, &mut live, &lambdas, Moving::Module(0)).unwrap();
    assert_eq!(one[0], plain[0]);
    let mut hybrid = a.try_clone().unwrap();
    // fc1 from B, fc2 from A: lambda 0 on fc2 of the plain interpolation (A's bits exactly).
    geometry::interpolate_module(&ctx, &b, &a, 0.0, 0, &mut hybrid).unwrap();
    assert!(same_bits(&hybrid, &b, "fc1.weight") && same_bits(&hybrid, &a, "fc2.weight"));
    assert_eq!(one.last().unwrap(), &mlp.evaluate(&hybrid, &d).unwrap());
    assert_ne!(one.last().unwrap(), plain.last().unwrap());
}

/// Alignment lowers the layer-wise barriers between two MLPs trained from different inits on the
/// same task: the numbers are printed (run with --nocapture to see them).
#[test]
fn alignment_lowers_the_barrier_between_independently_trained_mlps() {
    let mlp = Mlp::new(&[8, 64, 3]).unwrap();
    let d = data(400, 5);
    let (mut a, mut b) = (mlp.init(5).unwrap(), mlp.init(6).unwrap());
    let opts = TrainOptions { epochs: 30, ..Default::default() };
    mlp.train(&mut a, &d, &opts).unwrap();
    mlp.train(&mut b, &d, &opts).unwrap();
    let spec = PermSpec::for_mlp(&mlp);
    let matching = match_weights(&spec, &a, &b, &MatchOptions::default()).unwrap();
    let aligned = apply(&spec, &b, &matching.perms).unwrap();
    let ctx = Context::cpu();
    let lambdas = landscape::linspace(0.0, 1.0, 11);
    let mut ev = MlpEvaluator::new(mlp.clone(), d.clone());
    let mut live = a.try_clone().unwrap();
    let mut barrier = |b: &ParamSet, moving| {
        layerwise_barrier(&ctx, &mut ev, &a, b, &mut live, &lambdas, moving, Metric::Loss, 0.01).unwrap().1
    };
    let (raw, after) = (barrier(&b, Moving::First(2)), barrier(&aligned, Moving::First(2)));
    // fc1 alone moved: the curve rises to A with B's first layer, which (unaligned) feeds A's
    // second layer units in another order.
    let (raw_fc1, after_fc1) = (barrier(&b, Moving::Module(0)), barrier(&aligned, Moving::Module(0)));
    println!(
        "loss barrier, whole model: raw {:.4}, aligned {:.4}; fc1 alone moved: loss at A with B's fc1 raw {:.4}, aligned {:.4} (A's loss {:.4})",
        raw.value, after.value, raw_fc1.end, after_fc1.end, raw_fc1.start
    );
    assert!(raw.value > 0.02, "no raw barrier to lower: {}", raw.value);
    assert!(after.value < 0.5 * raw.value, "alignment did not lower the barrier: {} -> {}", raw.value, after.value);
    assert!(after_fc1.end < raw_fc1.end, "alignment did not make B's fc1 fit A: {} -> {}", raw_fc1.end, after_fc1.end);
}

#[test]
fn layerwise_errors() {
    let mlp = Mlp::new(&[8, 6, 3]).unwrap();
    let (a, b) = (mlp.init(1).unwrap(), mlp.init(2).unwrap());
    let ctx = Context::cpu();
    let mut ev = MlpEvaluator::new(mlp.clone(), data(20, 1));
    let mut live = a.try_clone().unwrap();
    let mut run = |moving, lambdas: &[f64]| layerwise_curve(&ctx, &mut ev, &a, &b, &mut live, lambdas, moving);
    assert!(matches!(run(Moving::Module(2), &[0.0]), Err(Error::NotFound(e)) if e.contains("2 modules")));
    for bad in [Moving::First(0), Moving::Last(3)] {
        assert!(matches!(run(bad, &[0.0]), Err(Error::InvalidArgument(e)) if e.contains("between 1 and")));
    }
    assert!(matches!(run(Moving::First(1), &[]), Err(Error::InvalidArgument(_))));
    assert!(matches!(run(Moving::First(1), &[f64::NAN]), Err(Error::InvalidArgument(_))));
}
