//! GPU benchmarks, printed as short tables: run with `cargo bench --features bench --bench gpu`
//! on a machine with a CUDA device (or from the GPU bundle: `scripts/gpu-check.sh`). The `bench`
//! feature compiles the library's benchmark knobs (`TL_CUDA_GRAM`, `TL_CKA_PHASES`) and makes
//! its cuBLAS helper public. Without `--bench` or without a device it says so and exits
//! successfully.
//!
//! (a) weight-space kernels on 1 GiB arrays against the device-to-device copy bandwidth;
//! (b) CKA of a 65536 x 2048 f32 pair in device memory against the cuBLAS products alone;
//! (c) a 5 x 5 layer matrix (n = 8192, p from 256 to 2048);
//! Lines `RESULT <name>_ms <ms>` carry the figures that `benches/compare/cka_torch.py` and
//! `mlp_torch.py` set against PyTorch's (`--transferlens-log` with this output).
//!
//! (d) batched perturbed-loss evaluation of the built-in MLP 784-1024-1024-1024-10 on 10000 rows,
//!     K = 10 noisy copies of the last hidden layer, against the FLOP floor of the shared-prefix
//!     schedule at the SGEMM rate measured on the schedule's largest product. Prints a
//!     `RESULT mlp_noise_device_ms <ms>` line that `benches/compare/mlp_torch.py` compares with
//!     PyTorch's torch.func.vmap.
//! (e) batched perturbed-loss evaluation of the study-sized built-in CNN
//!     (`benches/compare/cnn_spec.json`, or the file `TL_CNN_SPEC` names) on 10000 rows, K = 10
//!     noisy copies of its first conv module, against K plain evaluations of the same CNN on the
//!     device. Prints a `RESULT cnn_noise_device_ms <ms>` line that
//!     `benches/compare/cnn_torch_gpu.py` compares with PyTorch's torch.func.vmap.
//!
//! Times are medians of `REPS` runs after warm-up: CUDA events on the device's stream for the
//! kernels and products, stream-synchronised wall time for whole CKA calls (which end by
//! downloading their results). Bandwidth counts bytes read plus bytes written.

use cudarc::cublas::sys as cb;
use cudarc::cublas::CudaBlas;
use std::time::Instant;
use transferlens::backend::cuda::blas::{Gemm, Handle, Op, Syrk, OP_N, OP_T};
use transferlens::backend::cuda::{last_phases, CudaDevice, DeviceBuffer};
use transferlens::cka::{choose_route, cka_matrix, cka_matrix_via, Estimator, Route};
use transferlens::{BackendChoice, Context, DType, Matrix};

const REPS: usize = 15;
const WARMUP: usize = 3;
const GIB: usize = 1 << 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median milliseconds of `f` between two events on the device's stream.
fn time_events(dev: &CudaDevice, mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    dev.synchronize().unwrap();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let start = dev.stream().record_event(flags).unwrap();
        f();
        let end = dev.stream().record_event(flags).unwrap();
        end.synchronize().unwrap();
        times.push(start.elapsed_ms(&end).unwrap() as f64);
    }
    median(times)
}

/// Median milliseconds of `f` by the wall clock, the stream synchronised before and after.
fn time_wall(dev: &CudaDevice, mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        dev.synchronize().unwrap();
        let t = Instant::now();
        f();
        dev.synchronize().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

fn normals(dev: &CudaDevice, n: usize, stream: u64) -> DeviceBuffer<f32> {
    let mut b = dev.zeros::<f32>(n).unwrap();
    dev.normals_f32(1234, stream, 0, &mut b).unwrap();
    b
}

fn bandwidth(dev: &CudaDevice) {
    println!("\n(a) weight-space kernels, 1 GiB per array (GB/s = bytes read + written per second)");
    println!("{:<26} {:>10} {:>10} {:>10}", "operation", "ms", "GB/s", "% of copy");
    let n32 = GIB / 4;
    let a = normals(dev, n32, 1);
    let b = normals(dev, n32, 2);
    let mut out = dev.zeros::<f32>(n32).unwrap();
    let copy_ms = time_events(dev, || {
        // SAFETY: both buffers hold n32 f32 values on this device.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(out.device_ptr(), a.device_ptr(), GIB, dev.stream().cu_stream())
        }
        .unwrap();
    });
    let gbs = |bytes: usize, ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    let copy = gbs(2 * GIB, copy_ms);
    println!("{:<26} {:>10.3} {:>10.0} {:>10.1}", "cuMemcpyDtoD", copy_ms, copy, 100.0);
    let row = |name: &str, bytes: usize, ms: f64| {
        let g = gbs(bytes, ms);
        println!("{name:<26} {ms:>10.3} {g:>10.0} {:>10.1}", 100.0 * g / copy);
    };
    let ms = time_events(dev, || dev.lerp(&a, &b, 0.3, &mut out).unwrap());
    row("lerp_f32", 3 * GIB, ms);
    // 100 segments of uneven sizes: a network's modules.
    let mut offsets: Vec<u64> = (0..100u64).map(|s| (s * s) * (n32 as u64 / 9801)).collect();
    offsets.push(n32 as u64);
    offsets.dedup();
    let ms = time_events(dev, || {
        dev.segment_sumsq(&a, Some(&b), &offsets, true).unwrap();
    });
    row("segment_sumsq_f32 (a - b)", 2 * GIB, ms);
    drop((a, b, out));
    let n16 = GIB / 2;
    let mut a16 = dev.zeros::<half::bf16>(n16).unwrap();
    let mut b16 = dev.zeros::<half::bf16>(n16).unwrap();
    let t = normals(dev, n16, 4);
    dev.convert(&t, &mut a16).unwrap();
    drop(t);
    let t = normals(dev, n16, 5);
    dev.convert(&t, &mut b16).unwrap();
    drop(t);
    let mut o16 = dev.zeros::<half::bf16>(n16).unwrap();
    let ms = time_events(dev, || dev.lerp(&a16, &b16, 0.3, &mut o16).unwrap());
    row("lerp_bf16", 3 * GIB, ms);
}

/// `y = 0.6 x + 0.4 noise`: correlated with x.
fn correlated(dev: &CudaDevice, x: &DeviceBuffer<f32>, stream: u64) -> DeviceBuffer<f32> {
    let noise = normals(dev, x.len(), stream);
    let mut y = dev.zeros::<f32>(x.len()).unwrap();
    dev.lerp(x, &noise, 0.4, &mut y).unwrap();
    y
}

fn view(b: &DeviceBuffer<f32>, dev: &CudaDevice, rows: usize, cols: usize) -> Matrix<'static> {
    // SAFETY: the buffers live until the end of the benchmark that uses the views.
    unsafe { Matrix::from_device(b.device_ptr(), DType::F32, dev.ordinal() as i32, rows, cols, cols) }.unwrap()
}

fn cka_pair(ctx: &Context, dev: &CudaDevice) {
    let (n, p) = (65536usize, 2048usize);
    println!("\n(b) CKA of a {n} x {p} f32 pair in device memory (biased; debiased costs the same)");
    let x = normals(dev, n * p, 10);
    let y = correlated(dev, &x, 11);
    let (xv, yv) = (view(&x, dev, n, p), view(&y, dev, n, p));
    let route = choose_route(n, &[xv], &[yv]);
    let mut value = 0.0;
    let ours = time_wall(dev, || value = cka_matrix(ctx, &[xv], &[yv], Estimator::Biased).unwrap()[0]);
    let debiased = time_wall(dev, || {
        cka_matrix(ctx, &[xv], &[yv], Estimator::Debiased).unwrap();
    });

    // The products alone, as cuBLAS forms them: syrk(X~), syrk(Y~), gemm(X~^T Y~) on the
    // `features x rows` buffers, in full f32.
    let blas = CudaBlas::new(dev.stream().clone()).unwrap();
    // SAFETY: a valid handle and a mode of the enum.
    unsafe { cb::cublasSetMathMode(*blas.handle(), cb::cublasMath_t::CUBLAS_DEFAULT_MATH) }.result().unwrap();
    let gx = dev.zeros::<f32>(p * p).unwrap();
    let gy = dev.zeros::<f32>(p * p).unwrap();
    let c = dev.zeros::<f32>(p * p).unwrap();
    let products = || {
        let h = *blas.handle();
        ssyrk(h, p, n, x.device_ptr(), p, gx.device_ptr(), p);
        ssyrk(h, p, n, y.device_ptr(), p, gy.device_ptr(), p);
        sgemm(h, OP_N, OP_T, p, p, n, x.device_ptr(), p, y.device_ptr(), p, c.device_ptr(), p);
    };
    let blas_events = time_events(dev, products);
    let blas_wall = time_wall(dev, products);
    let flops = 2.0 * (n * p * (p + 1)) as f64 + 2.0 * (n * p * p) as f64;
    let tf = |ms: f64| flops / (ms * 1e-3) / 1e12;
    println!("{:<44} {:>10} {:>10} {:>10}", "what", "ms", "TFLOP/s", "ratio");
    println!(
        "{:<44} {:>10.3} {:>10.1} {:>10.2}",
        "cuBLAS syrk + syrk + gemm (events)",
        blas_events,
        tf(blas_events),
        1.0
    );
    println!(
        "{:<44} {:>10.3} {:>10.1} {:>10.2}",
        "cuBLAS syrk + syrk + gemm (wall)",
        blas_wall,
        tf(blas_wall),
        blas_wall / blas_events
    );
    println!(
        "{:<44} {:>10.3} {:>10.1} {:>10.2}",
        format!("transferlens cka_matrix, biased ({route:?})"),
        ours,
        tf(ours),
        ours / blas_events
    );
    println!(
        "{:<44} {:>10.3} {:>10.1} {:>10.2}",
        "transferlens cka_matrix, debiased",
        debiased,
        tf(debiased),
        debiased / blas_events
    );
    println!("CKA = {value:.6} (FLOPs counted: 2 n p (p + 1) for the two syrk + 2 n p q for the gemm)");
    println!("RESULT cka_pair_ms {ours:.4}");
    println!("RESULT cka_pair_debiased_ms {debiased:.4}");

    // The three products by each way of forming the Grams, cuBLAS alone (events), on the same
    // shapes: (i) syrk + syrk + gemm (above), (ii) one syrk of the side-by-side [X~ | Y~]
    // (4096 wide; its lower triangle holds both Grams and the cross product), (iii) recursive
    // syrk (2 x 2 split: two half Grams + one gemm, down to a syrk base), (iv) full sgemm
    // X~^T X~ for each Gram plus the cross gemm (PyTorch's three products).
    let joint = dev.zeros::<f32>(2 * n * p).unwrap();
    let gj = dev.zeros::<f32>(4 * p * p).unwrap();
    let h = *blas.handle();
    let joint_syrk = || ssyrk(h, 2 * p, n, joint.device_ptr(), 2 * p, gj.device_ptr(), 2 * p);
    let cross = || sgemm(h, OP_N, OP_T, p, p, n, x.device_ptr(), p, y.device_ptr(), p, c.device_ptr(), p);
    println!("{:<44} {:>10} {:>10} {:>10}", "Gram variant (cuBLAS alone, events)", "ms", "TFLOP/s", "ratio");
    let row = |name: &str, ms: f64| {
        println!("{:<44} {:>10.3} {:>10.1} {:>10.2}", name, ms, tf(ms), ms / blas_events);
    };
    row("(i) syrk + syrk + gemm", blas_events);
    row("(ii) joint syrk of [X~ | Y~], 4096 wide", time_events(dev, joint_syrk));
    for base in [1024usize, 512] {
        let ms = time_events(dev, || {
            rec_syrk(h, p, n, x.device_ptr(), p, gx.device_ptr(), p, base);
            rec_syrk(h, p, n, y.device_ptr(), p, gy.device_ptr(), p, base);
            cross();
        });
        row(&format!("(iii) recursive syrk, base {base}, + gemm"), ms);
    }
    let ms = time_events(dev, || {
        full_gemm(h, p, n, x.device_ptr(), gx.device_ptr());
        full_gemm(h, p, n, y.device_ptr(), gy.device_ptr());
        cross();
    });
    row("(iv) sgemm + sgemm + gemm (full Grams)", ms);
    drop((joint, gj));

    // Our cka_matrix with each Gram algorithm of the library (TL_CUDA_GRAM), wall time.
    let before = std::env::var("TL_CUDA_GRAM").ok();
    println!("{:<44} {:>10} {:>10} {:>10}", "transferlens cka_matrix, TL_CUDA_GRAM =", "ms", "TFLOP/s", "ratio");
    for algo in ["syrk", "joint", "recursive:1024", "recursive:512", "gemm"] {
        std::env::set_var("TL_CUDA_GRAM", algo);
        let ms = time_wall(dev, || {
            cka_matrix(ctx, &[xv], &[yv], Estimator::Biased).unwrap();
        });
        println!("{:<44} {:>10.3} {:>10.1} {:>10.2}", format!("  {algo}"), ms, tf(ms), ms / blas_events);
    }
    match &before {
        Some(v) => std::env::set_var("TL_CUDA_GRAM", v),
        None => std::env::remove_var("TL_CUDA_GRAM"),
    }

    // Where the time of one cka_matrix call goes (default Gram algorithm): each phase ends with
    // a stream synchronisation (TL_CKA_PHASES=1), so the sum exceeds the plain call a little.
    std::env::set_var("TL_CKA_PHASES", "1");
    let mut runs: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..(WARMUP + REPS) {
        cka_matrix(ctx, &[xv], &[yv], Estimator::Biased).unwrap();
        runs.push(last_phases());
    }
    std::env::remove_var("TL_CKA_PHASES");
    let runs = &runs[WARMUP..];
    println!("phase breakdown of cka_matrix (synchronised at each phase; medians)");
    println!("{:<44} {:>10}", "phase", "ms");
    let mut total = 0.0;
    for (i, (name, _)) in runs[0].iter().enumerate() {
        let ms = median(runs.iter().filter_map(|r| r.get(i).map(|e| e.1)).collect());
        total += ms;
        println!("{:<44} {:>10.3}", format!("  {name}"), ms);
    }
    println!("{:<44} {:>10.3}", "  sum", total);
}

/// The lower triangle of `A A^T` for the `p x n` column-major `A` by a 2 x 2 split: two half
/// Grams (recursively) and one sgemm for the block below the diagonal, syrk at widths <= base.
#[allow(clippy::too_many_arguments)]
fn rec_syrk(h: Handle, p: usize, n: usize, a: u64, lda: usize, c: u64, ldc: usize, base: usize) {
    if p <= base {
        ssyrk(h, p, n, a, lda, c, ldc);
        return;
    }
    let p1 = (p / 2).next_multiple_of(32).min(p - 32);
    let p2 = p - p1;
    rec_syrk(h, p1, n, a, lda, c, ldc, base);
    rec_syrk(h, p2, n, a + 4 * p1 as u64, lda, c + 4 * (p1 * ldc + p1) as u64, ldc, base);
    // A2 (p2 x n) and A1 (p1 x n) lie in a; C21 in c.
    sgemm(h, OP_N, OP_T, p2, p1, n, a + 4 * p1 as u64, lda, a, lda, c + 4 * p1 as u64, ldc);
}

/// The full `A A^T` of the `p x n` column-major `A` by one sgemm.
fn full_gemm(h: Handle, p: usize, n: usize, a: u64, c: u64) {
    sgemm(h, OP_N, OP_T, p, p, n, a, p, a, p, c, p);
}

fn layer_matrix(ctx: &Context, dev: &CudaDevice) {
    let n = 8192usize;
    let widths = [256usize, 512, 1024, 1536, 2048];
    println!("\n(c) 5 x 5 layer matrix, n = {n}, widths {widths:?} on both sides, f32 in device memory");
    let xs: Vec<DeviceBuffer<f32>> =
        widths.iter().enumerate().map(|(i, &p)| normals(dev, n * p, 20 + i as u64)).collect();
    let ys: Vec<DeviceBuffer<f32>> = xs.iter().enumerate().map(|(i, x)| correlated(dev, x, 30 + i as u64)).collect();
    let xv: Vec<Matrix> = xs.iter().zip(widths).map(|(b, p)| view(b, dev, n, p)).collect();
    let yv: Vec<Matrix> = ys.iter().zip(widths).map(|(b, p)| view(b, dev, n, p)).collect();
    let chosen = choose_route(n, &xv, &yv);
    println!("{:<44} {:>10}", "what", "ms");
    for route in [Route::Feature, Route::Sample] {
        let ms = time_wall(dev, || {
            cka_matrix_via(ctx, &xv, &yv, Estimator::Biased, route).unwrap();
        });
        let mark = if route == chosen { " (chosen)" } else { "" };
        println!("{:<44} {:>10.3}", format!("cka_matrix 5 x 5, {route:?} route{mark}"), ms);
        if route == chosen {
            println!("RESULT cka_matrix_ms {ms:.4}");
        }
    }
    let diag = cka_matrix(ctx, &xv, &yv, Estimator::Biased).unwrap();
    println!("diagonal: {:?}", (0..5).map(|i| format!("{:.4}", diag[i * 5 + i])).collect::<Vec<_>>());
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("gpu benchmarks: run with --bench (cargo bench --bench gpu)");
        return;
    }
    let ctx = match Context::new(BackendChoice::Cuda, 0) {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            // As the tests do: where the device is required (gpu-check.sh), its absence fails.
            if std::env::var("TL_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return;
        }
    };
    let dev = ctx.cuda_device().unwrap().clone();
    println!(
        "GPU benchmarks on {} (sm_{}{}), medians of {REPS} after {WARMUP} warm-up runs",
        dev.name(),
        dev.capability().0,
        dev.capability().1
    );
    let only = std::env::var("TL_GPU_BENCH").unwrap_or_default();
    let wants = |k: &str| only.is_empty() || only.split(',').any(|s| s == k);
    if wants("a") {
        bandwidth(&dev);
    }
    if wants("b") {
        cka_pair(&ctx, &dev);
    }
    if wants("c") {
        layer_matrix(&ctx, &dev);
    }
    if wants("d") {
        mlp_noise(&ctx, &dev);
    }
    if wants("e") {
        cnn_noise(&dev);
    }
}

/// `C (m x n) = op_a(A) op_b(B)` in f32 by the library's cuBLAS helper, column-major, on device
/// addresses.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    h: Handle,
    ta: Op,
    tb: Op,
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    lda: usize,
    b: u64,
    ldb: usize,
    c: u64,
    ldc: usize,
) {
    let product = Gemm { ta, tb, m, n, k, a, lda, b, ldb, c, ldc };
    // SAFETY: every caller passes device buffers of the stated shapes on the handle's device.
    unsafe { product.run::<f32>(h, "benchmark sgemm") }.unwrap();
}

/// The lower triangle of `C = A A^T` (`C` p x p, `A` p x n) in f32 by the library's helper.
fn ssyrk(h: Handle, p: usize, n: usize, a: u64, lda: usize, c: u64, ldc: usize) {
    let gram = Syrk { trans: OP_N, n: p, k: n, a, lda, c, ldc };
    // SAFETY: every caller passes device buffers of the stated shapes on the handle's device.
    unsafe { gram.run::<f32>(h, "benchmark ssyrk") }.unwrap();
}

fn mlp_noise(ctx: &Context, dev: &CudaDevice) {
    use transferlens::backend::cuda::mlp::{DeviceDataset, DeviceMlp};
    use transferlens::backend::LayerNoise;
    use transferlens::eval::{Evaluator, MlpEvaluator, ModuleNoise};
    use transferlens::model::{Dataset, Mlp};
    let sizes = [784usize, 1024, 1024, 1024, 10];
    let (rows, copies, layer) = (10_000usize, 10usize, 2usize);
    println!(
        "\n(d) batched perturbed evaluation: MLP {sizes:?}, {rows} rows, K = {copies} noisy copies of fc{} (f32)",
        layer + 1
    );
    let mlp = Mlp::new(&sizes).unwrap();
    let set = mlp.init(17).unwrap();
    let mut x = vec![0f32; rows * sizes[0]];
    transferlens::rng::normals_f32(5, 0, 0, &mut x);
    let y: Vec<u32> = (0..rows as u32).map(|i| (i * 7 + i / 3) % 10).collect();
    let data = Dataset::new(x, y, sizes[0], 10).unwrap();

    // The matrix rate: the schedule's largest product, (K 1024) x 1024 by 1024 x rows.
    let (m, k) = (copies * sizes[layer + 1], sizes[layer]);
    let a = normals(dev, m * k, 11);
    let b = normals(dev, k * rows, 12);
    let c = dev.zeros::<f32>(m * rows).unwrap();
    let blas = CudaBlas::new(dev.stream().clone()).unwrap();
    let h = *blas.handle();
    // SAFETY: a valid handle; CUBLAS_DEFAULT_MATH is full f32, as the library's products.
    unsafe { cb::cublasSetMathMode(h, cb::cublasMath_t::CUBLAS_DEFAULT_MATH) }.result().unwrap();
    // As the MLP's layers call it: C (m x rows) = A^T B, A stored k x m.
    let gemm_ms =
        time_events(dev, || sgemm(h, OP_T, OP_N, m, rows, k, a.device_ptr(), k, b.device_ptr(), k, c.device_ptr(), m));
    drop((a, b, c));
    let rate = 2.0 * (m * rows * k) as f64 / (gemm_ms * 1e-3);

    // FLOPs of the shared-prefix schedule and of K separate forward passes.
    let mac = |j: usize| (sizes[j] * sizes[j + 1]) as f64;
    let below: f64 = (0..layer).map(mac).sum();
    let above: f64 = (layer..sizes.len() - 1).map(mac).sum();
    let shared_flops = 2.0 * rows as f64 * (below + copies as f64 * above);
    let separate_flops = 2.0 * rows as f64 * copies as f64 * (below + above);
    let floor_ms = shared_flops / rate * 1e3;

    let device_data = DeviceDataset::upload(dev, &data.x, &data.y, data.dim, data.classes).unwrap();
    let stored = mlp.stored_layers(&set).unwrap();
    let model = DeviceMlp::upload(dev, &sizes, &stored, layer).unwrap();
    let noise = LayerNoise {
        layer,
        std: 0.01,
        seed: 3,
        stream0: (layer as u64) << 32,
        draws: copies,
        weight_index0: 0,
        bias_index0: (sizes[layer] * sizes[layer + 1]) as u64,
    };
    let mut result = Vec::new();
    let device_ms = time_wall(dev, || result = model.evaluate_layer_noise(dev, &device_data, &noise).unwrap());
    let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
    let module_noise = ModuleNoise { point: &set, module: layer, std: 0.01, seed: 3, samples: copies };
    let host_ms = time_wall(dev, || {
        ev.evaluate_module_noise(ctx, &module_noise).unwrap().unwrap();
    });
    let tf = |flops: f64, ms: f64| flops / (ms * 1e-3) / 1e12;
    println!("{:<52} {:>10} {:>10} {:>10}", "what", "ms", "TFLOP/s", "x floor");
    println!(
        "{:<52} {:>10.3} {:>10.1} {:>10}",
        format!("cuBLAS SGEMM {m} x {rows} x {k} (events): the rate"),
        gemm_ms,
        rate / 1e12,
        "-"
    );
    println!(
        "{:<52} {:>10.3} {:>10.1} {:>10.2}",
        "FLOP floor of the shared-prefix schedule",
        floor_ms,
        rate / 1e12,
        1.0
    );
    println!(
        "{:<52} {:>10.3} {:>10.1} {:>10.2}",
        "transferlens, weights and data on the device",
        device_ms,
        tf(shared_flops, device_ms),
        device_ms / floor_ms
    );
    println!(
        "{:<52} {:>10.3} {:>10.1} {:>10.2}",
        "transferlens, from a host set (evaluator, upload)",
        host_ms,
        tf(shared_flops, host_ms),
        host_ms / floor_ms
    );
    println!(
        "FLOPs: shared prefix {:.1} G; {copies} separate forward passes {:.1} G ({:.2}x)",
        shared_flops / 1e9,
        separate_flops / 1e9,
        separate_flops / shared_flops
    );
    println!("copy 0: loss {:.6}, error {:.4}", result[0].0, result[0].1);
    println!("RESULT mlp_noise_device_ms {device_ms:.4}");
    println!("RESULT mlp_noise_floor_ms {floor_ms:.4}");
}

/// (e): the study-sized CNN, K = 10 noisy copies of its first conv module, device time.
fn cnn_noise(dev: &CudaDevice) {
    use transferlens::backend::cuda::cnn::DeviceCnn;
    use transferlens::backend::cuda::mlp::DeviceDataset;
    use transferlens::model::cnn::Layer;
    use transferlens::model::{Cnn, Dataset};
    let path = std::env::var("TL_CNN_SPEC").unwrap_or_else(|_| "benches/compare/cnn_spec.json".into());
    let spec = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            println!("\n(e) skipped: the CNN specification {path} cannot be read ({e})");
            return;
        }
    };
    let cnn = Cnn::from_json(&spec).unwrap();
    let (rows, copies) = (10_000usize, 10usize);
    // The module of the first conv layer.
    let first_conv = cnn.layers().iter().position(|l| matches!(l, Layer::Conv(_))).expect("the CNN has a conv layer");
    let module = cnn.layer_modules()[first_conv].expect("a conv layer has a module");
    let name = &cnn.module_names()[module];
    let s = cnn.input_shape();
    println!(
        "\n(e) batched perturbed evaluation: CNN {path} ({} x {} x {} images), {rows} rows, K = {copies} noisy copies of module {name} (f32)",
        s.c, s.h, s.w
    );
    let set = cnn.init(17).unwrap();
    let mut x = vec![0f32; rows * s.numel()];
    transferlens::rng::normals_f32(5, 0, 0, &mut x);
    let classes = cnn.classes() as u32;
    let y: Vec<u32> = (0..rows as u32).map(|i| (i * 7 + i / 3) % classes).collect();
    let data = Dataset::new(x, y, s.numel(), cnn.classes()).unwrap();
    let device_data = DeviceDataset::upload(dev, &data.x, &data.y, data.dim, data.classes).unwrap();
    let model = DeviceCnn::upload(dev, &cnn, &set).unwrap();

    let mut result = Vec::new();
    let device_ms = time_wall(dev, || {
        result = model.evaluate_module_noise(dev, &device_data, module, 0.01, 3, copies).unwrap();
    });
    let plain_ms = time_wall(dev, || {
        for _ in 0..copies {
            model.evaluate(dev, &device_data).unwrap();
        }
    });
    println!("{:<52} {:>10}", "what", "ms");
    println!("{:<52} {:>10.3}", "transferlens, K noisy copies in one schedule", device_ms);
    println!("{:<52} {:>10.3}", format!("transferlens, {copies} plain evaluations one by one"), plain_ms);
    println!("batched over separate: {:.2}x faster", plain_ms / device_ms);
    println!("copy 0: loss {:.6}, error {:.4}", result[0].0, result[0].1);
    println!("RESULT cnn_noise_device_ms {device_ms:.4}");
}
