//! Times `cka_matrix` on activations stored in two safetensors files, for the side-by-side
//! comparison in benches/compare/cka.py (which writes the files, times numpy on the same data
//! in alternation with this program and prints the ratios).
//!
//! Usage: time_cka A.safetensors B.safetensors ESTIMATOR
//! After a warm-up call, prints the CKA values (row-major) on one line; then times one call per
//! line read from stdin and prints its seconds on one line, until stdin closes.

use std::io::{BufRead, Write};
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
    assert!(args.len() == 4, "usage: time_cka A B biased|debiased");
    let (a, b) = (load(&args[1]), load(&args[2]));
    let estimator = if args[3] == "debiased" { Estimator::Debiased } else { Estimator::Biased };
    let xs: Vec<Matrix> = a.iter().map(|(d, r, c)| Matrix::contiguous(d, *r, *c).unwrap()).collect();
    let ys: Vec<Matrix> = b.iter().map(|(d, r, c)| Matrix::contiguous(d, *r, *c).unwrap()).collect();
    let ctx = Context::cpu();
    let values = cka_matrix(&ctx, &xs, &ys, estimator).unwrap(); // warm-up
    let list: Vec<String> = values.iter().map(|v| format!("{v:.12}")).collect();
    let mut out = std::io::stdout();
    writeln!(out, "{}", list.join(" ")).unwrap();
    out.flush().unwrap();
    for _ in std::io::stdin().lock().lines() {
        let start = Instant::now();
        std::hint::black_box(cka_matrix(&ctx, &xs, &ys, estimator).unwrap());
        writeln!(out, "{:.6}", start.elapsed().as_secs_f64()).unwrap();
        out.flush().unwrap();
    }
}
