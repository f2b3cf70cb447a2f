//! Criterion benchmark of the exact linear assignment solver (`align::assignment`) on a dense
//! 4096 x 4096 matrix of uniform values, the size of issue 18's goal (within 1.0x the time of
//! `scipy.optimize.linear_sum_assignment`).
//!
//! `TL_ASSIGNMENT_ONCE=N,SEED` instead solves one N x N matrix and prints
//! `{"n": N, "seconds": .., "total": ..}` (the matrix generation not timed):
//! benches/compare/assignment.py runs it beside scipy on the same matrix.

use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use transferlens::align::assignment::{solve, Objective};

/// Entry `i` of the row-major matrix: splitmix64 of `seed * 2^32 + i + 1`, as a uniform in
/// [0, 1). benches/compare/assignment.py computes the same values with numpy.
fn matrix(n: usize, seed: u64) -> Vec<f64> {
    (0..(n * n) as u64)
        .map(|i| {
            let mut z = (seed << 32).wrapping_add(i + 1).wrapping_mul(0x9e3779b97f4a7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn assignment(c: &mut Criterion) {
    let n = 4096;
    let m = matrix(n, 1);
    let mut group = c.benchmark_group("assignment");
    group.sample_size(10);
    group
        .bench_function("dense_4096x4096_min", |b| b.iter(|| solve(black_box(&m), n, n, Objective::Minimize).unwrap()));
    group.finish();
}

criterion_group!(benches, assignment);

fn main() {
    if let Ok(arg) = std::env::var("TL_ASSIGNMENT_ONCE") {
        let (n, seed) = arg.split_once(',').expect("TL_ASSIGNMENT_ONCE=N,SEED");
        let (n, seed): (usize, u64) = (n.parse().expect("N"), seed.parse().expect("SEED"));
        let m = matrix(n, seed);
        let start = std::time::Instant::now();
        let a = solve(&m, n, n, Objective::Minimize).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        println!("{{\"n\": {n}, \"seconds\": {seconds}, \"total\": {:.17e}}}", a.total);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
