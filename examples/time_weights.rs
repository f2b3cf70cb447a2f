//! The weight-space kernels against a copy of the same bytes, timed in the same rounds, so that
//! "% of copy" is a ratio of two figures measured seconds apart rather than minutes apart (a
//! criterion run times each function for seconds before the next, and the copy's own rate moved
//! by 1.5x between such runs on a shared machine).
//!
//!     cargo run --release --example time_weights                 # 64,000,001 elements, 9 rounds
//!     TL_BENCH_ELEMENTS=4000000 cargo run --release --example time_weights -- 15
//!     cargo run --release --example time_weights -- 15 f16 bf16     # 15 rounds, two dtypes
//!
//! Each round times, in an order that rotates from round to round: `copy` (the bytes of one
//! array copied by rayon in 128 KiB pieces, as benches/geometry.rs's `copy_parallel`),
//! `distance`, `compare` and `interpolate` (the library's calls), and `interpolate_cached`:
//! the same interpolation with ordinary stores (the library streams its stores at this size),
//! split in the same chunks across the same threads. Rates count bytes read plus bytes written;
//! the table gives each kernel's median rate and the median, lowest and highest of its per-round
//! ratio to that round's copy.

#[path = "../benches/support/weights_data.rs"]
mod weights_data;

use half::{bf16, f16};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;
use transferlens::backend::cpu::weights::{self, Stores};
use transferlens::{geometry, Context, DType};
use weights_data::{fill, par_copy, Buf};

/// Elements per parallel task, as the library splits its work.
const CHUNK: usize = 1 << 16;

/// The interpolation with ordinary stores, chunked and threaded as the library does.
fn interpolate_cached(a: &mut Buf, b: &mut Buf, out: &mut Buf, l: f64) -> bool {
    fn run<T: weights::Lerp32>(a: &[T], b: &[T], out: &mut [T], l: f32) -> bool {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .map(|(o, (x, y))| weights::lerp32(x, y, l, o, Stores::Cached))
            .reduce(|| true, |p, q| p & q)
    }
    match out.dtype {
        DType::F32 => run::<f32>(a.typed(), b.typed(), out.typed(), l as f32),
        DType::F16 => run::<f16>(a.typed(), b.typed(), out.typed(), l as f32),
        DType::BF16 => run::<bf16>(a.typed(), b.typed(), out.typed(), l as f32),
        DType::F64 => {
            let (x, y, o) = (a.typed::<f64>(), b.typed::<f64>(), out.typed::<f64>());
            o.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
                .map(|(o, (x, y))| weights::lerp_f64(x, y, l, o, Stores::Cached))
                .reduce(|| true, |p, q| p & q)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

const KERNELS: [&str; 5] = ["copy", "distance", "compare", "interpolate", "interpolate_cached"];

fn main() {
    let n: usize = std::env::var("TL_BENCH_ELEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(64_000_001);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map(|r| r.parse().expect("rounds: a count")).unwrap_or(9);
    let all = [DType::F32, DType::BF16, DType::F16, DType::F64];
    let dtypes: Vec<DType> = if args.len() > 1 {
        args[1..].iter().map(|a| *all.iter().find(|d| d.name() == *a).expect("dtypes: f32, bf16, f16, f64")).collect()
    } else {
        all.to_vec()
    };
    let ctx = Context::cpu();
    println!("{}, {} threads, {n} elements, {rounds} rounds", cpu_model(), rayon::current_num_threads());
    println!("{:5} {:19} {:>8} {:>14} {:>9} {:>9}", "dtype", "kernel", "GB/s", "% of copy", "lowest", "highest");
    let (va, vb) = (fill(n, 1), fill(n, 2));
    for dtype in dtypes {
        let (mut a, mut b, mut o) = (Buf::new(&va, dtype), Buf::new(&vb, dtype), Buf::new(&vb, dtype));
        let bytes = a.nbytes() as f64;
        // SAFETY: the buffers outlive the sets; while the sets live, the buffers are used only
        // by interpolate_cached, which reads a and b and writes o exactly as interpolate does,
        // never at the same time.
        let (sa, sb, mut so) = unsafe { (a.set(), b.set(), o.set()) };
        // Bytes touched per call: read + written.
        let moved = [2.0, 2.0, 2.0, 3.0, 3.0].map(|k| k * bytes);
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); KERNELS.len()];
        let mut call = |k: usize| {
            let start = Instant::now();
            match k {
                0 => par_copy(&b.words, &mut o.words),
                1 => drop(black_box(geometry::distance(&ctx, &sa, &sb).unwrap())),
                2 => drop(black_box(geometry::compare(&ctx, &sa, &sb).unwrap())),
                3 => geometry::interpolate(&ctx, &sa, &sb, 0.3, &mut so).unwrap(),
                _ => assert!(interpolate_cached(&mut a, &mut b, &mut o, 0.3)),
            }
            black_box(&o.words);
            moved[k] / start.elapsed().as_secs_f64() / 1e9
        };
        for k in 0..KERNELS.len() {
            call(k); // warm-up: page faults, thread pool
        }
        for r in 0..rounds {
            for j in 0..KERNELS.len() {
                let k = (j + r) % KERNELS.len();
                rates[k].push(call(k));
            }
        }
        for (k, name) in KERNELS.iter().enumerate() {
            let ratios: Vec<f64> = rates[k].iter().zip(&rates[0]).map(|(x, c)| 100.0 * x / c).collect();
            let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            println!(
                "{:5} {:19} {:8.1} {:13.0}% {:8.0}% {:8.0}%",
                dtype.name(),
                name,
                median(rates[k].clone()),
                median(ratios),
                lo,
                hi
            );
        }
        drop((sa, sb, so));
    }
}
