//! Criterion benchmarks of linear CKA on the CPU. The side-by-side comparison with numpy is
//! benches/compare/cka.py; BENCHMARKS.md records both.
//!
//! Multiply-adds per call (feature route): n (p^2/2 + q^2/2 + p q) for a pair; the 5 x 5 layer
//! matrix forms each layer's Gram once and each pair's cross product once.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use transferlens::cka::{cka_matrix, cka_matrix_via, Estimator, Route};
use transferlens::{Context, Matrix};

/// Deterministic data with correlated columns (the values do not affect the speed).
fn data(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn pair(c: &mut Criterion) {
    let ctx = Context::cpu();
    let (n, p) = (20000, 1024);
    let (x, y) = (data(n, p, 1), data(n, p, 2));
    let (mx, my) = (Matrix::contiguous(&x, n, p).unwrap(), Matrix::contiguous(&y, n, p).unwrap());
    let mut group = c.benchmark_group("cka_pair_20000x1024_f32");
    group.sample_size(10);
    // Two half Grams and one cross product: n (p^2/2 + p^2/2 + p^2) multiply-adds, 2 flops each.
    group.throughput(Throughput::Elements((2 * n * p * p * 2) as u64));
    for est in [Estimator::Biased, Estimator::Debiased] {
        group
            .bench_function(format!("{est:?}"), |b| b.iter(|| black_box(cka_matrix(&ctx, &[mx], &[my], est).unwrap())));
    }
    group.finish();
}

fn layer_matrix(c: &mut Criterion) {
    let ctx = Context::cpu();
    let n = 4096;
    let widths = [256, 512, 640, 768, 1024];
    let xs: Vec<Vec<f32>> = widths.iter().enumerate().map(|(i, &p)| data(n, p, 10 + i as u64)).collect();
    let ys: Vec<Vec<f32>> = widths.iter().enumerate().map(|(i, &p)| data(n, p, 20 + i as u64)).collect();
    let mx: Vec<Matrix> = xs.iter().zip(&widths).map(|(d, &p)| Matrix::contiguous(d, n, p).unwrap()).collect();
    let my: Vec<Matrix> = ys.iter().zip(&widths).map(|(d, &p)| Matrix::contiguous(d, n, p).unwrap()).collect();
    let mut group = c.benchmark_group("cka_matrix_5x5_n4096_f32");
    group.sample_size(10);
    group.bench_function("biased", |b| b.iter(|| black_box(cka_matrix(&ctx, &mx, &my, Estimator::Biased).unwrap())));
    group.finish();
}

fn routes(c: &mut Criterion) {
    // Few samples, many features: the sample route avoids p x p products.
    let ctx = Context::cpu();
    let (n, p) = (256, 8192);
    let (x, y) = (data(n, p, 3), data(n, p, 4));
    let (mx, my) = (Matrix::contiguous(&x, n, p).unwrap(), Matrix::contiguous(&y, n, p).unwrap());
    let mut group = c.benchmark_group("cka_routes_256x8192_f32");
    group.sample_size(10);
    for route in [Route::Sample, Route::Feature] {
        group.bench_function(format!("{route:?}"), |b| {
            b.iter(|| black_box(cka_matrix_via(&ctx, &[mx], &[my], Estimator::Biased, route).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, pair, layer_matrix, routes);
criterion_main!(benches);
