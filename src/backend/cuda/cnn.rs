//! CUDA host code of `kernels/cnn.cu`; CPU twin in `backend/cpu/cnn.rs` (whose module doc says
//! where the two round alike and where not). The built-in CNN's evaluation on the device, plain
//! and for the K noisy copies of one module ([`crate::eval::ModuleNoise`]), with the semantics of
//! `Cnn::evaluate` and `Cnn::evaluate_module_noise`:
//!
//! 1. the K noisy copies of the module's tensors (the MLP's `noisy_copies_<dtype>`: Philox noise
//!    at the element's offset within the module, stream `module << 32 | k`, rounded once to the
//!    storage dtype, widened to f32), stacked copy after copy; the other tensors of a layer that
//!    reads a noisy one are repeated K times (`repeat_images_f32`), so that every parameter of
//!    such a layer is a stack of K;
//! 2. per chunk of rows: the layers below the module once for all copies, on N images; the
//!    module's first conv (or dense) layer as one strided-batched SGEMM of the K stacked filter
//!    banks, whose output is the K copies' activations as N K images (image i K + k is image i
//!    under copy k); every layer above on those N K images, a layer with K stacked parameters
//!    read as one layer of K times the channels on N images; `softmax_xent_f32` (the MLP's)
//!    reduces the loss and the 0-1 error per copy.
//!
//! Activations are NCHW. A conv is im2col (skipped for a 1 x 1, stride 1, unpadded conv) then one
//! strided-batched SGEMM over the images, `out_b (out_c x pixels) = W cols_b`; its bias and a
//! following ReLU are one pass (`channel_bias_relu_f32`); a GroupNorm is fused with a following
//! ReLU and, in a block, with the residual add and the block's ReLU (`groupnorm_f32`). Products
//! are cuBLAS SGEMMs in full f32 (no TF32), as the CPU's are f32; losses are summed in f64.

use super::blas::{BatchedGemm, Gemm, Handle, OP_N, OP_T};
use super::device::{addr, addr_mut, device_err, AnyBuffer, CudaDevice, DeviceBuffer};
use super::mlp::{
    alloc_f32, alloc_f64, bias_act, dense_product, download_f64, noisy_copies, softmax_xent, DeviceDataset,
    LOSS_BLOCKS, MAX_COPIES,
};
use crate::backend::LayerNoise;
use crate::error::{fail, Result};
use crate::model::cnn::{BasicBlock, ConvLayer, DenseLayer, GroupNormLayer, Layer, Shape};
use crate::model::{Cnn, Dataset};
use crate::params::ParamSet;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig};

/// Device memory for the activations and column matrices of one chunk of rows, all copies.
const CHUNK_BYTES: usize = 1 << 30;
/// Activation buffers of a chunk: a block's input, its two convs' outputs and its shortcut.
const ACT_BUFFERS: usize = 4;

/// `tl_conv_geom` of kernels/cnn.cu, field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    in_c: u32,
    h: u32,
    w: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    oh: u32,
    ow: u32,
}
// SAFETY: a #[repr(C)] struct of u32 fields with no padding, laid out as tl_conv_geom; passed by
// value as a kernel parameter.
unsafe impl DeviceRepr for ConvGeom {}

/// `tl_gn_geom` of kernels/cnn.cu, field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GroupNormGeom {
    images: u64,
    pixels: u64,
    channels: u32,
    groups: u32,
    relu: u32,
    pad: u32,
    eps: f64,
}
// SAFETY: #[repr(C)], laid out as tl_gn_geom (two u64, four u32, one f64: 40 bytes, no implicit
// padding); passed by value.
unsafe impl DeviceRepr for GroupNormGeom {}

/// `tl_pool_geom` of kernels/cnn.cu, field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    planes: u64,
    h: u32,
    w: u32,
    kernel: u32,
    stride: u32,
    oh: u32,
    ow: u32,
}
// SAFETY: #[repr(C)], laid out as tl_pool_geom (one u64, six u32: 32 bytes, no padding); passed
// by value.
unsafe impl DeviceRepr for PoolGeom {}

/// An evaluation set's copy on the CUDA device last used, uploaded at the first call on that
/// device and kept (`eval::CnnEvaluator` holds one).
#[derive(Clone, Default)]
pub struct DeviceDataCache(Option<std::sync::Arc<DeviceDataset>>);

impl std::fmt::Debug for DeviceDataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceDataCache(on device {:?})", self.0.as_ref().map(|d| d.ordinal()))
    }
}

impl DeviceDataCache {
    /// `data` (checked against `cnn`) on `dev`.
    pub fn get(&mut self, dev: &CudaDevice, cnn: &Cnn, data: &Dataset) -> Result<std::sync::Arc<DeviceDataset>> {
        if let Some(d) = self.0.as_ref().filter(|d| d.ordinal() == dev.ordinal()) {
            return Ok(d.clone());
        }
        cnn.check_data(data)?;
        let up = std::sync::Arc::new(DeviceDataset::upload(dev, &data.x, &data.y, data.dim, data.classes)?);
        self.0 = Some(up.clone());
        Ok(up)
    }
}

/// A CNN's parameters on the device, uploaded once for any number of evaluations: each tensor in
/// its storage dtype (the noise is rounded to it) and as f32 for the products.
pub struct DeviceCnn {
    cnn: Cnn,
    /// Per CNN tensor (set order): the stored values.
    stored: Vec<AnyBuffer>,
    /// Per CNN tensor: an f32 copy where the storage dtype is not f32.
    converted: Vec<Option<DeviceBuffer<f32>>>,
    /// Per module of the set: its tensors as (CNN tensor index, offset of the tensor within the
    /// module); `None` for a tensor the CNN does not read (its noise changes nothing).
    modules: Vec<Vec<(Option<usize>, u64)>>,
    ordinal: usize,
}

/// Where each CNN tensor of one evaluation lives: its f32 values at `ptr`, a stack of `copies`.
struct Params {
    ptr: Vec<u64>,
    copies: Vec<usize>,
}

/// An activation of a chunk: `images` images at `ptr`, in pool buffer `slot` (`None`: the data).
#[derive(Clone, Copy)]
struct Act {
    ptr: u64,
    slot: Option<usize>,
    images: usize,
}

/// The scratch memory of one chunk schedule.
struct Scratch {
    act: Vec<u64>,
    cols: u64,
}

impl Scratch {
    /// A pool buffer that none of `busy` occupies.
    fn free_slot(&self, busy: &[Act]) -> Result<usize> {
        match (0..self.act.len()).find(|&s| busy.iter().all(|a| a.slot != Some(s))) {
            Some(s) => Ok(s),
            None => fail!(Panic, "the CNN schedule ran out of activation buffers"),
        }
    }
}

impl DeviceCnn {
    /// Uploads the tensors of `p` that `cnn` reads (names and shapes checked).
    pub fn upload(dev: &CudaDevice, cnn: &Cnn, p: &ParamSet) -> Result<DeviceCnn> {
        let names = cnn.tensor_shapes();
        let f32_values = cnn.weights_of(p)?; // checks every name and shape
        dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
        let mut stored = Vec::with_capacity(names.len());
        let mut converted = Vec::with_capacity(names.len());
        for ((name, _), values) in names.iter().zip(&f32_values) {
            let Some(t) = p.tensor(name) else {
                fail!(NotFound, "the CNN needs a tensor {name:?}, which the set lacks");
            };
            let buffer = AnyBuffer::upload(dev, t.host()?)?;
            converted.push(match buffer {
                AnyBuffer::F32(_) => None,
                _ => Some(dev.upload(values)?),
            });
            stored.push(buffer);
        }
        let modules = p
            .modules()
            .iter()
            .map(|m| {
                let mut offset = 0u64;
                m.tensors
                    .iter()
                    .map(|&t| {
                        let tensor = &p.tensors()[t];
                        let here = offset;
                        offset += tensor.numel() as u64;
                        (names.iter().position(|(n, _)| n == tensor.name()), here)
                    })
                    .collect()
            })
            .collect();
        Ok(DeviceCnn { cnn: cnn.clone(), stored, converted, modules, ordinal: dev.ordinal() })
    }

    /// (mean loss, 0-1 error) of the uploaded parameters on `data`.
    pub fn evaluate(&self, dev: &CudaDevice, data: &DeviceDataset) -> Result<(f64, f64)> {
        self.check(dev, data)?;
        let params = Params {
            ptr: (0..self.stored.len()).map(|i| self.f32_ptr(i)).collect(),
            copies: vec![1; self.stored.len()],
        };
        Ok(self.run(dev, data, &params, 1)?[0])
    }

    /// (mean loss, 0-1 error) of each of the `samples` noisy copies of module `module` (an index
    /// into the set's modules) with per-element standard deviation `std` under `seed`, in draw
    /// order: the copies that [`crate::eval::ModuleNoise`] defines.
    pub fn evaluate_module_noise(
        &self,
        dev: &CudaDevice,
        data: &DeviceDataset,
        module: usize,
        std: f64,
        seed: u64,
        samples: usize,
    ) -> Result<Vec<(f64, f64)>> {
        self.check(dev, data)?;
        if !std.is_finite() || std < 0.0 {
            fail!(InvalidArgument, "the noise's standard deviation must be finite and >= 0, got {std}");
        }
        let Some(targets) = self.modules.get(module) else {
            fail!(NotFound, "module index {module} is out of range: the set has {} modules", self.modules.len())
        };
        if module as u64 > u32::MAX as u64 || samples as u64 > 1 << 32 {
            fail!(InvalidArgument, "module {module} with {samples} samples: the Philox streams would overlap");
        }
        let mut out = Vec::with_capacity(samples);
        let mut k0 = 0;
        while k0 < samples {
            let g = (samples - k0).min(MAX_COPIES);
            let noise = LayerNoise {
                layer: 0,
                std,
                seed,
                stream0: ((module as u64) << 32) | k0 as u64,
                draws: g,
                weight_index0: 0,
                bias_index0: 0,
            };
            out.extend(self.evaluate_group(dev, data, targets, &noise)?);
            k0 += g;
        }
        Ok(out)
    }

    fn check(&self, dev: &CudaDevice, data: &DeviceDataset) -> Result<()> {
        if dev.ordinal() != self.ordinal || data.ordinal != self.ordinal {
            fail!(
                InvalidArgument,
                "the CNN is on CUDA device {}, the data on {}, the call on {}",
                self.ordinal,
                data.ordinal,
                dev.ordinal()
            );
        }
        let s = self.cnn.input_shape();
        if data.dim != s.numel() || data.classes != self.cnn.classes() {
            fail!(
                ShapeMismatch,
                "the data set has {} features and {} classes, the CNN takes {} features and {} classes",
                data.dim,
                data.classes,
                s.numel(),
                self.cnn.classes()
            );
        }
        dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))
    }

    fn f32_ptr(&self, i: usize) -> u64 {
        match &self.converted[i] {
            Some(c) => c.device_ptr(),
            None => self.stored[i].device_ptr(),
        }
    }

    /// The `noise.draws` (at most `MAX_COPIES`) copies of the module whose tensors are `targets`.
    fn evaluate_group(
        &self,
        dev: &CudaDevice,
        data: &DeviceDataset,
        targets: &[(Option<usize>, u64)],
        noise: &LayerNoise,
    ) -> Result<Vec<(f64, f64)>> {
        let g = noise.draws;
        let tensors = self.stored.len();
        let mut noisy = vec![false; tensors];
        for &(ci, _) in targets {
            if let Some(ci) = ci {
                noisy[ci] = true;
            }
        }
        // Every tensor of a layer that reads a noisy tensor becomes a stack of g.
        let mut stacked = vec![false; tensors];
        for layer in self.cnn.layers() {
            let t = layer.tensors();
            if t.iter().any(|&i| noisy[i]) {
                t.iter().for_each(|&i| stacked[i] = true);
            }
        }
        if !stacked.contains(&true) {
            // The module's noise reaches no tensor the CNN reads: every copy is the plain model.
            return Ok(vec![self.evaluate(dev, data)?; g]);
        }
        let mut stacks: Vec<CudaSlice<f32>> = Vec::new();
        let mut params = Params { ptr: Vec::with_capacity(tensors), copies: Vec::with_capacity(tensors) };
        for (i, &is_stacked) in stacked.iter().enumerate() {
            if !is_stacked {
                params.ptr.push(self.f32_ptr(i));
                params.copies.push(1);
                continue;
            }
            let n = self.stored[i].len();
            let mut stack = alloc_f32(dev, g * n, "noisy parameters")?;
            match targets.iter().find(|(ci, _)| *ci == Some(i)) {
                Some(&(_, offset)) => noisy_copies(dev, &self.stored[i], &mut stack, noise, offset)?,
                None => repeat_images(dev, self.f32_ptr(i), addr_mut(dev, &mut stack), 1, n, g)?,
            }
            params.ptr.push(addr(dev, &stack));
            params.copies.push(g);
            stacks.push(stack);
        }
        let got = self.run(dev, data, &params, g);
        drop(stacks);
        got
    }

    /// The forward pass over `data` in chunks of rows with `params`, whose stacked tensors hold
    /// `copies` copies; (mean loss, 0-1 error) per copy.
    fn run(&self, dev: &CudaDevice, data: &DeviceDataset, params: &Params, copies: usize) -> Result<Vec<(f64, f64)>> {
        let (act_len, cols_len) = self.per_image_sizes();
        // Rows per chunk: the activation buffers and the column matrix of every copy.
        let per_row = 4 * copies * (ACT_BUFFERS * act_len + cols_len);
        let chunk = (CHUNK_BYTES / per_row.max(1)).clamp(1, data.rows);
        let mut act_slices = Vec::with_capacity(ACT_BUFFERS);
        for _ in 0..ACT_BUFFERS {
            act_slices.push(alloc_f32(dev, chunk * copies * act_len, "activations")?);
        }
        let mut cols_slice = alloc_f32(dev, chunk * copies * cols_len, "column matrices")?;
        let scratch = Scratch {
            act: act_slices.iter_mut().map(|s| addr_mut(dev, s)).collect(),
            cols: addr_mut(dev, &mut cols_slice),
        };
        let blocks = chunk.div_ceil(super::device::BLOCK as usize).min(LOSS_BLOCKS);
        let mut part_loss = alloc_f64(dev, copies * blocks, "loss partials")?;
        let mut part_wrong = alloc_f64(dev, copies * blocks, "error partials")?;
        let (mut loss, mut wrong) = (vec![0f64; copies], vec![0f64; copies]);
        let classes = self.cnn.classes();

        let blas = dev.blas()?;
        let h = *blas.handle();
        for start in (0..data.rows).step_by(chunk) {
            let m = chunk.min(data.rows - start);
            let input = Act { ptr: data.x.device_ptr() + 4 * (start * data.dim) as u64, slot: None, images: m };
            let logits = self.forward(dev, h, &scratch, params, input, m)?;
            // The copies' logits, or the one set's when no layer is stacked.
            let sets = logits.images / m;
            let used = m.div_ceil(super::device::BLOCK as usize).min(LOSS_BLOCKS);
            let labels = addr(dev, &data.labels) + 4 * start as u64;
            softmax_xent(dev, logits.ptr, labels, m, classes, sets, used, &mut part_loss, &mut part_wrong)?;
            let pl = download_f64(dev, &part_loss, sets * used, "loss partials")?;
            let pw = download_f64(dev, &part_wrong, sets * used, "error partials")?;
            for k in 0..copies {
                let s = k % sets;
                loss[k] += pl[s * used..(s + 1) * used].iter().sum::<f64>();
                wrong[k] += pw[s * used..(s + 1) * used].iter().sum::<f64>();
            }
        }
        drop(blas);
        if let Some(k) = loss.iter().position(|l| !l.is_finite()) {
            fail!(NonFinite, "copy {k}: the loss is not finite: the weights hold NaN or Inf, or the logits overflow");
        }
        let n = data.rows as f64;
        Ok(loss.iter().zip(&wrong).map(|(l, w)| (l / n, w / n)).collect())
    }

    /// Values per image of the largest activation and of the largest column matrix.
    fn per_image_sizes(&self) -> (usize, usize) {
        let mut shape = self.cnn.input_shape();
        let mut act = shape.numel();
        let mut cols = 1;
        let conv = |c: &ConvLayer, s: Shape, cols: &mut usize| {
            let pixels = c.out_side(s.h) * c.out_side(s.w);
            *cols = (*cols).max(c.patch() * pixels);
        };
        for (layer, &out) in self.cnn.layers().iter().zip(self.cnn.output_shapes()) {
            match layer {
                Layer::Conv(c) => conv(c, shape, &mut cols),
                Layer::Block(b) => {
                    conv(&b.conv1, shape, &mut cols);
                    let mid = Shape { c: b.conv1.out_c, h: b.conv1.out_side(shape.h), w: b.conv1.out_side(shape.w) };
                    conv(&b.conv2, mid, &mut cols);
                    if let Some((ds, _)) = &b.downsample {
                        conv(ds, shape, &mut cols);
                    }
                }
                _ => {}
            }
            act = act.max(out.numel());
            shape = out;
        }
        (act, cols)
    }

    /// Runs every layer on the `m` images at `input`; returns the logits (`m` or `m K` images).
    fn forward(&self, dev: &CudaDevice, h: Handle, s: &Scratch, p: &Params, input: Act, m: usize) -> Result<Act> {
        let layers = self.cnn.layers();
        let mut shape = self.cnn.input_shape();
        let mut cur = input;
        let mut l = 0;
        while l < layers.len() {
            // A ReLU right after a conv, GroupNorm or dense layer is fused into it.
            let relu_next = matches!(layers.get(l + 1), Some(Layer::Relu))
                && matches!(layers[l], Layer::Conv(_) | Layer::GroupNorm(_) | Layer::Dense(_));
            let out_shape = self.cnn.output_shapes()[l];
            cur = match &layers[l] {
                Layer::Conv(c) => {
                    let out = s.free_slot(&[cur])?;
                    self.conv(dev, h, s, p, c, shape, cur, out, m, relu_next)?
                }
                Layer::GroupNorm(gn) => self.groupnorm(dev, s, p, gn, shape, cur, None, m, relu_next)?,
                Layer::Relu => {
                    let out = self.writable(s, cur, &[])?;
                    channel_bias_relu(dev, cur.ptr, out.ptr, 0, cur.images * shape.numel(), 1, 1, true)?;
                    Act { images: cur.images, ..out }
                }
                Layer::AvgPool { kernel, stride } => {
                    let slot = s.free_slot(&[cur])?;
                    let geom = PoolGeom {
                        planes: (cur.images * shape.c) as u64,
                        h: shape.h as u32,
                        w: shape.w as u32,
                        kernel: *kernel as u32,
                        stride: *stride as u32,
                        oh: out_shape.h as u32,
                        ow: out_shape.w as u32,
                    };
                    let work = geom.planes * (out_shape.h * out_shape.w) as u64;
                    let cfg = dev.grid_1d_for(dev.function("avgpool_f32")?, work);
                    let (x, y) = (cur.ptr, s.act[slot]);
                    // SAFETY: avgpool_f32(const float* x, float* y, tl_pool_geom g); x holds
                    // planes x h x w values, y (a pool buffer) planes x oh x ow.
                    unsafe { dev.launch("avgpool_f32", cfg, (x, y, geom)) }?;
                    Act { ptr: y, slot: Some(slot), images: cur.images }
                }
                Layer::GlobalAvgPool => {
                    let slot = s.free_slot(&[cur])?;
                    let planes = (cur.images * shape.c) as u64;
                    let pixels = (shape.h * shape.w) as u64;
                    let cfg = dev.grid_1d_for(dev.function("global_avgpool_f32")?, planes);
                    let (x, y) = (cur.ptr, s.act[slot]);
                    // SAFETY: global_avgpool_f32(const float* x, float* y, tl_u64 planes,
                    // tl_u64 pixels); x holds planes x pixels values, y planes.
                    unsafe { dev.launch("global_avgpool_f32", cfg, (x, y, planes, pixels)) }?;
                    Act { ptr: y, slot: Some(slot), images: cur.images }
                }
                Layer::Flatten => cur,
                Layer::Dense(d) => self.dense(dev, h, s, p, d, cur, m, relu_next)?,
                Layer::Block(b) => self.block(dev, h, s, p, b, shape, cur, m)?,
            };
            shape = out_shape;
            l += if relu_next { 2 } else { 1 };
        }
        Ok(cur)
    }

    /// `cur`'s buffer when it may be overwritten (a pool buffer not in `keep`), else a free one.
    fn writable(&self, s: &Scratch, cur: Act, keep: &[Act]) -> Result<Act> {
        match cur.slot {
            Some(slot) if keep.iter().all(|k| k.slot != Some(slot)) => Ok(cur),
            _ => {
                let mut busy = keep.to_vec();
                busy.push(cur);
                let slot = s.free_slot(&busy)?;
                Ok(Act { ptr: s.act[slot], slot: Some(slot), images: cur.images })
            }
        }
    }

    /// `cur` as `m copies` images when a layer with `copies` stacked parameters reads it
    /// unstacked, into a free buffer not among `keep`; else `cur`.
    #[allow(clippy::too_many_arguments)]
    fn stacked_input(
        &self,
        dev: &CudaDevice,
        s: &Scratch,
        cur: Act,
        shape: Shape,
        m: usize,
        copies: usize,
        keep: &[Act],
    ) -> Result<Act> {
        if copies == 1 || cur.images == m * copies {
            return Ok(cur);
        }
        let mut busy = keep.to_vec();
        busy.push(cur);
        let slot = s.free_slot(&busy)?;
        repeat_images(dev, cur.ptr, s.act[slot], m, shape.numel(), copies)?;
        Ok(Act { ptr: s.act[slot], slot: Some(slot), images: m * copies })
    }

    /// Conv `c` of the images `x` (of shape `shape`) into pool buffer `out`, with its bias and,
    /// when `relu`, a ReLU.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        dev: &CudaDevice,
        h: Handle,
        s: &Scratch,
        p: &Params,
        c: &ConvLayer,
        shape: Shape,
        x: Act,
        out: usize,
        m: usize,
        relu: bool,
    ) -> Result<Act> {
        let copies = p.copies[c.weight];
        let (oh, ow) = (c.out_side(shape.h), c.out_side(shape.w));
        let pixels = oh * ow;
        let patch = c.patch();
        let y = s.act[out];
        let pointwise = c.kernel == 1 && c.stride == 1 && c.padding == 0;
        let cols = if pointwise {
            x.ptr
        } else {
            let geom = ConvGeom {
                in_c: shape.c as u32,
                h: shape.h as u32,
                w: shape.w as u32,
                kernel: c.kernel as u32,
                stride: c.stride as u32,
                padding: c.padding as u32,
                oh: oh as u32,
                ow: ow as u32,
            };
            let images = x.images as u64;
            let cfg = dev.grid_1d_for(dev.function("im2col_f32")?, images * (patch * pixels) as u64);
            let (xp, cp) = (x.ptr, s.cols);
            // SAFETY: im2col_f32(const float* x, float* cols, tl_u64 images, tl_conv_geom g);
            // x holds images x in_c x h x w values, cols (sized by per_image_sizes for the
            // largest conv) images x patch x pixels.
            unsafe { dev.launch("im2col_f32", cfg, (xp, cp, images, geom)) }?;
            s.cols
        };
        let w = p.ptr[c.weight];
        let product = |a: u64, stride_a: usize, b: u64, n: usize, out: u64, stride_c: usize, batch: usize| {
            let gemm = BatchedGemm {
                gemm: Gemm {
                    ta: OP_N,
                    tb: OP_N,
                    m: pixels,
                    n,
                    k: patch,
                    a,
                    lda: pixels,
                    b,
                    ldb: patch,
                    c: out,
                    ldc: pixels,
                },
                stride_a,
                stride_b: 0,
                stride_c,
                batch,
            };
            // SAFETY: a holds batch column matrices (patch x pixels) stride_a apart, b the
            // row-major n x patch filters, out batch outputs (n x pixels) stride_c apart, in pool
            // buffer `out`, apart from the inputs.
            unsafe { gemm.run::<f32>(h, "conv") }
        };
        let images_out = if copies > 1 && x.images == m {
            // The first stacked layer: the K filter banks as one (K out) x patch matrix.
            product(cols, patch * pixels, w, copies * c.out_c, y, copies * c.out_c * pixels, m)?;
            m * copies
        } else if copies > 1 {
            // Stacked images: copy k's images i K + k with copy k's filters.
            let bank = c.out_c * patch;
            for k in 0..copies {
                let a = cols + 4 * (k * patch * pixels) as u64;
                let out_k = y + 4 * (k * c.out_c * pixels) as u64;
                let w_k = w + 4 * (k * bank) as u64;
                product(a, copies * patch * pixels, w_k, c.out_c, out_k, copies * c.out_c * pixels, m)?;
            }
            x.images
        } else {
            product(cols, patch * pixels, w, c.out_c, y, c.out_c * pixels, x.images)?;
            x.images
        };
        let bias = c.bias.map_or(0, |b| p.ptr[b]);
        if bias != 0 || relu {
            // Per image i of the m (or images) "super-images", copies x out_c channels.
            let groups = images_out / copies;
            channel_bias_relu(dev, y, y, bias, groups, copies * c.out_c, pixels, relu)?;
        }
        Ok(Act { ptr: y, slot: Some(out), images: images_out })
    }

    /// GroupNorm `gn` of `x`, in place when `x` may be overwritten; `residual` (same shape and
    /// images as the output) is added before the ReLU.
    #[allow(clippy::too_many_arguments)]
    fn groupnorm(
        &self,
        dev: &CudaDevice,
        s: &Scratch,
        p: &Params,
        gn: &GroupNormLayer,
        shape: Shape,
        x: Act,
        residual: Option<Act>,
        m: usize,
        relu: bool,
    ) -> Result<Act> {
        let copies = p.copies[gn.weight];
        let keep: Vec<Act> = residual.into_iter().collect();
        let x = self.stacked_input(dev, s, x, shape, m, copies, &keep)?;
        let out = self.writable(s, x, &keep)?;
        let geom = GroupNormGeom {
            images: (x.images / copies) as u64,
            pixels: (shape.h * shape.w) as u64,
            channels: (copies * gn.channels) as u32,
            groups: (copies * gn.groups) as u32,
            relu: relu as u32,
            pad: 0,
            eps: gn.eps,
        };
        let pairs = geom.images * geom.groups as u64;
        let f = dev.function("groupnorm_f32")?;
        let blocks = pairs.min(dev.resident_blocks(f) as u64).max(1) as u32;
        let cfg =
            LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (super::device::BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (xp, yp, gamma, beta) = (x.ptr, out.ptr, p.ptr[gn.weight], p.ptr[gn.bias]);
        let res = residual.map_or(0, |r| r.ptr);
        // SAFETY: groupnorm_f32(const float* x, float* y, const float* gamma, const float* beta,
        // const float* residual, tl_gn_geom g); x, y (possibly x) and residual (or null) hold
        // images x channels x pixels values of the geometry, gamma and beta channels each (the
        // stacks of `copies`).
        unsafe { dev.launch("groupnorm_f32", cfg, (xp, yp, gamma, beta, res, geom)) }?;
        Ok(out)
    }

    /// Dense layer `d` of the vectors `x`, with its bias and, when `relu`, a ReLU.
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &self,
        dev: &CudaDevice,
        h: Handle,
        s: &Scratch,
        p: &Params,
        d: &DenseLayer,
        x: Act,
        m: usize,
        relu: bool,
    ) -> Result<Act> {
        let copies = p.copies[d.weight];
        let slot = s.free_slot(&[x])?;
        let y = s.act[slot];
        let w = p.ptr[d.weight];
        let (fi, fo) = (d.in_f, d.out_f);
        let images_out = if copies > 1 && x.images == m {
            // SAFETY: w holds the (K fo) x fi stacked weights, x fi x m values, y (a pool
            // buffer apart from x) (K fo) x m.
            unsafe { dense_product(h, copies * fo, m, fi, w, x.ptr, y) }?;
            m * copies
        } else if copies > 1 {
            for k in 0..copies {
                let gemm = Gemm {
                    ta: OP_T,
                    tb: OP_N,
                    m: fo,
                    n: m,
                    k: fi,
                    a: w + 4 * (k * fo * fi) as u64,
                    lda: fi,
                    b: x.ptr + 4 * (k * fi) as u64,
                    ldb: copies * fi,
                    c: y + 4 * (k * fo) as u64,
                    ldc: copies * fo,
                };
                // SAFETY: copy k's fo x fi weights, its m input vectors copies x fi apart in x,
                // its m outputs copies x fo apart in y (a pool buffer apart from x).
                unsafe { gemm.run::<f32>(h, "dense layer") }?;
            }
            x.images
        } else {
            // SAFETY: w holds fo x fi values, x fi x images, y fo x images.
            unsafe { dense_product(h, fo, x.images, fi, w, x.ptr, y) }?;
            x.images
        };
        match d.bias {
            Some(b) => bias_act(dev, y, p.ptr[b], copies * fo, images_out / copies, relu)?,
            None if relu => channel_bias_relu(dev, y, y, 0, images_out * fo, 1, 1, true)?,
            None => {}
        }
        Ok(Act { ptr: y, slot: Some(slot), images: images_out })
    }

    /// A residual basic block: conv1, gn1 + ReLU, conv2, gn2 + shortcut + ReLU.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        dev: &CudaDevice,
        h: Handle,
        s: &Scratch,
        p: &Params,
        b: &BasicBlock,
        shape: Shape,
        x: Act,
        m: usize,
    ) -> Result<Act> {
        let mid = Shape { c: b.conv1.out_c, h: b.conv1.out_side(shape.h), w: b.conv1.out_side(shape.w) };
        let t1 = self.conv(dev, h, s, p, &b.conv1, shape, x, s.free_slot(&[x])?, m, false)?;
        let t1 = self.groupnorm(dev, s, p, &b.gn1, mid, t1, None, m, true)?;
        let shortcut = match &b.downsample {
            Some((ds, dg)) => {
                let sc = self.conv(dev, h, s, p, ds, shape, x, s.free_slot(&[x, t1])?, m, false)?;
                self.groupnorm(dev, s, p, dg, mid, sc, None, m, false)?
            }
            None => self.stacked_input(dev, s, x, shape, m, t1.images / m, &[t1])?,
        };
        let t2 = self.conv(dev, h, s, p, &b.conv2, mid, t1, s.free_slot(&[t1, shortcut])?, m, false)?;
        self.groupnorm(dev, s, p, &b.gn2, mid, t2, Some(shortcut), m, true)
    }
}

/// `y = act(x + bias[c])` over `images` images of `channels x pixels`
/// (`channel_bias_relu_f32`); `bias` 0 for none; `y` may be `x`.
#[allow(clippy::too_many_arguments)]
fn channel_bias_relu(
    dev: &CudaDevice,
    x: u64,
    y: u64,
    bias: u64,
    images: usize,
    channels: usize,
    pixels: usize,
    relu: bool,
) -> Result<()> {
    let name = "channel_bias_relu_f32";
    let (images, channels, pixels, relu) = (images as u64, channels as u32, pixels as u64, relu as u32);
    let cfg = dev.grid_1d_for(dev.function(name)?, images * channels as u64 * pixels);
    // SAFETY: channel_bias_relu_f32(const float* x, float* y, const float* bias, tl_u64 images,
    // tl_u32 channels, tl_u64 pixels, tl_u32 relu); x and y (the same or apart) hold images x
    // channels x pixels values, bias (or null) channels.
    unsafe { dev.launch(name, cfg, (x, y, bias, images, channels, pixels, relu)) }
}

/// `y[(i copies + k) per_image + e] = x[i per_image + e]` (`repeat_images_f32`).
fn repeat_images(dev: &CudaDevice, x: u64, y: u64, images: usize, per_image: usize, copies: usize) -> Result<()> {
    let name = "repeat_images_f32";
    let (images, per_image, copies) = (images as u64, per_image as u64, copies as u32);
    let cfg = dev.grid_1d_for(dev.function(name)?, images * per_image * copies as u64);
    // SAFETY: repeat_images_f32(const float* x, float* y, tl_u64 images, tl_u64 per_image,
    // tl_u32 copies); x holds images x per_image values, y copies times as many, apart from x.
    unsafe { dev.launch(name, cfg, (x, y, images, per_image, copies)) }
}
