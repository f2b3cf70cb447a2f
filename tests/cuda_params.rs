//! Weight-space analyses on parameter sets wrapped over CUDA device memory (as a PyTorch or
//! libtorch caller hands them over), against the same sets on the host with the CPU backend:
//! distance, norms, interpolation and extrapolation, rewind of one module, in every dtype; and
//! the refusals (compare, a context on another backend); a result that is not finite is the
//! host's NonFinite error. Interpolation and rewind give the CPU's bits exactly.
//!
//! Where no driver or device works the tests that need one are reported as ignored (the
//! closing line counts them), unless the environment sets `TL_REQUIRE_CUDA=1`: then they run and
//! fail. The harness is `common::run_gpu_tests` (`harness = false` in Cargo.toml).
mod common;
use half::{bf16, f16};
use transferlens::backend::cuda::{CudaDevice, DeviceBuffer};
use transferlens::params::TensorSpec;
use transferlens::tensor::HostSlice;
use transferlens::{geometry, Context, DType, Error, ParamSet};

use common::cuda_context as cuda;

/// A host set's tensors copied to the device, and the set wrapped over them.
struct OnDevice {
    buffers: Vec<Buffer>,
    set: ParamSet,
}

enum Buffer {
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
    F16(DeviceBuffer<f16>),
    BF16(DeviceBuffer<bf16>),
}

impl Buffer {
    fn ptr(&self) -> u64 {
        match self {
            Buffer::F32(b) => b.device_ptr(),
            Buffer::F64(b) => b.device_ptr(),
            Buffer::F16(b) => b.device_ptr(),
            Buffer::BF16(b) => b.device_ptr(),
        }
    }
    /// The values, widened to f64.
    fn values(&self, dev: &CudaDevice) -> Vec<f64> {
        match self {
            Buffer::F32(b) => dev.download(b).unwrap().iter().map(|&v| v as f64).collect(),
            Buffer::F64(b) => dev.download(b).unwrap(),
            Buffer::F16(b) => dev.download(b).unwrap().iter().map(|v| v.to_f64()).collect(),
            Buffer::BF16(b) => dev.download(b).unwrap().iter().map(|v| v.to_f64()).collect(),
        }
    }
}

fn to_device(dev: &CudaDevice, host: &ParamSet) -> OnDevice {
    let mut buffers = Vec::new();
    let mut specs = Vec::new();
    for t in host.tensors() {
        let (b, dtype) = match t.host().unwrap() {
            HostSlice::F32(v) => (Buffer::F32(dev.upload(v).unwrap()), DType::F32),
            HostSlice::F64(v) => (Buffer::F64(dev.upload(v).unwrap()), DType::F64),
            HostSlice::F16(v) => (Buffer::F16(dev.upload(v).unwrap()), DType::F16),
            HostSlice::BF16(v) => (Buffer::BF16(dev.upload(v).unwrap()), DType::BF16),
        };
        specs.push(TensorSpec {
            name: t.name().to_string(),
            dtype,
            shape: t.shape().to_vec(),
            ptr: b.ptr() as *mut u8,
            device: dev.ordinal() as i32,
        });
        buffers.push(b);
    }
    // SAFETY: each buffer holds its tensor's elements on the device and outlives the set.
    let set = unsafe { ParamSet::wrap(specs) }.unwrap();
    OnDevice { buffers, set }
}

fn host_values(t: &transferlens::params::Tensor) -> Vec<f64> {
    match t.host().unwrap() {
        HostSlice::F32(v) => v.iter().map(|&x| x as f64).collect(),
        HostSlice::F64(v) => v.to_vec(),
        HostSlice::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        HostSlice::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
    }
}

fn weight_space_on_device_memory_matches_the_cpu() {
    let ctx = cuda();
    let dev = ctx.cuda_device().unwrap().clone();
    let cpu = Context::cpu();
    let (_, a32, _) = common::mlp_fixture(&[37, 129, 65, 10], 1, 1);
    let (_, b32, _) = common::mlp_fixture(&[37, 129, 65, 10], 1, 2);
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let (a, b) = (common::set_as(&a32, dtype), common::set_as(&b32, dtype));
        let (da, db) = (to_device(&dev, &a), to_device(&dev, &b));
        let close = |g: f64, w: f64, what: &str| {
            assert!((g - w).abs() <= 1e-12 * w.abs(), "{dtype:?} {what}: {g} vs CPU {w}");
        };
        let (g, w) = (geometry::distance(&ctx, &da.set, &db.set).unwrap(), geometry::distance(&cpu, &a, &b).unwrap());
        close(g.total, w.total, "distance");
        for (m, (g, w)) in g.modules.iter().zip(&w.modules).enumerate() {
            close(*g, *w, &format!("distance of module {m}"));
        }
        let (g, w) = (geometry::norms(&ctx, &da.set).unwrap(), geometry::norms(&cpu, &a).unwrap());
        close(g.total, w.total, "norm");
        assert_eq!(g.modules.len(), w.modules.len());

        let scratch = common::set_as(&a32, dtype);
        let mut out = to_device(&dev, &scratch);
        for lambda in [0.0, 1.0, 0.3, -0.5, 2.0] {
            for module in [None, Some(1)] {
                let mut want = common::set_as(&a32, dtype);
                match module {
                    None => {
                        geometry::interpolate(&cpu, &a, &b, lambda, &mut want).unwrap();
                        geometry::interpolate(&ctx, &da.set, &db.set, lambda, &mut out.set).unwrap();
                    }
                    Some(m) => {
                        geometry::rewind(&cpu, &a, &b, m, lambda, &mut want).unwrap();
                        geometry::rewind(&ctx, &da.set, &db.set, m, lambda, &mut out.set).unwrap();
                    }
                }
                for (i, t) in want.tensors().iter().enumerate() {
                    let w = host_values(t);
                    let g = out.buffers[i].values(&dev);
                    // Both backends compute fma(l, b, (1 - l) a) in the same type and round it
                    // once: the same bits.
                    for (k, (g, w)) in g.iter().zip(&w).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{dtype:?} lambda {lambda} module {module:?} {} [{k}]: {g} vs CPU {w}",
                            t.name()
                        );
                    }
                }
            }
        }
        let e = geometry::compare(&ctx, &da.set, &db.set).unwrap_err();
        assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
        let e = geometry::distance(&cpu, &da.set, &db.set).unwrap_err();
        assert!(matches!(e, Error::DeviceUnavailable(_)), "{e:?}");
    }
}

/// The device and the host give the same result, bit for bit, or the same error message.
fn assert_same_outcome(
    got: Result<(), Error>,
    want: Result<(), Error>,
    out: &OnDevice,
    dev: &CudaDevice,
    want_set: &ParamSet,
    what: &str,
) {
    match (got, want) {
        (Ok(()), Ok(())) => {
            for (i, t) in want_set.tensors().iter().enumerate() {
                let (g, w) = (out.buffers[i].values(dev), host_values(t));
                assert!(g.iter().zip(&w).all(|(g, w)| g.to_bits() == w.to_bits()), "{what} {}", t.name());
            }
        }
        (Err(Error::NonFinite(g)), Err(Error::NonFinite(w))) => assert_eq!(g, w, "{what}"),
        (g, w) => panic!("{what}: device {g:?}, host {w:?}"),
    }
}

/// An interpolation whose result holds a NaN or an Inf is NonFinite on device sets as on the host,
/// naming the same tensor: lambda 1e39 (infinite in f32 arithmetic) for f32, f16 and bf16, an
/// overflow of the stored type, a NaN in an input (also when lambda 1 or a rewind copies it);
/// and f64 results that are finite although their squares overflow f64 (lambda 1e300) are fine,
/// as on the host.
fn non_finite_interpolation_is_an_error_as_on_the_host() {
    let ctx = cuda();
    let dev = ctx.cuda_device().unwrap().clone();
    let cpu = Context::cpu();
    let sizes = [7, 5, 3];
    let (_, a32, _) = common::mlp_fixture(&sizes, 1, 1);
    let (_, b32, _) = common::mlp_fixture(&sizes, 1, 2);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = b32
        .tensors()
        .iter()
        .map(|t| {
            let HostSlice::F32(v) = t.host().unwrap() else { panic!("the fixture is f32") };
            (t.name().to_string(), t.shape().to_vec(), v.to_vec())
        })
        .collect();
    tensors[2].2[1] = f32::NAN;
    let b32_nan = transferlens::model::f32_set(&tensors).unwrap();
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let a = common::set_as(&a32, dtype);
        let da = to_device(&dev, &a);
        let mut out = to_device(&dev, &common::set_as(&a32, dtype));
        let mut want = common::set_as(&a32, dtype);
        // The case: lambda 1e39 writes no all-NaN result with status OK.
        let b = common::set_as(&b32, dtype);
        let db = to_device(&dev, &b);
        let e = geometry::interpolate(&ctx, &da.set, &db.set, 1e39, &mut out.set);
        if dtype == DType::F64 {
            assert!(e.is_ok(), "{dtype:?}: 1e39 (b - a) fits f64: {e:?}");
        } else {
            assert!(
                matches!(e, Err(Error::NonFinite(ref m)) if m.contains("is not finite at lambda")),
                "{dtype:?}: {e:?}"
            );
        }
        for (bname, b) in [("b", b), ("b with a NaN", common::set_as(&b32_nan, dtype))] {
            let db = to_device(&dev, &b);
            for lambda in [0.0, 1.0, 0.5, 1e39, -1e39, 1e30, 1e300, 1e308] {
                let what = format!("{dtype:?} {bname} lambda {lambda:e}");
                let got = geometry::interpolate(&ctx, &da.set, &db.set, lambda, &mut out.set);
                let host = geometry::interpolate(&cpu, &a, &b, lambda, &mut want);
                assert_same_outcome(got, host, &out, &dev, &want, &what);
            }
            for module in 0..a.modules().len() {
                let what = format!("{dtype:?} {bname} rewind module {module}");
                let got = geometry::rewind(&ctx, &da.set, &db.set, module, 0.5, &mut out.set);
                let host = geometry::rewind(&cpu, &a, &b, module, 0.5, &mut want);
                assert_same_outcome(got, host, &out, &dev, &want, &what);
            }
        }
        if dtype == DType::F64 {
            let b = common::set_as(&b32, dtype);
            let db = to_device(&dev, &b);
            let e = geometry::interpolate(&ctx, &da.set, &db.set, 1e300, &mut out.set);
            assert!(e.is_ok(), "f64 results near 1e300 are finite although their squares are not: {e:?}");
        }
    }
}

gpu_test_main! {
    everywhere: [],
    on_device: [weight_space_on_device_memory_matches_the_cpu, non_finite_interpolation_is_an_error_as_on_the_host],
}
