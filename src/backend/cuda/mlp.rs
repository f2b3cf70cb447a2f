//! CUDA host code of `kernels/mlp.cu`; CPU twin in `backend/cpu/mlp.rs` (whose module doc says
//! where the two round alike and where not). The built-in MLP's batched perturbed evaluation on
//! the device: the metrics of K noisy copies of one layer ([`LayerNoise`]) in one schedule,
//! with the semantics of the CPU version (`Mlp::evaluate_layer_noise`):
//!
//! 1. the K noisy copies of the layer's weight and bias (`noisy_copies_<dtype>`: Philox noise,
//!    rounded once to the storage dtype, widened to f32), stacked;
//! 2. per chunk of rows: the layers below the noisy one, computed once for all copies (one SGEMM
//!    each, then `bias_act_f32`); the noisy layer as one SGEMM of the stacked `(K out) x in`
//!    weights, whose output, read as `out x (rows K)`, is the K copies' activations side by side;
//!    each layer above as one SGEMM on those `rows K` columns; `softmax_xent_f32` reduces the loss
//!    and the 0-1 error per copy.
//!
//! Products are cuBLAS SGEMMs in full f32 (no TF32), as the CPU's are f32; losses are summed in
//! f64. Work: `2 rows (sum_{j < l} in_j out_j + K sum_{j >= l} in_j out_j)` FLOPs, against
//! `2 rows K sum_j in_j out_j` for K separate forward passes.

use super::blas::{Gemm, Handle, OP_N, OP_T};
use super::device::{addr, addr_mut, describe, device_err, AnyBuffer, CudaDevice, DeviceBuffer, BLOCK};
use crate::backend::{DenseLayer, LayerNoise};
use crate::error::{fail, Error, Result};
use crate::tensor::DType;
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Copies evaluated together: the stacked activations grow with K, and `softmax_xent_f32` puts
/// one grid row per copy.
pub(super) const MAX_COPIES: usize = 256;
/// Device memory for the stacked activations of one chunk of rows (two buffers together).
const STACK_BYTES: usize = 1 << 30;
/// Blocks per copy of the loss reduction.
pub(super) const LOSS_BLOCKS: usize = 64;

/// The evaluation set on the device: inputs (row-major `rows x dim` f32, i.e. column-major
/// `dim x rows`) and labels.
pub struct DeviceDataset {
    pub(super) x: DeviceBuffer<f32>,
    pub(super) labels: CudaSlice<u32>,
    pub(super) rows: usize,
    pub(super) dim: usize,
    pub(super) classes: usize,
    pub(super) ordinal: usize,
}

impl DeviceDataset {
    /// Copies `rows = labels.len()` rows of `dim` features and their labels (each below
    /// `classes`) to `dev`.
    pub fn upload(dev: &CudaDevice, x: &[f32], labels: &[u32], dim: usize, classes: usize) -> Result<DeviceDataset> {
        let rows = labels.len();
        if rows == 0 || dim == 0 || x.len() != rows * dim {
            fail!(ShapeMismatch, "data set: {} features for {rows} labels of dim {dim}", x.len());
        }
        if let Some(i) = labels.iter().position(|&c| c as usize >= classes) {
            fail!(InvalidArgument, "data set: label {} of row {i} is not below classes = {classes}", labels[i]);
        }
        dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
        let labels = dev.stream().clone_htod(labels).map_err(device_err("cuMemcpyHtoDAsync(labels)"))?;
        Ok(DeviceDataset { x: dev.upload(x)?, labels, rows, dim, classes, ordinal: dev.ordinal() })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The CUDA device ordinal the data live on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

/// An MLP's parameters on the device, ready for noise on one layer: f32 copies of the other
/// layers for the products, and the noisy layer in its storage dtypes (the noise is rounded to
/// them).
pub struct DeviceMlp {
    sizes: Vec<usize>,
    /// f32 weight and bias per layer; `None` for the noisy layer.
    dense: Vec<Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>>,
    noisy: usize,
    noisy_weight: AnyBuffer,
    noisy_bias: AnyBuffer,
    ordinal: usize,
}

impl DeviceMlp {
    /// Uploads the layers of an MLP with widths `sizes` (inputs, hidden..., classes) for noise
    /// on layer `noisy`.
    pub fn upload(dev: &CudaDevice, sizes: &[usize], layers: &[DenseLayer<'_>], noisy: usize) -> Result<DeviceMlp> {
        if sizes.len() < 2 || layers.len() != sizes.len() - 1 || noisy >= layers.len() {
            fail!(
                InvalidArgument,
                "an MLP of widths {sizes:?} with {} layers and noise on layer {noisy}",
                layers.len()
            );
        }
        for (j, layer) in layers.iter().enumerate() {
            let (fi, fo) = (sizes[j], sizes[j + 1]);
            if layer.weight.len() != fi * fo || layer.bias.len() != fo {
                fail!(
                    ShapeMismatch,
                    "layer {j}: weight of {} and bias of {} values, expected {fo} x {fi} and {fo}",
                    layer.weight.len(),
                    layer.bias.len()
                );
            }
        }
        dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
        let mut dense = Vec::with_capacity(layers.len());
        for (j, layer) in layers.iter().enumerate() {
            dense.push(if j == noisy {
                None
            } else {
                Some((dev.upload(&layer.weight.to_f32())?, dev.upload(&layer.bias.to_f32())?))
            });
        }
        Ok(DeviceMlp {
            sizes: sizes.to_vec(),
            dense,
            noisy,
            noisy_weight: AnyBuffer::upload(dev, layers[noisy].weight)?,
            noisy_bias: AnyBuffer::upload(dev, layers[noisy].bias)?,
            ordinal: dev.ordinal(),
        })
    }

    /// (mean loss, 0-1 error) of each noisy copy on `data`, in draw order.
    pub fn evaluate_layer_noise(
        &self,
        dev: &CudaDevice,
        data: &DeviceDataset,
        noise: &LayerNoise,
    ) -> Result<Vec<(f64, f64)>> {
        if noise.layer != self.noisy {
            fail!(
                InvalidArgument,
                "noise on layer {}, but the model was uploaded for layer {}",
                noise.layer,
                self.noisy
            );
        }
        if dev.ordinal() != self.ordinal || data.ordinal != self.ordinal {
            fail!(
                InvalidArgument,
                "the model is on CUDA device {}, the data on {}, the call on {}",
                self.ordinal,
                data.ordinal,
                dev.ordinal()
            );
        }
        let classes = *self.sizes.last().unwrap_or(&0);
        if data.dim != self.sizes[0] || data.classes != classes {
            fail!(
                ShapeMismatch,
                "the data set has {} features and {} classes, the MLP {} inputs and {classes} classes",
                data.dim,
                data.classes,
                self.sizes[0]
            );
        }
        noise.check(self.noisy_weight.len(), self.noisy_bias.len())?;
        dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
        let mut out = Vec::with_capacity(noise.draws);
        let mut k0 = 0;
        while k0 < noise.draws {
            let g = (noise.draws - k0).min(MAX_COPIES);
            let group = LayerNoise { stream0: noise.stream0 + k0 as u64, draws: g, ..*noise };
            out.extend(self.evaluate_group(dev, data, &group)?);
            k0 += g;
        }
        Ok(out)
    }

    /// (mean loss, 0-1 error) of the model as uploaded: one copy of the noisy layer with zero
    /// noise (`theta + 0 z` is `theta` exactly, the normals being finite), i.e. the plain
    /// forward pass; the copy costs one pass over that layer's weights.
    pub fn evaluate(&self, dev: &CudaDevice, data: &DeviceDataset) -> Result<(f64, f64)> {
        let plain =
            LayerNoise { layer: self.noisy, std: 0.0, seed: 0, stream0: 0, draws: 1, weight_index0: 0, bias_index0: 0 };
        Ok(self.evaluate_layer_noise(dev, data, &plain)?[0])
    }

    /// At most `MAX_COPIES` draws.
    fn evaluate_group(&self, dev: &CudaDevice, data: &DeviceDataset, noise: &LayerNoise) -> Result<Vec<(f64, f64)>> {
        let g = noise.draws;
        let layers = self.sizes.len() - 1;
        let l = self.noisy;
        let (fi, fo) = (self.sizes[l], self.sizes[l + 1]);
        let classes = self.sizes[layers];
        let widest = *self.sizes[1..].iter().max().unwrap_or(&1);

        let mut weights = alloc_f32(dev, g * fo * fi, "noisy weights")?;
        let mut biases = alloc_f32(dev, g * fo, "noisy biases")?;
        noisy_copies(dev, &self.noisy_weight, &mut weights, noise, noise.weight_index0)?;
        noisy_copies(dev, &self.noisy_bias, &mut biases, noise, noise.bias_index0)?;

        // Rows per chunk: the two stacked buffers of g x chunk x widest f32 within STACK_BYTES.
        let chunk = (STACK_BYTES / (2 * 4 * g * widest)).clamp(1, data.rows);
        let below_len = if l > 0 { chunk * widest } else { 1 };
        let mut below = [alloc_f32(dev, below_len, "activations")?, alloc_f32(dev, below_len, "activations")?];
        let mut stacked =
            [alloc_f32(dev, g * chunk * widest, "activations")?, alloc_f32(dev, g * chunk * widest, "activations")?];
        let blocks = chunk.div_ceil(BLOCK as usize).min(LOSS_BLOCKS);
        let mut part_loss = alloc_f64(dev, g * blocks, "loss partials")?;
        let mut part_wrong = alloc_f64(dev, g * blocks, "error partials")?;
        let (mut loss, mut wrong) = (vec![0f64; g], vec![0f64; g]);

        let blas = dev.blas()?;
        let h = *blas.handle();
        for start in (0..data.rows).step_by(chunk) {
            let m = chunk.min(data.rows - start);
            // The layers below: once for all copies.
            let mut input = data.x.device_ptr() + 4 * (start * data.dim) as u64;
            for j in 0..l {
                let out = addr_mut(dev, &mut below[j % 2]);
                self.dense(dev, h, j, input, m, out)?;
                input = out;
            }
            // The noisy layer: the K copies' weights stacked as one (K out) x in matrix.
            let first = addr_mut(dev, &mut stacked[0]);
            // SAFETY: the stacked weights hold (g fo) x fi values, the input fi x m, the first
            // stacked buffer at least (g fo) x m.
            unsafe { dense_product(h, g * fo, m, fi, addr(dev, &weights), input, first) }?;
            bias_act(dev, first, addr(dev, &biases), g * fo, m, l + 1 < layers)?;
            // The layers above, on the stacked m x K columns.
            let mut cur = 0;
            for j in l + 1..layers {
                let input = addr(dev, &stacked[cur]);
                let out = addr_mut(dev, &mut stacked[1 - cur]);
                self.dense(dev, h, j, input, m * g, out)?;
                cur = 1 - cur;
            }
            let used = m.div_ceil(BLOCK as usize).min(LOSS_BLOCKS);
            let labels = addr(dev, &data.labels) + 4 * start as u64;
            softmax_xent(dev, addr(dev, &stacked[cur]), labels, m, classes, g, used, &mut part_loss, &mut part_wrong)?;
            let pl = download_f64(dev, &part_loss, g * used, "loss partials")?;
            let pw = download_f64(dev, &part_wrong, g * used, "error partials")?;
            for k in 0..g {
                loss[k] += pl[k * used..(k + 1) * used].iter().sum::<f64>();
                wrong[k] += pw[k * used..(k + 1) * used].iter().sum::<f64>();
            }
        }
        drop(blas);
        let n = data.rows as f64;
        if let Some(k) = loss.iter().position(|l| !l.is_finite()) {
            fail!(
                NonFinite,
                "noise draw {}: the loss is not finite: the weights hold NaN or Inf, or the logits overflow",
                noise.stream0 + k as u64
            );
        }
        Ok(loss.iter().zip(&wrong).map(|(l, w)| (l / n, w / n)).collect())
    }

    /// Layer `j` (not the noisy one) on `cols` columns at `input`, into `out`.
    fn dense(&self, dev: &CudaDevice, h: Handle, j: usize, input: u64, cols: usize, out: u64) -> Result<()> {
        let (fi, fo) = (self.sizes[j], self.sizes[j + 1]);
        let Some((w, b)) = &self.dense[j] else {
            fail!(Panic, "layer {j} is the noisy layer and has no dense copy");
        };
        // SAFETY: w holds fo x fi values; the caller passes an input of fi x cols values and an
        // output of fo x cols.
        unsafe { dense_product(h, fo, cols, fi, w.device_ptr(), input, out) }?;
        bias_act(dev, out, b.device_ptr(), fo, cols, j + 2 < self.sizes.len())
    }
}

/// `out (rows x cols) = W (rows x inner, row major) input (inner x cols)`, all column-major to
/// cuBLAS: the row-major W is its column-major transpose.
///
/// # Safety
/// `w` holds rows x inner, `input` inner x cols and `out` rows x cols f32 values on the
/// handle's device, `out` apart from the other two.
pub(super) unsafe fn dense_product(
    h: Handle,
    rows: usize,
    cols: usize,
    inner: usize,
    w: u64,
    input: u64,
    out: u64,
) -> Result<()> {
    let product = Gemm {
        ta: OP_T,
        tb: OP_N,
        m: rows,
        n: cols,
        k: inner,
        a: w,
        lda: inner,
        b: input,
        ldb: inner,
        c: out,
        ldc: rows,
    };
    // SAFETY: the caller's contract; the leading dimensions are those of contiguous matrices.
    unsafe { product.run::<f32>(h, "dense layer") }
}

/// `z = act(z + bias)` per row of the column-major `rows x cols` z (`bias_act_f32`).
pub(super) fn bias_act(dev: &CudaDevice, z: u64, bias: u64, rows: usize, cols: usize, relu: bool) -> Result<()> {
    let name = "bias_act_f32";
    let (rows, cols, relu) = (rows as u64, cols as u64, relu as u32);
    let cfg = dev.grid_1d_for(dev.function(name)?, rows * cols / 4);
    // SAFETY: bias_act_f32(float* z, const float* bias, tl_u64 rows, tl_u64 cols, tl_u32 relu);
    // z holds rows x cols values and bias rows (the callers' buffers).
    unsafe { dev.launch(name, cfg, (z, bias, rows, cols, relu)) }
}

/// `out[k n + e]` = element e of `theta` plus noise of draw k, rounded to theta's dtype, as f32.
pub(super) fn noisy_copies(
    dev: &CudaDevice,
    theta: &AnyBuffer,
    out: &mut CudaSlice<f32>,
    noise: &LayerNoise,
    index0: u64,
) -> Result<()> {
    let n = theta.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("noisy_copies_{}", theta.dtype().name());
    let count = ((index0 + n - 1) >> 2) - (index0 >> 2) + 1;
    let copies = noise.draws as u32;
    // Enough blocks in all to fill the device, spread over the copies (grid y).
    let per_copy = dev.grid_1d_for(dev.function(&name)?, count).grid_dim.0.div_ceil(copies).max(1);
    let cfg = LaunchConfig { grid_dim: (per_copy, copies, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let (po, pt) = (addr_mut(dev, out), theta.device_ptr());
    let (seed, stream0) = (noise.seed, noise.stream0);
    // SAFETY: noisy_copies_<t>(float* out, const T* theta, tl_u64 n, acc sigma, tl_u64 seed,
    // tl_u64 stream0, tl_u64 index0, tl_u32 copies), acc = double for f64 data, else float;
    // out holds copies x n values, theta n.
    unsafe {
        if theta.dtype() == DType::F64 {
            dev.launch(&name, cfg, (po, pt, n, noise.std, seed, stream0, index0, copies))
        } else {
            dev.launch(&name, cfg, (po, pt, n, noise.std as f32, seed, stream0, index0, copies))
        }
    }
}

/// Per-copy partial sums of the loss and the 0-1 error of `rows` rows (`softmax_xent_f32`).
#[allow(clippy::too_many_arguments)]
pub(super) fn softmax_xent(
    dev: &CudaDevice,
    logits: u64,
    labels: u64,
    rows: usize,
    classes: usize,
    copies: usize,
    blocks: usize,
    part_loss: &mut CudaSlice<f64>,
    part_wrong: &mut CudaSlice<f64>,
) -> Result<()> {
    let (rows, classes, sets) = (rows as u64, classes as u32, copies as u32);
    let cfg = LaunchConfig { grid_dim: (blocks as u32, sets, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let (pl, pw) = (addr_mut(dev, part_loss), addr_mut(dev, part_wrong));
    // SAFETY: softmax_xent_f32(const float* logits, const tl_u32* labels, tl_u64 rows,
    // tl_u32 classes, tl_u32 sets, double* partial_loss, double* partial_wrong); logits hold
    // classes x rows x sets values, labels rows (each < classes), the partials sets x blocks.
    unsafe { dev.launch("softmax_xent_f32", cfg, (logits, labels, rows, classes, sets, pl, pw)) }
}

pub(super) fn alloc_f32(dev: &CudaDevice, n: usize, what: &str) -> Result<CudaSlice<f32>> {
    // SAFETY: uninitialised memory; every buffer here is written (a GEMM with beta = 0, or a
    // kernel) before it is read.
    unsafe { dev.stream().alloc::<f32>(n.max(1)) }
        .map_err(|e| Error::Device(describe(&format!("cuMemAlloc({what})"), &e)))
}

pub(super) fn alloc_f64(dev: &CudaDevice, n: usize, what: &str) -> Result<CudaSlice<f64>> {
    // SAFETY: as alloc_f32: softmax_xent writes every partial it is asked for.
    unsafe { dev.stream().alloc::<f64>(n.max(1)) }
        .map_err(|e| Error::Device(describe(&format!("cuMemAlloc({what})"), &e)))
}

pub(super) fn download_f64(dev: &CudaDevice, s: &CudaSlice<f64>, len: usize, what: &str) -> Result<Vec<f64>> {
    let v = super::device::download(dev, s, len, what)?;
    dev.synchronize()?;
    Ok(v)
}
