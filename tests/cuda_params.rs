//! Weight-space analyses on parameter sets wrapped over CUDA device memory (as a PyTorch or
//! libtorch caller hands them over), against the same sets on the host with the CPU backend:
//! distance, norms, interpolation and extrapolation, rewind of one module, in every dtype; and
//! the refusals (compare, a context on another backend). Interpolation and rewind give the CPU's
//! bits exactly.
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

gpu_test_main! {
    everywhere: [],
    on_device: [weight_space_on_device_memory_matches_the_cpu],
}
