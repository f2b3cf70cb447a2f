//! Criterion benchmarks of module criticality's noisy copies on the CPU: the built-in MLP's
//! shared-prefix evaluation (`Mlp::evaluate_layer_noise`: the layers below the noisy one once,
//! the K copies in parallel from there) against writing each copy into a set and evaluating it
//! (what a host callback does). Both give the same bits (tests/analyses.rs).
//!
//! FLOPs per call, MLP 784-256-256-256-10 on 2000 rows, K = 10 copies: separate passes
//! 2 n K sum(in out) = 13.4 GFLOP; shared prefix 2 n (sum_{j<l} in out + K sum_{j>=l} in out) =
//! 13.4 GFLOP with noise on fc1 (nothing below to share), 3.8 GFLOP with noise on fc3.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use transferlens::eval::{Evaluator, Metrics, MlpEvaluator, ModuleNoise};
use transferlens::model::{Dataset, Mlp};
use transferlens::Context;

fn noisy_copies(c: &mut Criterion) {
    let sizes = [784usize, 256, 256, 256, 10];
    let (rows, copies) = (2000usize, 10usize);
    let mlp = Mlp::new(&sizes).unwrap();
    let point = mlp.init(3).unwrap();
    let mut x = vec![0f32; rows * sizes[0]];
    transferlens::rng::normals_f32(1, 0, 0, &mut x);
    let y = (0..rows as u32).map(|i| (i * 7 + i / 3) % 10).collect();
    let data = Dataset::new(x, y, sizes[0], 10).unwrap();
    let ctx = Context::cpu();
    let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
    let mut group = c.benchmark_group("mlp_noisy_copies_784-256x3-10_2000rows_K10");
    group.sample_size(10);
    let mac = |j: usize| (sizes[j] * sizes[j + 1]) as u64;
    for module in [0usize, 2] {
        let noise = ModuleNoise { point: &point, module, std: 0.01, seed: 5, samples: copies };
        let below: u64 = (0..module).map(mac).sum();
        let above: u64 = (module..sizes.len() - 1).map(mac).sum();
        group.throughput(Throughput::Elements(2 * rows as u64 * (below + copies as u64 * above)));
        group.bench_function(format!("shared_prefix_fc{}", module + 1), |b| {
            b.iter(|| black_box(ev.evaluate_module_noise(&ctx, &noise).unwrap().unwrap()))
        });
        group.throughput(Throughput::Elements(2 * rows as u64 * copies as u64 * (below + above)));
        group.bench_function(format!("set_per_copy_fc{}", module + 1), |b| {
            b.iter(|| {
                let sets: Vec<_> = (0..copies)
                    .map(|k| {
                        let mut s = point.try_clone().unwrap();
                        noise.add_to(k, &mut s).unwrap();
                        s
                    })
                    .collect();
                let refs: Vec<_> = sets.iter().collect();
                let m: Vec<Metrics> = ev.evaluate(&ctx, &refs).unwrap();
                black_box(m)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, noisy_copies);
criterion_main!(benches);
