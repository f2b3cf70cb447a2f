//! Criterion benchmarks of the built-in CNN on the CPU, on the study's sizes (12 x 12 grey
//! images, 8 classes, the architecture of docs/cnn.md):
//!
//! - `train_epoch`: one epoch of minibatch SGD (batch 32) over 2000 images;
//! - `noisy_copies`: K = 10 noisy copies of one module on 1000 images, the batched path
//!   (`Cnn::evaluate_module_noise`: the layers below once per chunk, a single conv module's
//!   copies as one GEMM over the stacked filter banks) against writing each copy into a set and
//!   evaluating the 10 sets (what a host callback does). Both give the same bits (tests/cnn.rs).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use transferlens::eval::{CnnEvaluator, Evaluator, Metrics, ModuleNoise};
use transferlens::model::{Cnn, Dataset, TrainOptions};
use transferlens::Context;

const STUDY_CNN: &str = r#"{"input": [1, 12, 12], "classes": 8, "layers": [
    {"type": "conv", "name": "conv1", "out": 16, "kernel": 3, "stride": 1, "padding": 1, "bias": false},
    {"type": "groupnorm", "name": "gn1", "groups": 4},
    {"type": "relu"},
    {"type": "block", "name": "layer1", "out": 16, "stride": 1, "groups": 4},
    {"type": "block", "name": "layer2", "out": 32, "stride": 2, "groups": 4},
    {"type": "avgpool", "kernel": 2, "stride": 2},
    {"type": "global_avgpool"},
    {"type": "dense", "name": "fc", "out": 8}]}"#;

fn images(n: usize) -> Dataset {
    let mut x = vec![0f32; n * 144];
    transferlens::rng::normals_f32(1, 0, 0, &mut x);
    let y = (0..n as u32).map(|i| (i * 7 + i / 3) % 8).collect();
    Dataset::new(x, y, 144, 8).unwrap()
}

fn train_epoch(c: &mut Criterion) {
    let cnn = Cnn::from_json(STUDY_CNN).unwrap();
    let data = images(2000);
    let init = cnn.init(1).unwrap();
    let opts = TrainOptions { epochs: 1, batch: 32, lr: 0.01, ..Default::default() };
    let mut group = c.benchmark_group("cnn_study_2000x1x12x12");
    group.sample_size(10);
    group.bench_function("train_epoch_batch32", |b| {
        b.iter(|| {
            let mut p = init.try_clone().unwrap();
            black_box(cnn.train(&mut p, &data, &opts).unwrap())
        })
    });
    group.finish();
}

fn noisy_copies(c: &mut Criterion) {
    let cnn = Cnn::from_json(STUDY_CNN).unwrap();
    let data = images(1000);
    let point = cnn.init(3).unwrap();
    let ctx = Context::cpu();
    let mut ev = CnnEvaluator::new(cnn.clone(), data.clone());
    let copies = 10;
    let mut group = c.benchmark_group("cnn_noisy_copies_1000rows_K10");
    group.sample_size(10);
    for (module, name) in [(0usize, "conv1"), (2, "layer2")] {
        let noise = ModuleNoise { point: &point, module, std: 0.01, seed: 5, samples: copies };
        group.bench_function(format!("batched_{name}"), |b| {
            b.iter(|| black_box(ev.evaluate_module_noise(&ctx, &noise).unwrap().unwrap()))
        });
        group.bench_function(format!("set_per_copy_{name}"), |b| {
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

criterion_group!(benches, train_epoch, noisy_copies);
criterion_main!(benches);
