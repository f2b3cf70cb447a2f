//! CKA on the CUDA backend against the CPU backend on the same inputs: both estimators, both
//! routes, every dtype, awkward sizes, layer matrices, the streaming accumulator over uneven
//! batches, device-pointer inputs, every exponent of f32, f16 and bf16 (against the f64 answer
//! too), and the error paths.
//!
//! Where no driver or device works the tests that need one are reported as ignored (the
//! closing line counts them), unless the environment sets `TL_REQUIRE_CUDA=1`: then they run and
//! fail. The harness is `common::run_gpu_tests` (`harness = false` in Cargo.toml).

mod common;

use common::{assert_rel, reference_cka_feature, Dense, TestRng};
use half::{bf16, f16};
use transferlens::backend::{column_means, cuda::DeviceBuffer};
use transferlens::cka::{cka_matrix, cka_matrix_via, linear_cka, CkaAccumulator, Estimator, MinibatchCka, Route};
use transferlens::{Backend, BackendChoice, Context, DType, Error, Matrix};

const ESTIMATORS: [Estimator; 2] = [Estimator::Biased, Estimator::Debiased];
const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

use common::cuda_context as cuda;

/// Host data of one dtype, row-major with a row stride.
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A matrix stored as `dtype` with `pad` unused elements after each row.
struct Typed {
    data: Data,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl Typed {
    fn new(d: &Dense, dtype: DType, pad: usize) -> Self {
        let stride = d.cols + pad;
        let mut flat = vec![f64::from_bits(0x7ff8_dead_0000_0000); d.rows * stride]; // NaN padding: never read
        for r in 0..d.rows {
            flat[r * stride..r * stride + d.cols].copy_from_slice(&d.data[r * d.cols..(r + 1) * d.cols]);
        }
        let data = match dtype {
            DType::F32 => Data::F32(flat.iter().map(|&v| v as f32).collect()),
            DType::F64 => Data::F64(flat),
            DType::F16 => Data::F16(flat.iter().map(|&v| f16::from_f64(v)).collect()),
            DType::BF16 => Data::BF16(flat.iter().map(|&v| bf16::from_f64(v)).collect()),
        };
        Typed { data, rows: d.rows, cols: d.cols, stride }
    }

    fn view(&self) -> Matrix<'_> {
        let (r, c, s) = (self.rows, self.cols, self.stride);
        let len = (r - 1) * s + c;
        match &self.data {
            Data::F32(v) => Matrix::new(&v[..len], r, c, s),
            Data::F64(v) => Matrix::new(&v[..len], r, c, s),
            Data::F16(v) => Matrix::new(&v[..len], r, c, s),
            Data::BF16(v) => Matrix::new(&v[..len], r, c, s),
        }
        .unwrap()
    }

    /// The stored values in f64, row-major without the padding.
    fn values(&self) -> Vec<f64> {
        let at = |k: usize| match &self.data {
            Data::F32(v) => v[k] as f64,
            Data::F64(v) => v[k],
            Data::F16(v) => v[k].to_f64(),
            Data::BF16(v) => v[k].to_f64(),
        };
        (0..self.rows).flat_map(|r| (0..self.cols).map(move |c| r * self.stride + c)).map(at).collect()
    }

    fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
        }
    }
}

/// A copy of a [`Typed`] matrix in device memory, strides included.
enum OnDevice {
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
    F16(DeviceBuffer<f16>),
    BF16(DeviceBuffer<bf16>),
}

struct DeviceMatrix {
    buf: OnDevice,
    rows: usize,
    cols: usize,
    stride: usize,
    dtype: DType,
    device: i32,
}

impl DeviceMatrix {
    fn upload(ctx: &Context, t: &Typed) -> Self {
        let dev = ctx.cuda_device().unwrap();
        let buf = match &t.data {
            Data::F32(v) => OnDevice::F32(dev.upload(v).unwrap()),
            Data::F64(v) => OnDevice::F64(dev.upload(v).unwrap()),
            Data::F16(v) => OnDevice::F16(dev.upload(v).unwrap()),
            Data::BF16(v) => OnDevice::BF16(dev.upload(v).unwrap()),
        };
        dev.synchronize().unwrap();
        DeviceMatrix { buf, rows: t.rows, cols: t.cols, stride: t.stride, dtype: t.dtype(), device: ctx.device() }
    }

    fn view(&self) -> Matrix<'_> {
        let ptr = match &self.buf {
            OnDevice::F32(b) => b.device_ptr(),
            OnDevice::F64(b) => b.device_ptr(),
            OnDevice::F16(b) => b.device_ptr(),
            OnDevice::BF16(b) => b.device_ptr(),
        };
        // SAFETY: the buffer holds rows * stride elements of dtype and outlives the view.
        unsafe { Matrix::from_device(ptr, self.dtype, self.device, self.rows, self.cols, self.stride) }.unwrap()
    }
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-9
    } else {
        2e-5
    }
}

/// CUDA and CPU agree: the same values within `tol` (relative, on the scale of CKA's [0, 1]
/// range), or the same kind of error.
fn assert_same(got: Result<Vec<f64>, Error>, want: Result<Vec<f64>, Error>, tol: f64, what: &str) {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            assert_eq!(g.len(), w.len(), "{what}");
            for (k, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what} [{k}]: cuda {a} vs cpu {b}");
            }
        }
        (Err(g), Err(w)) => assert_eq!(g.status(), w.status(), "{what}: cuda {g} vs cpu {w}"),
        (g, w) => panic!("{what}: cuda {g:?} vs cpu {w:?}"),
    }
}

/// x and a y that shares part of its structure, so that CKA is far from 0.
fn pair(rng: &mut TestRng, n: usize, p: usize, q: usize) -> (Dense, Dense) {
    let x = Dense::random(rng, n, p);
    let base = Dense::random(rng, n, q);
    let mut y = base.clone();
    for r in 0..n {
        for c in 0..q {
            y.data[r * q + c] = 0.5 * base.at(r, c) + x.at(r, c % p) + 3.0;
        }
    }
    (x, y)
}

fn context_resolves_to_cuda_where_a_device_works() {
    let auto = Context::new(BackendChoice::Auto, 0).unwrap();
    match Context::new(BackendChoice::Cuda, 0).ok() {
        Some(ctx) => {
            assert_eq!(ctx.backend(), Backend::Cuda);
            assert_eq!(auto.backend(), Backend::Cuda, "Auto must pick CUDA where it works");
            let dev = ctx.cuda_device().unwrap();
            println!("device 0: {} sm_{:?}", dev.name(), dev.capability());
        }
        None => {
            assert_eq!(auto.backend(), Backend::Cpu);
            let e = Context::new(BackendChoice::Cuda, 0).unwrap_err();
            assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
        }
    }
}

fn both_routes_match_cpu_for_every_dtype_and_awkward_size() {
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(11);
    let shapes = [(4, 1, 3), (4, 3, 1), (37, 65, 3), (37, 300, 65), (1031, 1, 300), (1031, 65, 65), (37, 3, 300)];
    for (n, p, q) in shapes {
        let (x, y) = pair(&mut rng, n, p, q);
        for dtype in DTYPES {
            for pad in [0, 3] {
                let (tx, ty) = (Typed::new(&x, dtype, pad), Typed::new(&y, dtype, 0));
                let (xs, ys) = ([tx.view()], [ty.view()]);
                for est in ESTIMATORS {
                    for route in [Route::Feature, Route::Sample] {
                        let want = cka_matrix_via(&cpu, &xs, &ys, est, route);
                        let got = cka_matrix_via(&ctx, &xs, &ys, est, route);
                        let what = format!("n {n} p {p} q {q} {dtype:?} pad {pad} {est:?} {route:?}");
                        assert_same(got, want, tolerance(dtype), &what);
                    }
                }
            }
        }
    }
}

fn layer_matrix_matches_cpu() {
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(12);
    for n in [37, 1031] {
        let (a, b) = pair(&mut rng, n, 3, 65);
        let (c, d) = pair(&mut rng, n, 1, 300);
        let e = Dense::random(&mut rng, n, 7);
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            let t: Vec<Typed> = [&a, &c, &e, &b, &d].iter().map(|m| Typed::new(m, dtype, 0)).collect();
            let views: Vec<Matrix> = t.iter().map(|m| m.view()).collect();
            let (xs, ys) = views.split_at(3);
            for est in ESTIMATORS {
                for route in [Route::Feature, Route::Sample] {
                    let want = cka_matrix_via(&cpu, xs, ys, est, route);
                    let got = cka_matrix_via(&ctx, xs, ys, est, route);
                    assert_same(got, want, tolerance(dtype), &format!("3 x 2 n {n} {dtype:?} {est:?} {route:?}"));
                }
                let got = cka_matrix(&ctx, xs, ys, est).unwrap();
                assert_eq!(got.len(), 6);
            }
        }
    }
}

fn accumulator_over_uneven_batches_matches_cpu() {
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(13);
    for (n, splits) in [(37usize, vec![1usize, 5, 1, 30]), (1031, vec![1, 500, 1, 1, 528])] {
        let (a, b) = pair(&mut rng, n, 65, 3);
        let (c, d) = pair(&mut rng, n, 1, 300);
        for dtype in [DType::F32, DType::F64, DType::F16] {
            let t: Vec<Typed> = [&a, &c, &b, &d].iter().map(|m| Typed::new(m, dtype, 1)).collect();
            for est in ESTIMATORS {
                let mut on_gpu = CkaAccumulator::new(2, 2, est).unwrap();
                let mut on_cpu = CkaAccumulator::new(2, 2, est).unwrap();
                let mut start = 0;
                for &rows in &splits {
                    let part: Vec<Matrix> = t.iter().map(|m| m.view().row_range(start, rows).unwrap()).collect();
                    on_gpu.update(&ctx, &part[..2], &part[2..]).unwrap();
                    on_cpu.update(&cpu, &part[..2], &part[2..]).unwrap();
                    start += rows;
                }
                assert_eq!(on_gpu.count(), n as u64);
                let what = format!("accumulator n {n} {dtype:?} {est:?}");
                assert_same(on_gpu.result(), on_cpu.result(), tolerance(dtype), &what);
                // And the same as the whole data at once.
                let views: Vec<Matrix> = t.iter().map(|m| m.view()).collect();
                let whole = cka_matrix_via(&cpu, &views[..2], &views[2..], est, Route::Feature);
                assert_same(on_gpu.result(), whole, tolerance(dtype), &format!("{what} vs whole"));
            }
        }
    }
}

fn device_pointer_inputs_are_used_in_place() {
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(14);
    for dtype in DTYPES {
        let (x, y) = pair(&mut rng, 1031, 65, 3);
        let z = Dense::random(&mut rng, 1031, 300);
        let host: Vec<Typed> = [&x, &y, &z].iter().map(|m| Typed::new(m, dtype, 5)).collect();
        let dev: Vec<DeviceMatrix> = host.iter().map(|t| DeviceMatrix::upload(&ctx, t)).collect();
        let hv: Vec<Matrix> = host.iter().map(|t| t.view()).collect();
        let dv: Vec<Matrix> = dev.iter().map(|t| t.view()).collect();
        let tol = tolerance(dtype);
        for est in ESTIMATORS {
            for route in [Route::Feature, Route::Sample] {
                let want = cka_matrix_via(&cpu, &hv[..1], &hv[1..], est, route);
                let got = cka_matrix_via(&ctx, &dv[..1], &dv[1..], est, route);
                assert_same(got, want, tol, &format!("device pointers {dtype:?} {est:?} {route:?}"));
            }
            let mut acc = CkaAccumulator::new(1, 2, est).unwrap();
            for (start, rows) in [(0, 1), (1, 600), (601, 430)] {
                let part: Vec<Matrix> = dv.iter().map(|m| m.row_range(start, rows).unwrap()).collect();
                acc.update(&ctx, &part[..1], &part[1..]).unwrap();
            }
            let want = cka_matrix_via(&cpu, &hv[..1], &hv[1..], est, Route::Feature);
            assert_same(acc.result(), want, tol, &format!("device-pointer accumulator {dtype:?} {est:?}"));
        }
        // Column means of device memory, with an exactly constant column.
        for (h, d) in hv.iter().zip(&dv) {
            let want = column_means(&cpu, h, "m").unwrap();
            let got = column_means(&ctx, d, "m").unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{dtype:?} column mean {g} vs {w}");
            }
        }
    }
    let mut c = Dense::random(&mut rng, 37, 4);
    for r in 0..37 {
        c.data[r * 4 + 2] = 0.1;
    }
    let t = Typed::new(&c, DType::F64, 0);
    let d = DeviceMatrix::upload(&ctx, &t);
    let means = column_means(&ctx, &d.view(), "c").unwrap();
    assert_eq!(means[2].to_bits(), 0.1f64.to_bits(), "a constant column's mean is its exact value");

    // Device memory is refused by a CPU context, and a wrong device ordinal is named.
    let e = cka_matrix(&cpu, &[d.view()], &[d.view()], Estimator::Biased).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let ptr = match &d.buf {
        OnDevice::F64(b) => b.device_ptr(),
        _ => unreachable!(),
    };
    // SAFETY: the buffer holds 37 x 4 f64 values; the view names device 7, which the call
    // refuses before reading.
    let wrong = unsafe { Matrix::from_device(ptr, DType::F64, 7, 37, 4, 4) }.unwrap();
    let e = cka_matrix(&ctx, &[wrong], &[d.view()], Estimator::Biased).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(ref m) if m.contains("x[0]") && m.contains("device 7")), "{e:?}");
}

fn constant_layers_and_nan_are_errors() {
    let ctx = cuda();
    let mut rng = TestRng::new(15);
    let (x, mut y) = pair(&mut rng, 37, 3, 4);
    let constant = Dense { rows: 37, cols: 3, data: vec![2.5; 37 * 3] };
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let (tc, ty) = (Typed::new(&constant, dtype, 0), Typed::new(&y, dtype, 0));
        for route in [Route::Feature, Route::Sample] {
            for est in ESTIMATORS {
                let e = cka_matrix_via(&ctx, &[tc.view()], &[ty.view()], est, route).unwrap_err();
                assert!(matches!(e, Error::DegenerateInput(ref m) if m.contains("x[0]")), "{dtype:?} {route:?}: {e:?}");
            }
        }
        let mut acc = CkaAccumulator::new(1, 1, Estimator::Biased).unwrap();
        acc.update(&ctx, &[tc.view()], &[ty.view()]).unwrap();
        let e = acc.result().unwrap_err();
        assert!(matches!(e, Error::DegenerateInput(_)), "{e:?}");
    }
    y.data[5 * 4 + 2] = f64::NAN;
    for dtype in DTYPES {
        let (tx, ty) = (Typed::new(&x, dtype, 0), Typed::new(&y, dtype, 2));
        let dy = DeviceMatrix::upload(&ctx, &ty);
        for yv in [ty.view(), dy.view()] {
            for route in [Route::Feature, Route::Sample] {
                let e = cka_matrix_via(&ctx, &[tx.view()], &[yv], Estimator::Biased, route).unwrap_err();
                assert!(
                    matches!(e, Error::NonFinite(ref m) if m.contains("y[0]") && m.contains("row 5, column 2")),
                    "{dtype:?} {route:?}: {e:?}"
                );
            }
            // In a later batch, after the first fixed the shift: row 3 of the batch.
            let mut acc = CkaAccumulator::new(1, 1, Estimator::Biased).unwrap();
            acc.update(&ctx, &[tx.view().row_range(0, 2).unwrap()], &[yv.row_range(0, 2).unwrap()]).unwrap();
            let e = acc.update(&ctx, &[tx.view().row_range(2, 30).unwrap()], &[yv.row_range(2, 30).unwrap()]);
            let e = e.unwrap_err();
            assert!(matches!(e, Error::NonFinite(ref m) if m.contains("y[0]") && m.contains("row 3")), "{e:?}");
        }
    }
}

/// `d` times `scale` stored as `dtype` (with `pad` after each row), and the stored values divided
/// by `scale` again in f64 (exactly: a power of two), where the f64 reference neither underflows
/// nor overflows: its CKA is the CKA of the stored values.
fn stored(d: &Dense, scale: f64, dtype: DType, pad: usize) -> (Typed, Dense) {
    let scaled = Dense { data: d.data.iter().map(|v| v * scale).collect(), ..d.clone() };
    let t = Typed::new(&scaled, dtype, pad);
    let exact = Dense { data: t.values().iter().map(|v| v / scale).collect(), ..d.clone() };
    (t, exact)
}

/// Every exponent of f32 (down to the subnormals), f16 and bf16: the data times 2^e, stored in the
/// type, gives on the device the CKA of the f64 reference on the same stored values, and the
/// CPU's, through `linear_cka` (as `tl_cka_linear`), both routes of the matrix and the
/// accumulator; from host memory, and from device memory for some exponents. Without the
/// per-layer power-of-two scale, f32 products of 1e-23 underflow (a biased CKA of hundreds) and
/// of 1e19 overflow (reported as too little variance).
fn every_exponent_of_f32_f16_and_bf16_matches_the_cpu_and_the_f64_answer() {
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(18);
    let (n, p, p2, q) = (41, 6, 5, 4);
    let x = Dense::random(&mut rng, n, p);
    let x2 = x.mix(&mut rng, p2, 1.0);
    let y = x.mix(&mut rng, q, 1.5);
    // |normal| < 8 = 2^3, so 2^(e + 3) stays below each type's largest value.
    for (dtype, exponents) in [(DType::F32, -146..=124), (DType::F16, -22..=12), (DType::BF16, -130..=124)] {
        for e in exponents {
            let scale = 2f64.powi(e);
            let (tx, ex) = stored(&x, scale, dtype, 1);
            let (tx2, ex2) = stored(&x2, scale, dtype, 0);
            let (ty, ey) = stored(&y, scale, dtype, 3);
            let on_device = e % 16 == 0;
            let dev: Vec<DeviceMatrix> = if on_device {
                [&tx, &tx2, &ty].iter().map(|t| DeviceMatrix::upload(&ctx, t)).collect()
            } else {
                vec![]
            };
            let mut inputs = vec![("host", vec![tx.view(), tx2.view(), ty.view()])];
            if on_device {
                inputs.push(("device", dev.iter().map(|d| d.view()).collect()));
            }
            let host = [tx.view(), tx2.view(), ty.view()];
            for est in ESTIMATORS {
                let debiased = est == Estimator::Debiased;
                let want = [reference_cka_feature(&ex, &ey, debiased), reference_cka_feature(&ex2, &ey, debiased)];
                assert!(want.iter().all(|w| w.is_finite() && w.abs() <= 1.0), "{dtype:?} 2^{e}: reference {want:?}");
                for (place, v) in &inputs {
                    let what = format!("{dtype:?} x 2^{e} {est:?} {place}");
                    let got = linear_cka(&ctx, &v[0], &v[2], est).unwrap_or_else(|err| panic!("linear {what}: {err}"));
                    let on_cpu = linear_cka(&cpu, &host[0], &host[2], est).unwrap();
                    assert_rel(got, want[0], 2e-5, &format!("linear CKA vs f64, {what}"));
                    assert_rel(got, on_cpu, 2e-5, &format!("linear CKA vs CPU, {what}"));
                    for route in [Route::Feature, Route::Sample] {
                        let got = cka_matrix_via(&ctx, &v[..2], &v[2..], est, route)
                            .unwrap_or_else(|err| panic!("{what} {route:?}: {err}"));
                        let on_cpu = cka_matrix_via(&cpu, &host[..2], &host[2..], est, route).unwrap();
                        for k in 0..2 {
                            assert_rel(got[k], want[k], 2e-5, &format!("matrix {route:?} [{k}] vs f64, {what}"));
                            assert_rel(got[k], on_cpu[k], 2e-5, &format!("matrix {route:?} [{k}] vs CPU, {what}"));
                        }
                    }
                    let mut acc = CkaAccumulator::new(2, 1, est).unwrap();
                    for (start, rows) in [(0, 17), (17, n - 17)] {
                        let part: Vec<Matrix> = v.iter().map(|m| m.row_range(start, rows).unwrap()).collect();
                        acc.update(&ctx, &part[..2], &part[2..])
                            .unwrap_or_else(|err| panic!("accumulator {what}: {err}"));
                    }
                    let got = acc.result().unwrap_or_else(|err| panic!("accumulator {what}: {err}"));
                    for k in 0..2 {
                        assert_rel(got[k], want[k], 2e-5, &format!("accumulator [{k}] vs f64, {what}"));
                    }
                }
            }
        }
    }
}

fn minibatch_cka_says_it_runs_on_the_cpu() {
    let ctx = cuda();
    let mut rng = TestRng::new(16);
    let (x, y) = pair(&mut rng, 16, 3, 4);
    let (tx, ty) = (Typed::new(&x, DType::F32, 0), Typed::new(&y, DType::F32, 0));
    let mut acc = MinibatchCka::new(1, 1).unwrap();
    let e = acc.update(&ctx, &[tx.view()], &[ty.view()]).unwrap_err();
    assert!(matches!(e, Error::DeviceUnavailable(ref m) if m.contains("CPU")), "{e:?}");
}

/// Needs the `bench` feature, which compiles the algorithms other than `syrk`.
#[cfg(feature = "bench")]
fn every_gram_algorithm_matches_cpu() {
    // TL_CUDA_GRAM picks how the feature route forms its Grams (syrk, one joint syrk of the pair,
    // recursive syrk from gemm blocks, full gemm); small bases make the recursion split these
    // widths several times, oddly. The variable is process-wide, so tests running meanwhile
    // may take any of these algorithms, all of which must agree with the CPU.
    let ctx = cuda();
    let cpu = Context::cpu();
    let mut rng = TestRng::new(13);
    for (n, p, q) in [(1031, 300, 65), (517, 200, 200), (64, 1, 97)] {
        let (x, y) = pair(&mut rng, n, p, q);
        for dtype in [DType::F32, DType::F64] {
            let (tx, ty) = (Typed::new(&x, dtype, 0), Typed::new(&y, dtype, 0));
            let (xs, ys) = ([tx.view()], [ty.view()]);
            for algo in ["syrk", "joint", "recursive:32", "recursive:64", "recursive", "gemm"] {
                std::env::set_var("TL_CUDA_GRAM", algo);
                for est in ESTIMATORS {
                    let want = cka_matrix_via(&cpu, &xs, &ys, est, Route::Feature);
                    let got = cka_matrix_via(&ctx, &xs, &ys, est, Route::Feature);
                    assert_same(got, want, tolerance(dtype), &format!("n {n} p {p} q {q} {dtype:?} {algo} {est:?}"));
                }
            }
            std::env::remove_var("TL_CUDA_GRAM");
        }
    }
}

#[cfg(not(feature = "bench"))]
gpu_test_main! {
    everywhere: [context_resolves_to_cuda_where_a_device_works],
    on_device: [both_routes_match_cpu_for_every_dtype_and_awkward_size, layer_matrix_matches_cpu, accumulator_over_uneven_batches_matches_cpu, device_pointer_inputs_are_used_in_place, constant_layers_and_nan_are_errors, every_exponent_of_f32_f16_and_bf16_matches_the_cpu_and_the_f64_answer, minibatch_cka_says_it_runs_on_the_cpu],
}

#[cfg(feature = "bench")]
gpu_test_main! {
    everywhere: [context_resolves_to_cuda_where_a_device_works],
    on_device: [both_routes_match_cpu_for_every_dtype_and_awkward_size, layer_matrix_matches_cpu, accumulator_over_uneven_batches_matches_cpu, device_pointer_inputs_are_used_in_place, constant_layers_and_nan_are_errors, every_exponent_of_f32_f16_and_bf16_matches_the_cpu_and_the_f64_answer, minibatch_cka_says_it_runs_on_the_cpu, every_gram_algorithm_matches_cpu],
}
