//! Times `cka_matrix` on activations stored in two safetensors files, for the side-by-side
//! comparison in benches/compare/cka.py (which writes the files, times numpy on the same data
//! and prints the ratios).
//!
//! Usage: time_cka A.safetensors B.safetensors ESTIMATOR REPEATS
//! Prints one line: `median_seconds min_seconds v00 v01 ...` (CKA values, row-major).

use std::time::Instant;
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::{Context, Matrix};

fn load(path: &str) -> Vec<(Vec<f32>, usize, usize)> {
    let bytes = std::fs::read(path).expect("readable file");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    meta.offset_keys()
        .iter()
        .map(|name| {
            let t = file.tensor(name).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}: the comparison uses f32");
            let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (data, t.shape()[0], t.shape()[1..].iter().product())
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() == 5, "usage: time_cka A B biased|debiased REPEATS");
    let (a, b) = (load(&args[1]), load(&args[2]));
    let estimator = if args[3] == "debiased" { Estimator::Debiased } else { Estimator::Biased };
    let repeats: usize = args[4].parse().unwrap();
    let xs: Vec<Matrix> = a.iter().map(|(d, r, c)| Matrix::contiguous(d, *r, *c).unwrap()).collect();
    let ys: Vec<Matrix> = b.iter().map(|(d, r, c)| Matrix::contiguous(d, *r, *c).unwrap()).collect();
    let ctx = Context::cpu();
    let mut values = cka_matrix(&ctx, &xs, &ys, estimator).unwrap(); // warm-up
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        values = cka_matrix(&ctx, &xs, &ys, estimator).unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|p, q| p.partial_cmp(q).unwrap());
    let list: Vec<String> = values.iter().map(|v| format!("{v:.12}")).collect();
    println!("{:.6} {:.6} {}", times[times.len() / 2], times[0], list.join(" "));
}
