//! Where the arithmetic runs: the CPU backend, or CUDA when a driver and a device are present.
//!
//! A [`Context`] is made once and passed to every analysis. It resolves
//! [`BackendChoice::Auto`] to a concrete [`Backend`] at creation, so an analysis never guesses.
//! Analyses hold the math; backends offer the primitives (centering, Gram and cross products,
//! reductions) that the math is built from.

pub mod cpu;
pub mod cuda;

use crate::error::{fail, Result};
use std::sync::Arc;

/// The backend a caller asks for. The discriminants are the C ABI's `tl_backend` values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// CUDA when a driver and a device are present, else the CPU.
    Auto = 0,
    Cpu = 1,
    Cuda = 2,
}

impl BackendChoice {
    /// The choice for a C ABI value, or an error naming `what`.
    pub fn from_raw(raw: u32, what: &str) -> Result<Self> {
        Ok(match raw {
            0 => BackendChoice::Auto,
            1 => BackendChoice::Cpu,
            2 => BackendChoice::Cuda,
            _ => fail!(InvalidArgument, "{what}: unknown backend value {raw} (expected 0 = AUTO, 1 = CPU, 2 = CUDA)"),
        })
    }
}

/// A resolved backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu,
    Cuda,
}

/// Everything an analysis needs to know about where to run.
///
/// Thread safety: a `Context` is `Send + Sync`; the CPU backend serves concurrent calls from
/// several threads. A CUDA context's clones share its device and stream (calls from several
/// threads are queued there, the cuBLAS products one thread at a time); make one context per
/// thread for independent streams.
#[derive(Debug, Clone)]
pub struct Context {
    backend: Backend,
    device: i32,
    /// The device, its stream, kernels and cuBLAS handle, for the CUDA backend.
    cuda: Option<Arc<cuda::CudaDevice>>,
}

impl Context {
    /// A context on the CPU backend.
    pub fn cpu() -> Self {
        Context { backend: Backend::Cpu, device: -1, cuda: None }
    }

    /// A context for `choice`. `device` is the CUDA device ordinal (ignored for the CPU).
    /// `Auto` resolves to CUDA when a driver, the device, NVRTC and cuBLAS are usable (the
    /// kernels compile and load), else to the CPU; CUDA asked for explicitly without them is
    /// [`crate::Error::DeviceUnavailable`] (or [`crate::Error::Device`]), saying what is missing.
    pub fn new(choice: BackendChoice, device: i32) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Self::cpu()),
            BackendChoice::Cuda => {
                if device < 0 {
                    fail!(InvalidArgument, "device: CUDA device ordinal must be >= 0, got {device}");
                }
                let dev = cuda::open_device(device)?;
                Ok(Context { backend: Backend::Cuda, device, cuda: Some(dev) })
            }
            BackendChoice::Auto => match cuda::open_device(device.max(0)) {
                Ok(dev) => Ok(Context { backend: Backend::Cuda, device: device.max(0), cuda: Some(dev) }),
                Err(_) => Ok(Self::cpu()),
            },
        }
    }

    /// The resolved backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The CUDA device ordinal, or -1 on the CPU.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// The CUDA device of a CUDA context (shared by its clones); `None` on the CPU.
    pub fn cuda_device(&self) -> Option<&Arc<cuda::CudaDevice>> {
        self.cuda.as_ref()
    }
}

/// The moments of one batch of every layer, relative to per-feature shifts: what a CKA
/// accumulator adds to its f64 state. Products are formed in the backend's arithmetic (f32 for
/// f32, f16 and bf16 data, f64 for f64 data) and handed over in f64.
///
/// With `z` a shifted row of layer `u` (x layers first, then y layers) and `a = |z|^2`:
#[derive(Debug, Clone, Default)]
pub struct CkaBatchMoments {
    /// Rows in the batch.
    pub rows: usize,
    /// `sum z_x w_y^T` for all x features against all y features: column-major
    /// `(sum of x widths) x (sum of y widths)`.
    pub cross: Vec<f64>,
    /// Per layer, `sum z z^T`: column-major `p x p`; only the lower triangle (diagonal included)
    /// is meaningful.
    pub grams_lower: Vec<Vec<f64>>,
    /// Per layer `v`: column-major `p_v x (layers + 1)`; column `u` is `sum a_u w_v`, the last
    /// column `sum w_v`.
    pub third: Vec<Vec<f64>>,
    /// Per layer, the squared norm `a` of each shifted row (`rows` values).
    pub norms: Vec<Vec<f64>>,
}

impl CkaBatchMoments {
    /// Offset of each layer's first feature within the x block or the y block.
    pub fn offsets(&self, widths: &[usize], nx: usize) -> Vec<usize> {
        (0..widths.len()).map(|u| if u < nx { widths[..u].iter().sum() } else { widths[nx..u].iter().sum() }).collect()
    }
}

/// The sample-space terms of CKA: each layer's centered `n x n` Gram `K_u` is formed once.
#[derive(Debug, Clone, Default)]
pub struct CkaGramTerms {
    /// `<K_u, K_v>_F` for each requested pair `(u, v)`.
    pub inner: Vec<f64>,
    /// Per layer, the squared norms of the centered rows (the diagonal of `K_u`), in f64.
    pub norms: Vec<Vec<f64>>,
}

/// Column means of a matrix for centering (a constant column gets its exact value), on the
/// context's backend; NaN or Inf is an error naming `name` and the position.
pub fn column_means(ctx: &Context, m: &crate::Matrix, name: &str) -> Result<Vec<f64>> {
    match ctx.backend() {
        Backend::Cpu => cpu::column_means(m, name),
        Backend::Cuda => cuda::column_means(ctx, m, name),
    }
}

/// One dense layer's parameters as stored: the weight (`out x in`, row major) and the bias.
#[derive(Debug, Clone, Copy)]
pub struct DenseLayer<'a> {
    pub weight: crate::tensor::HostSlice<'a>,
    pub bias: crate::tensor::HostSlice<'a>,
}

/// Gaussian noise on one dense layer of the built-in MLP, drawn `draws` times: the noisy copies
/// that module criticality evaluates at each point of its search. Draw k adds `std * z` to the
/// layer's weight (row major, `out x in`) and bias, z the Philox normals of [`crate::rng`] for
/// `(seed, stream0 + k)` at indices `weight_index0 + e` and `bias_index0 + e` (element e), and
/// rounds each noisy value once to the tensor's storage dtype, as writing it into the set would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNoise {
    /// The layer (0 = the first).
    pub layer: usize,
    /// The per-element standard deviation.
    pub std: f64,
    pub seed: u64,
    /// The stream of draw 0; draw k uses `stream0 + k`.
    pub stream0: u64,
    pub draws: usize,
    pub weight_index0: u64,
    pub bias_index0: u64,
}

impl LayerNoise {
    /// Checks the scale and that the streams and indices of every draw fit in 64 bits.
    pub fn check(&self, weight_len: usize, bias_len: usize) -> Result<()> {
        if !(self.std.is_finite() && self.std >= 0.0) {
            fail!(InvalidArgument, "the noise std must be finite and >= 0, got {}", self.std);
        }
        if self.draws == 0 {
            fail!(InvalidArgument, "at least one noise draw is needed");
        }
        let fits = |a: u64, n: usize| a.checked_add(n as u64).is_some();
        if !fits(self.stream0, self.draws) || !fits(self.weight_index0, weight_len) || !fits(self.bias_index0, bias_len)
        {
            fail!(InvalidArgument, "noise streams or indices overflow 64 bits: {self:?}");
        }
        Ok(())
    }
}
