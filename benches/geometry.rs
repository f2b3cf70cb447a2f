//! Weight-space arithmetic is memory-bound: these benches report bytes touched per second
//! (read + written) next to plain copies of the same bytes, single-threaded (`copy_from_slice`)
//! and split across threads like the library does (rayon). The goal is at least 80% of the
//! faster copy. benches/compare/geometry.py runs numpy's equivalents on the same sizes;
//! examples/time_weights.rs times the kernels and the copy in the same rounds, for the ratios.
//!
//!     cargo bench --bench geometry
//!     TL_BENCH_ELEMENTS=4000000 cargo bench --bench geometry   # a smaller working set

#[path = "support/weights_data.rs"]
mod weights_data;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use std::hint::black_box;
use std::time::Duration;
use transferlens::backend::cpu::weights::{self, Stores};
use transferlens::{geometry, Context, DType};
use weights_data::{fill, par_copy, Buf};

fn elements() -> usize {
    std::env::var("TL_BENCH_ELEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(64_000_001)
    // every array well past the last-level cache, and odd
}

fn bench(c: &mut Criterion) {
    let n = elements();
    let ctx = Context::cpu();
    let (va, vb) = (fill(n, 1), fill(n, 2));
    let mut g = c.benchmark_group("geometry");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        let (mut a, mut b, mut o) = (Buf::new(&va, dtype), Buf::new(&vb, dtype), Buf::new(&vb, dtype));
        let bytes = a.nbytes();
        // SAFETY: the buffers outlive the sets; while the sets live, the copies below only read
        // a and b and write o, never while a set is in use.
        let (sa, sb, mut so) = unsafe { (a.set(), b.set(), o.set()) };
        let name = dtype.name();
        // Copies of the same bytes: one array read, one written.
        g.throughput(Throughput::Bytes(2 * bytes as u64));
        g.bench_function(BenchmarkId::new("copy", name), |bch| {
            bch.iter(|| {
                let (src, dst) = (&a.words, &mut o.words);
                // SAFETY: two distinct buffers of the same length.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
                black_box(&o.words);
            })
        });
        g.bench_function(BenchmarkId::new("copy_parallel", name), |bch| {
            bch.iter(|| {
                par_copy(&b.words, &mut o.words);
                black_box(&o.words);
            })
        });
        // Distance: two arrays read.
        g.throughput(Throughput::Bytes(2 * bytes as u64));
        g.bench_function(BenchmarkId::new("distance", name), |bch| {
            bch.iter(|| black_box(geometry::distance(&ctx, &sa, &sb).unwrap()))
        });
        g.bench_function(BenchmarkId::new("compare", name), |bch| {
            bch.iter(|| black_box(geometry::compare(&ctx, &sa, &sb).unwrap()))
        });
        // Interpolation: two arrays read, one written.
        g.throughput(Throughput::Bytes(3 * bytes as u64));
        g.bench_function(BenchmarkId::new("interpolate", name), |bch| {
            bch.iter(|| geometry::interpolate(&ctx, &sa, &sb, 0.3, &mut so).unwrap())
        });
        drop((sa, sb, so));
        let _ = (&mut a, &mut b);
    }
    g.finish();
    // The per-chunk kernels alone, one thread, on one chunk that stays in cache.
    let mut k = c.benchmark_group("kernels");
    k.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    let (xa, xb): (Vec<f32>, Vec<f32>) =
        (va[..1 << 16].iter().map(|&v| v as f32).collect(), vb[..1 << 16].iter().map(|&v| v as f32).collect());
    k.throughput(Throughput::Bytes(8 << 16));
    k.bench_function("sum_sq_diff/f32", |bch| {
        bch.iter(|| black_box(weights::sum_sq_diff(black_box(&xa[..]), black_box(&xb[..]))))
    });
    k.bench_function("stats/f32", |bch| bch.iter(|| black_box(weights::stats(black_box(&xa[..]), black_box(&xb[..])))));
    let (ha, hb): (Vec<f16>, Vec<f16>) =
        (xa.iter().map(|&v| f16::from_f32(v)).collect(), xb.iter().map(|&v| f16::from_f32(v)).collect());
    let (ba, bb): (Vec<bf16>, Vec<bf16>) =
        (xa.iter().map(|&v| bf16::from_f32(v)).collect(), xb.iter().map(|&v| bf16::from_f32(v)).collect());
    k.throughput(Throughput::Bytes(4 << 16));
    k.bench_function("sum_sq_diff/f16", |bch| {
        bch.iter(|| black_box(weights::sum_sq_diff(black_box(&ha[..]), black_box(&hb[..]))))
    });
    k.bench_function("sum_sq_diff/bf16", |bch| {
        bch.iter(|| black_box(weights::sum_sq_diff(black_box(&ba[..]), black_box(&bb[..]))))
    });
    k.bench_function("stats/f16", |bch| bch.iter(|| black_box(weights::stats(black_box(&ha[..]), black_box(&hb[..])))));
    k.bench_function("stats/bf16", |bch| {
        bch.iter(|| black_box(weights::stats(black_box(&ba[..]), black_box(&bb[..]))))
    });
    // Interpolation: two chunks read, one written (and checked finite).
    let (da, db): (Vec<f64>, Vec<f64>) = (va[..1 << 16].to_vec(), vb[..1 << 16].to_vec());
    let (mut xo, mut ho, mut bo, mut dout) = (xa.clone(), ha.clone(), ba.clone(), da.clone());
    k.throughput(Throughput::Bytes(12 << 16));
    k.bench_function("lerp/f32", |bch| bch.iter(|| black_box(weights::lerp32(&xa, &xb, 0.3, &mut xo, Stores::Cached))));
    k.throughput(Throughput::Bytes(24 << 16));
    k.bench_function("lerp/f64", |bch| {
        bch.iter(|| black_box(weights::lerp_f64(&da, &db, 0.3, &mut dout, Stores::Cached)))
    });
    k.throughput(Throughput::Bytes(6 << 16));
    k.bench_function("lerp/f16", |bch| bch.iter(|| black_box(weights::lerp32(&ha, &hb, 0.3, &mut ho, Stores::Cached))));
    k.bench_function("lerp/bf16", |bch| {
        bch.iter(|| black_box(weights::lerp32(&ba, &bb, 0.3, &mut bo, Stores::Cached)))
    });
    // The same with non-temporal stores: the output goes to memory, the inputs stay in cache.
    k.throughput(Throughput::Bytes(12 << 16));
    k.bench_function("lerp_streaming/f32", |bch| {
        bch.iter(|| black_box(weights::lerp32(&xa, &xb, 0.3, &mut xo, Stores::Streaming)))
    });
    k.throughput(Throughput::Bytes(24 << 16));
    k.bench_function("lerp_streaming/f64", |bch| {
        bch.iter(|| black_box(weights::lerp_f64(&da, &db, 0.3, &mut dout, Stores::Streaming)))
    });
    k.throughput(Throughput::Bytes(6 << 16));
    k.bench_function("lerp_streaming/f16", |bch| {
        bch.iter(|| black_box(weights::lerp32(&ha, &hb, 0.3, &mut ho, Stores::Streaming)))
    });
    k.bench_function("lerp_streaming/bf16", |bch| {
        bch.iter(|| black_box(weights::lerp32(&ba, &bb, 0.3, &mut bo, Stores::Streaming)))
    });
    k.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
