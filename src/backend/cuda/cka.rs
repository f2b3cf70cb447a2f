//! CUDA host code of `kernels/cka.cu`; CPU twin in `backend/cpu/cka.rs` (whose module doc says
//! where the two round alike and where not). The CUDA side of
//! [`crate::backend::CkaBatchMoments`], [`crate::backend::CkaGramTerms`] and column means.
//!
//! Each layer is read where it lives: host data is uploaded once per call (the rows it spans,
//! strides included), device memory (`Storage::Device`) is used in place after checking that it
//! belongs to the context's device. One pass (`shift_<t>_to_<a>`) subtracts the shift in f64,
//! multiplies by the layer's product scale, rounds once to the arithmetic type `a` (f32 for f32,
//! f16 and bf16 data, f64 for f64 data) and writes the `features x rows` column-major buffer the
//! products take, recording the first NaN or Inf it meets; the dense products are cuBLAS's
//! (`syrk` for Grams, `gemm` for the rest) in full f32 or f64; reductions of their results run on
//! the device in f64, and only small results travel back, where the scales are undone in f64.
//!
//! The product scale is the CPU's ([`cpu::cka::product_scale`], from the same statistic: the
//! mean square of the shifted layer, one `sumsq_<t>` pass before the shift): a power of two that
//! keeps the f32 products of layers near the ends of f32's range (1e-23, 1e19, subnormals) from
//! underflowing or overflowing; 1 for ordinary data, which then takes exactly the unscaled path.

use super::blas::{BlasScalar, Gemm, Syrk, OP_N, OP_T};
use super::device::{
    addr, addr_mut, alloc_zeros, check_vec, device_err, device_of, download, AnyBuffer, CudaDevice, DeviceBuffer,
    DeviceElement, MatrixShape, BLOCK, BLOCKS_PER_SM,
};
use crate::backend::cpu::{self, Real};
use crate::backend::{CkaBatchMoments, CkaGramTerms};
use crate::error::{fail, Error, Result};
use crate::tensor::{DType, HostSlice, Matrix, Storage};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::{bf16, f16};

#[cfg(feature = "bench")]
mod bench;
#[cfg(feature = "bench")]
use bench::Phases;
#[cfg(feature = "bench")]
pub use bench::{last_phases, GramAlgo};

/// One layer on the device: a row-major `rows x cols` matrix, rows `stride` elements apart.
struct Layer<'m> {
    name: String,
    ptr: u64,
    dtype: DType,
    rows: usize,
    cols: usize,
    stride: usize,
    /// The host data when the layer came from the host (for reading back single values).
    host: Option<HostSlice<'m>>,
    _held: AnyBuffer,
}

impl Layer<'_> {
    fn suffix(&self) -> &'static str {
        self.dtype.name()
    }
}

/// Puts one layer on the device: uploads the rows of a host matrix (one copy), or wraps device
/// memory in place after checking that it belongs to `dev`.
fn to_device<'m>(dev: &CudaDevice, name: &str, m: &Matrix<'m>) -> Result<Layer<'m>> {
    let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
    if rows == 0 {
        fail!(DegenerateInput, "{name} has 0 rows (samples)");
    }
    let span = (rows - 1) * stride + cols;
    let (held, host) = match m.storage() {
        Storage::Host(s) => (AnyBuffer::upload(dev, s.prefix(span))?, Some(*s)),
        Storage::Device { ptr, dtype, device, .. } => {
            if *device != dev.ordinal() as i32 {
                fail!(
                    InvalidArgument,
                    "{name}: the matrix lives in the memory of CUDA device {device}, but this context runs on device {}",
                    dev.ordinal()
                );
            }
            let wrap = |e: Error| match e {
                Error::InvalidArgument(msg) | Error::NullArgument(msg) => {
                    Error::InvalidArgument(format!("{name}: {msg}"))
                }
                other => other,
            };
            // SAFETY: Matrix::from_device's contract: `span` elements of `dtype` at `ptr` on
            // this device stay valid for reads while the view lives, which outlasts the call.
            let held = unsafe { AnyBuffer::wrap(dev, *ptr, *dtype, span) }.map_err(wrap)?;
            (held, None)
        }
    };
    let ptr = held.device_ptr();
    Ok(Layer { name: name.to_string(), ptr, dtype: m.dtype(), rows, cols, stride, host, _held: held })
}

/// `dev.stream().synchronize()`, reporting a fault of any queued kernel.
fn sync(dev: &CudaDevice) -> Result<()> {
    dev.synchronize()
}

/// Without the `bench` feature the phase timer of `gram_terms` does nothing.
#[cfg(not(feature = "bench"))]
struct Phases;

#[cfg(not(feature = "bench"))]
impl Phases {
    fn new() -> Self {
        Phases
    }
    fn mark(&mut self, _dev: &CudaDevice, _phase: &str) -> Result<()> {
        Ok(())
    }
    fn finish(self) {}
}

/// The lower triangle of the Gram `C = A A^T` of the `p x k` column-major `A` (leading
/// dimension `lda`) into `C` (leading dimension `ldc`): one `syrk` (with the `bench` feature,
/// the algorithm `TL_CUDA_GRAM` names).
///
/// # Safety
/// As [`Syrk::run`] for these shapes.
#[allow(clippy::too_many_arguments)]
unsafe fn feature_gram<A: BlasScalar>(
    h: super::blas::Handle,
    p: usize,
    k: usize,
    a: u64,
    lda: usize,
    c: u64,
    ldc: usize,
) -> Result<()> {
    #[cfg(feature = "bench")]
    // SAFETY: the caller's contract.
    return unsafe { bench::gram::<A>(h, GramAlgo::from_env(), p, k, a, lda, c, ldc) };
    #[cfg(not(feature = "bench"))]
    // SAFETY: the caller's contract.
    unsafe {
        Syrk { trans: OP_N, n: p, k, a, lda, c, ldc }.run::<A>(h, "Gram")
    }
}

/// The grid of `colstats`: column tiles of 32 by chunks of rows.
fn colstats_grid(dev: &CudaDevice, rows: u64, cols: u64) -> (LaunchConfig, u64) {
    let target = (dev.sm_count() * BLOCKS_PER_SM) as u64;
    let gx = cols.div_ceil(32).clamp(1, 1024);
    let gy = (target / gx).clamp(1, 65_535).min(rows.div_ceil(8)).max(1);
    let rows_per_block = rows.div_ceil(gy).next_multiple_of(8);
    (LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }, rows_per_block)
}

/// The NonFinite error for the first bad element `index = r * cols + c` of a layer.
fn nonfinite(dev: &CudaDevice, layer: &Layer, index: u64) -> Error {
    let (r, c) = ((index / layer.cols as u64) as usize, (index % layer.cols as u64) as usize);
    let at = r * layer.stride + c;
    let value = match layer.host {
        Some(HostSlice::F32(d)) => Some(d[at] as f64),
        Some(HostSlice::F64(d)) => Some(d[at]),
        Some(HostSlice::F16(d)) => Some(d[at].to_f64()),
        Some(HostSlice::BF16(d)) => Some(d[at].to_f64()),
        None => read_device_value(dev, layer, at).ok(),
    };
    match value {
        Some(v) => Error::NonFinite(format!("{} holds {v} at row {r}, column {c}", layer.name)),
        None => Error::NonFinite(format!("{} holds NaN or Inf at row {r}, column {c}", layer.name)),
    }
}

/// Reads element `at` of a device layer.
fn read_device_value(dev: &CudaDevice, layer: &Layer, at: usize) -> Result<f64> {
    let size = layer.dtype.size();
    let mut bytes = vec![0u8; size];
    // SAFETY: `at` lies within the layer's span, checked when the layer was wrapped.
    unsafe {
        cudarc::driver::result::memcpy_dtoh_async(&mut bytes, layer.ptr + (at * size) as u64, dev.stream().cu_stream())
    }
    .map_err(device_err("cuMemcpyDtoHAsync(value)"))?;
    sync(dev)?;
    Ok(match layer.dtype {
        DType::F32 => f32::from_le_bytes(bytes[..4].try_into().unwrap()) as f64,
        DType::F64 => f64::from_le_bytes(bytes[..8].try_into().unwrap()),
        DType::F16 => f16::from_le_bytes(bytes[..2].try_into().unwrap()).to_f64(),
        DType::BF16 => bf16::from_le_bytes(bytes[..2].try_into().unwrap()).to_f64(),
    })
}

/// Column means of the layers (see `cpu::column_means`): one `colstats` pass per layer, one
/// download for all. A column whose entries all equal its first gets that value exactly.
fn means_of(dev: &CudaDevice, layers: &[Layer]) -> Result<Vec<Vec<f64>>> {
    let total: usize = layers.iter().map(|l| l.cols).sum();
    let nl = layers.len();
    let mut sums = alloc_zeros::<f64>(dev, total, "column sums")?;
    let mut varies = alloc_zeros::<i32>(dev, total, "column flags")?;
    let mut bad = dev.stream().clone_htod(&vec![u64::MAX; nl]).map_err(device_err("cuMemcpyHtoDAsync(flags)"))?;
    let (ps, pv, pb) = (addr_mut(dev, &mut sums), addr_mut(dev, &mut varies), addr_mut(dev, &mut bad));
    let mut start = 0usize;
    for (u, l) in layers.iter().enumerate() {
        let (rows, cols) = (l.rows as u64, l.cols as u64);
        let (cfg, rpb) = colstats_grid(dev, rows, cols);
        let (sum, varies, first_bad) = (ps + 8 * start as u64, pv + 4 * start as u64, pb + 8 * u as u64);
        let args = (l.ptr, rows, cols, l.stride as u64, sum, varies, first_bad, rpb);
        // SAFETY: colstats_<t>(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride, double* sum,
        // int* varies, tl_u64* first_bad, tl_u64 rows_per_block); the layer spans rows x cols
        // with its stride, sums and flags hold this layer's cols entries from `start`, first_bad
        // its one flag.
        unsafe { dev.launch(&format!("colstats_{}", l.suffix()), cfg, args) }?;
        start += l.cols;
    }
    let bad = download(dev, &bad, nl, "flags")?;
    let sums = download(dev, &sums, total, "column sums")?;
    let varies = download(dev, &varies, total, "column flags")?;
    sync(dev)?;
    for (u, l) in layers.iter().enumerate() {
        if bad[u] != u64::MAX {
            return Err(nonfinite(dev, l, bad[u]));
        }
    }
    let mut out = Vec::with_capacity(nl);
    let mut start = 0usize;
    for l in layers {
        let first = first_row(dev, l)?;
        out.push(
            (0..l.cols)
                .map(|c| if varies[start + c] == 0 { first[c] } else { sums[start + c] / l.rows as f64 })
                .collect(),
        );
        start += l.cols;
    }
    Ok(out)
}

/// The first row of a layer, in f64.
fn first_row(dev: &CudaDevice, l: &Layer) -> Result<Vec<f64>> {
    Ok(match l.host {
        Some(HostSlice::F32(d)) => d[..l.cols].iter().map(|&v| v as f64).collect(),
        Some(HostSlice::F64(d)) => d[..l.cols].to_vec(),
        Some(HostSlice::F16(d)) => d[..l.cols].iter().map(|v| v.to_f64()).collect(),
        Some(HostSlice::BF16(d)) => d[..l.cols].iter().map(|v| v.to_f64()).collect(),
        None => {
            let size = l.dtype.size();
            let mut bytes = vec![0u8; l.cols * size];
            // SAFETY: the first row lies within the layer's span.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut bytes, l.ptr, dev.stream().cu_stream()) }
                .map_err(device_err("cuMemcpyDtoHAsync(first row)"))?;
            sync(dev)?;
            bytes
                .chunks_exact(size)
                .map(|b| match l.dtype {
                    DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
                    DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
                    DType::F16 => f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                    DType::BF16 => bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                })
                .collect()
        }
    })
}

/// Column means on the device (see [`crate::backend::column_means`]). Host data is averaged on
/// the host, where it is (a copy to the device would cost more than the pass); device data in
/// place.
pub fn column_means(ctx: &crate::Context, m: &Matrix, name: &str) -> Result<Vec<f64>> {
    if let Storage::Host(_) = m.storage() {
        return crate::backend::cpu::column_means(m, name);
    }
    if m.rows() == 0 {
        fail!(DegenerateInput, "{name} has 0 rows (samples)");
    }
    let dev = device_of(ctx)?;
    let layer = to_device(dev, name, m)?;
    Ok(means_of(dev, std::slice::from_ref(&layer))?.remove(0))
}

/// The shifted, converted layers: `(x - shift)` of every layer, written into column-major
/// `features x rows` buffers, each layer at its feature offset within its group's buffer.
struct Shifted<A: BlasScalar> {
    /// One buffer per group; `ld[g]` features (rows of the column-major matrix) each.
    bufs: Vec<CudaSlice<A>>,
    ld: Vec<usize>,
    /// Group and feature offset of each layer.
    group: Vec<usize>,
    offset: Vec<usize>,
    /// Squared norms of the shifted rows, computed from the rounded values (so scaled by the
    /// square of their layer's scale): layer `u` at `u * rows`, column-major `rows x layers`.
    norms: CudaSlice<f64>,
    /// Each layer's product scale: the buffers hold `(x - shift) * scale`.
    scales: Vec<f64>,
}

/// Shifts and scales every layer; `group_of(u)` puts layer `u` in a buffer. Returns the first
/// NaN / Inf as an error.
fn shift_layers<A: BlasScalar + Real>(
    dev: &CudaDevice,
    layers: &[Layer],
    shifts: &[Vec<f64>],
    groups: usize,
    group_of: impl Fn(usize) -> usize,
) -> Result<Shifted<A>> {
    let nl = layers.len();
    let rows = layers[0].rows;
    let group: Vec<usize> = (0..nl).map(&group_of).collect();
    let mut ld = vec![0usize; groups];
    let mut offset = vec![0usize; nl];
    for (u, l) in layers.iter().enumerate() {
        offset[u] = ld[group[u]];
        ld[group[u]] += l.cols;
    }
    let mut bufs = Vec::with_capacity(groups);
    for &g in &ld {
        // SAFETY: uninitialised, but the shift pass below writes every element: each layer's
        // `cols` features of every row, and the layers of a group tile its `ld` features.
        let buf =
            unsafe { dev.stream().alloc::<A>((g * rows).max(1)) }.map_err(device_err("cuMemAlloc(shifted layers)"))?;
        bufs.push(buf);
    }
    let flat: Vec<f64> = shifts.concat();
    let dshift = dev.stream().clone_htod(&flat).map_err(device_err("cuMemcpyHtoDAsync(shift)"))?;
    let scales = product_scales::<A>(dev, layers, addr(dev, &dshift))?;
    let mut bad = dev.stream().clone_htod(&vec![u64::MAX; nl]).map_err(device_err("cuMemcpyHtoDAsync(flags)"))?;
    let mut norms = alloc_zeros::<f64>(dev, nl * rows, "row norms")?;
    let (pshift, pbad, pnorms) = (addr(dev, &dshift), addr_mut(dev, &mut bad), addr_mut(dev, &mut norms));
    let base: Vec<u64> = bufs.iter_mut().map(|b| addr_mut(dev, b)).collect();
    let size = std::mem::size_of::<A>() as u64;
    let mut start = 0usize;
    for (u, l) in layers.iter().enumerate() {
        let (g, cols) = (group[u], l.cols as u64);
        let y = base[g] + size * offset[u] as u64;
        let name = format!("shift_{}_to_{}", l.suffix(), A::SUFFIX);
        let cfg = shift_grid(dev, dev.function(&name)?, l.rows, l.cols);
        let (shift, first_bad, ldg) = (pshift + 8 * start as u64, pbad + 8 * u as u64, ld[g] as u64);
        let args = (l.ptr, rows as u64, cols, l.stride as u64, shift, scales[u], y, ldg, first_bad);
        // SAFETY: shift_<t>_to_<a>(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
        // const double* shift, double scale, A* y, tl_u64 ld, tl_u64* first_bad); the layer spans
        // rows x cols with its stride, shift holds its cols values, y points at its first feature
        // within a group buffer of ld x rows elements.
        unsafe { dev.launch(&name, cfg, args) }?;
        // Squared row norms of the rounded values: the layer's block read as row-major
        // `rows x cols` with row stride ld; one warp per row.
        let norms_out = pnorms + 8 * (u * rows) as u64;
        let args = (y, rows as u64, cols, ldg, norms_out);
        // SAFETY: row_sqnorms_<a>(const A* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
        // double* out); the block was just written, out holds this layer's rows norms.
        unsafe { dev.launch(&format!("row_sqnorms_{}", A::SUFFIX), dev.grid_1d(rows as u64 * 32), args) }?;
        start += l.cols;
    }
    let bad = download(dev, &bad, nl, "flags")?;
    sync(dev)?;
    for (u, l) in layers.iter().enumerate() {
        if bad[u] != u64::MAX {
            return Err(nonfinite(dev, l, bad[u]));
        }
    }
    Ok(Shifted { bufs, ld, group, offset, norms, scales })
}

/// Each layer's product scale ([`cpu::cka::product_scale`]) from the mean square of
/// `x - shift` (`shift` addresses the layers' shifts, concatenated), summed in f64 on the
/// device; all 1 for f64 products, which need none. A NaN or Inf gives scale 1 and is reported by
/// the shift pass.
fn product_scales<A: BlasScalar + Real>(dev: &CudaDevice, layers: &[Layer], shift: u64) -> Result<Vec<f64>> {
    let nl = layers.len();
    if !A::SCALES {
        return Ok(vec![1.0; nl]);
    }
    let mut sums = alloc_zeros::<f64>(dev, nl, "sums of squares")?;
    let psums = addr_mut(dev, &mut sums);
    let mut start = 0u64;
    for (u, l) in layers.iter().enumerate() {
        let shape = MatrixShape { rows: l.rows, cols: l.cols, stride: l.stride };
        let args = (l.ptr, l.rows as u64, l.cols as u64, l.stride as u64, shift + 8 * start, psums + 8 * u as u64);
        // SAFETY: sumsq_<t>(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
        // const double* shift, double* out); the layer spans rows x cols with its stride, shift
        // holds its cols values, out is its one sum.
        unsafe { dev.launch(&format!("sumsq_{}", l.suffix()), dev.grid_2d(shape), args) }?;
        start += l.cols as u64;
    }
    let sums = download(dev, &sums, nl, "sums of squares")?;
    sync(dev)?;
    Ok(sums.iter().zip(layers).map(|(s, l)| cpu::cka::product_scale::<A>(s / (l.rows * l.cols) as f64)).collect())
}

impl<A: BlasScalar> Shifted<A> {
    /// Device address and leading dimension of layer `u`'s `features x rows` block.
    fn block(&self, dev: &CudaDevice, u: usize) -> (u64, usize) {
        let g = self.group[u];
        (addr(dev, &self.bufs[g]) + (std::mem::size_of::<A>() * self.offset[u]) as u64, self.ld[g])
    }
}

/// `v` in f64 times `factor` (a power of two that undoes scales: exact).
fn scaled_f64<A: BlasScalar>(v: Vec<A>, factor: f64) -> Vec<f64> {
    v.into_iter().map(|a| BlasScalar::to_f64(a) * factor).collect()
}

fn check_layers(layers: &[(String, &Matrix)]) -> Result<usize> {
    let rows = layers[0].1.rows();
    if let Some((name, m)) = layers.iter().find(|(_, m)| m.rows() != rows) {
        fail!(ShapeMismatch, "{name} has {} rows, {} has {rows}", m.rows(), layers[0].0);
    }
    Ok(rows)
}

/// The moments of one batch (see [`CkaBatchMoments`]) in arithmetic `A`.
pub(crate) fn batch_moments<A: BlasScalar + Real>(
    dev: &CudaDevice,
    layers: &[(String, &Matrix)],
    shifts: &[Vec<f64>],
    nx: usize,
) -> Result<CkaBatchMoments> {
    let rows = check_layers(layers)?;
    let nl = layers.len();
    let dl: Vec<Layer> = layers.iter().map(|(name, m)| to_device(dev, name, m)).collect::<Result<_>>()?;
    let widths: Vec<usize> = dl.iter().map(|l| l.cols).collect();
    let z = shift_layers::<A>(dev, &dl, shifts, 2, |u| if u < nx { 0 } else { 1 })?;
    let (px, py) = (z.ld[0], z.ld[1]);
    let blas = dev.blas()?;
    let h = *blas.handle();

    // All cross products at once: (px x rows) (py x rows)^T.
    let mut cross = alloc_zeros::<A>(dev, px * py, "cross products")?;
    let pc = addr_mut(dev, &mut cross);
    let (bx, by) = (addr(dev, &z.bufs[0]), addr(dev, &z.bufs[1]));
    let products = Gemm { ta: OP_N, tb: OP_T, m: px, n: py, k: rows, a: bx, lda: px, b: by, ldb: py, c: pc, ldc: px };
    // SAFETY: the x and y buffers are px x rows and py x rows (column-major, ld px and py), the
    // cross products px x py, all live on this device.
    unsafe { products.run::<A>(h, "cross products") }?;

    // Each layer's Gram, lower triangle.
    let mut grams = Vec::with_capacity(nl);
    for (u, &p) in widths.iter().enumerate() {
        let mut g = alloc_zeros::<A>(dev, p * p, "Gram")?;
        let (pa, lda) = z.block(dev, u);
        let pg = addr_mut(dev, &mut g);
        // SAFETY: block(u) is p x rows (ld lda) within its group buffer; g holds p x p.
        unsafe { Syrk { trans: OP_N, n: p, k: rows, a: pa, lda, c: pg, ldc: p }.run::<A>(h, "Gram") }?;
        grams.push(g);
    }

    // Third moments: block(v) (p_v x rows) times [norms as A | ones] (rows x (nl + 1)).
    let mut rhs = alloc_zeros::<A>(dev, rows * (nl + 1), "norms")?;
    let prhs = addr_mut(dev, &mut rhs);
    if A::SUFFIX == "f64" {
        let (src, _s) = z.norms.device_ptr(dev.stream());
        // SAFETY: both hold nl * rows f64 values.
        unsafe { cudarc::driver::result::memcpy_dtod_async(prhs, src, 8 * nl * rows, dev.stream().cu_stream()) }
            .map_err(device_err("cuMemcpyDtoDAsync(norms)"))?;
    } else {
        let n = (nl * rows) as u64;
        // SAFETY: convert_f64_to_f32(float* out, const double* in, tl_u64 n); rhs holds
        // (nl + 1) rows f32 values, the norms nl rows f64 values.
        unsafe { dev.launch("convert_f64_to_f32", dev.grid_1d(n), (prhs, addr(dev, &z.norms), n)) }?;
    }
    let ones = vec![<A as BlasScalar>::one(); rows];
    dev.stream().memcpy_htod(&ones, &mut rhs.slice_mut(nl * rows..)).map_err(device_err("cuMemcpyHtoDAsync(ones)"))?;
    let prhs = addr(dev, &rhs);
    let mut third = Vec::with_capacity(nl);
    for (v, &p) in widths.iter().enumerate() {
        let mut t = alloc_zeros::<A>(dev, p * (nl + 1), "third moments")?;
        let (pa, lda) = z.block(dev, v);
        let pt = addr_mut(dev, &mut t);
        let third_moments =
            Gemm { ta: OP_N, tb: OP_N, m: p, n: nl + 1, k: rows, a: pa, lda, b: prhs, ldb: rows, c: pt, ldc: p };
        // SAFETY: block(v) is p x rows (ld lda), rhs rows x (nl + 1), t p x (nl + 1).
        unsafe { third_moments.run::<A>(h, "third moments") }?;
        third.push(t);
    }
    drop(blas);

    let norms_flat = download(dev, &z.norms, nl * rows, "row norms")?;
    let cross = download(dev, &cross, px * py, "cross products")?;
    let grams: Vec<Vec<A>> =
        grams.iter().zip(&widths).map(|(g, &p)| download(dev, g, p * p, "Gram")).collect::<Result<_>>()?;
    let third: Vec<Vec<A>> = third
        .iter()
        .zip(&widths)
        .map(|(t, &p)| download(dev, t, p * (nl + 1), "third moments"))
        .collect::<Result<_>>()?;
    sync(dev)?;
    // Undo the scales (as the CPU does): the cross block (x_u, y_v) carries s_u s_v, a Gram s_u^2,
    // column u of layer v's third moments s_v s_u^2 (the norms in the right-hand side are those of
    // the scaled values) and its last column, the sums, s_v.
    let s = &z.scales;
    let mut cross = scaled_f64(cross, 1.0);
    if s.iter().any(|&scale| scale != 1.0) {
        let per_feature = |range: std::ops::Range<usize>| -> Vec<f64> {
            range.flat_map(|u| std::iter::repeat_n(1.0 / s[u], widths[u])).collect()
        };
        let (fx, fy) = (per_feature(0..nx), per_feature(nx..nl));
        for (column, gy) in cross.chunks_mut(px.max(1)).zip(&fy) {
            column.iter_mut().zip(&fx).for_each(|(c, gx)| *c *= gx * gy);
        }
    }
    let grams_lower = grams.into_iter().enumerate().map(|(u, g)| scaled_f64(g, 1.0 / (s[u] * s[u]))).collect();
    let third = third
        .into_iter()
        .zip(&widths)
        .enumerate()
        .map(|(v, (t, &p))| {
            let mut t = scaled_f64(t, 1.0 / s[v]);
            for (u, column) in t.chunks_mut(p).enumerate().take(nl) {
                let back = 1.0 / (s[u] * s[u]);
                column.iter_mut().for_each(|c| *c *= back);
            }
            t
        })
        .collect();
    Ok(CkaBatchMoments { rows, cross, grams_lower, third, norms: unscaled_norms(&norms_flat, rows, s) })
}

/// The row norms of every layer (`rows` per layer, in layer order) with the squares of their
/// layer's scales undone.
fn unscaled_norms(flat: &[f64], rows: usize, scales: &[f64]) -> Vec<Vec<f64>> {
    flat.chunks(rows)
        .zip(scales)
        .map(|(norms, &s)| {
            let back = 1.0 / (s * s);
            norms.iter().map(|n| n * back).collect()
        })
        .collect()
}

/// Which products [`gram_terms`] forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TermsRoute {
    /// `n x n` Grams of the samples (`syrk`), then their Frobenius inner products.
    Sample,
    /// `p x q` cross products and `p x p` Grams, then their squared Frobenius norms:
    /// `<K_u, K_v>_F = ||U~^T V~||_F^2`.
    Feature,
}

/// `<K_u, K_v>_F` of the centered layers for each pair, and each layer's centered squared row
/// norms (see [`CkaGramTerms`]), in arithmetic `A`; only these scalars leave the device.
pub(crate) fn gram_terms<A: BlasScalar + Real>(
    dev: &CudaDevice,
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    route: TermsRoute,
) -> Result<CkaGramTerms> {
    let rows = check_layers(layers)?;
    let nl = layers.len();
    let mut ph = Phases::new();
    let dl: Vec<Layer> = layers.iter().map(|(name, m)| to_device(dev, name, m)).collect::<Result<_>>()?;
    ph.mark(dev, "inputs")?;
    let means = means_of(dev, &dl)?;
    ph.mark(dev, "column statistics")?;
    let z = shift_layers::<A>(dev, &dl, &means, 1, |_| 0)?;
    ph.mark(dev, "centering + row norms")?;
    let widths: Vec<usize> = dl.iter().map(|l| l.cols).collect();
    let blas = dev.blas()?;
    let h = *blas.handle();
    let mut inner = alloc_zeros::<f64>(dev, pairs.len(), "inner products")?;
    let pinner = addr_mut(dev, &mut inner);
    // Kept until the results are downloaded: the kernels queued on them may still run.
    let mut products: Vec<CudaSlice<A>> = Vec::new();
    match route {
        TermsRoute::Sample => {
            for (u, &p) in widths.iter().enumerate() {
                let mut g = alloc_zeros::<A>(dev, rows * rows, "sample Gram")?;
                let (pa, lda) = z.block(dev, u);
                let pg = addr_mut(dev, &mut g);
                // SAFETY: block(u) is p_u x rows (ld lda) within its group buffer; g holds
                // rows x rows.
                unsafe {
                    Syrk { trans: OP_T, n: rows, k: p, a: pa, lda, c: pg, ldc: rows }.run::<A>(h, "sample Gram")
                }?;
                products.push(g);
            }
            for (k, &(u, v)) in pairs.iter().enumerate() {
                let (gu, gv) = (addr(dev, &products[u]), addr(dev, &products[v]));
                // SAFETY: both Grams are rows x rows (ld rows); the output is pair k's slot.
                unsafe { sym_inner::<A>(dev, gu, gv, rows, rows, pinner + 8 * k as u64) }?;
            }
        }
        #[cfg(feature = "bench")]
        TermsRoute::Feature if nl == 2 && GramAlgo::from_env() == GramAlgo::Joint => {
            // SAFETY: z holds the two shifted layers in one group; inner holds one f64 per pair.
            products.push(unsafe { bench::joint_products::<A>(dev, h, &z, &widths, pairs, rows, pinner, &mut ph) }?);
        }
        TermsRoute::Feature => {
            let largest = pairs.iter().map(|&(u, v)| widths[u] * widths[v]).max().unwrap_or(1);
            let mut scratch = alloc_zeros::<A>(dev, largest, "products")?;
            let ps = addr_mut(dev, &mut scratch);
            products.push(scratch);
            for (idx, &(u, v)) in pairs.iter().enumerate() {
                let out = pinner + 8 * idx as u64;
                let (pu, pv) = (widths[u], widths[v]);
                let (au, ldu) = z.block(dev, u);
                if u == v {
                    // SAFETY: block(u) is p_u x rows (ld ldu); scratch holds at least p_u^2.
                    unsafe { feature_gram::<A>(h, pu, rows, au, ldu, ps, pu) }?;
                    ph.mark(dev, "products")?;
                    // SAFETY: the Gram's lower triangle, p_u x p_u (ld p_u), in scratch.
                    unsafe { sym_inner::<A>(dev, ps, ps, pu, pu, out) }?;
                    ph.mark(dev, "reductions")?;
                } else {
                    let (av, ldv) = z.block(dev, v);
                    let cross = Gemm {
                        ta: OP_N,
                        tb: OP_T,
                        m: pu,
                        n: pv,
                        k: rows,
                        a: au,
                        lda: ldu,
                        b: av,
                        ldb: ldv,
                        c: ps,
                        ldc: pu,
                    };
                    // SAFETY: blocks of p_u x rows and p_v x rows; scratch holds p_u p_v.
                    unsafe { cross.run::<A>(h, "cross product") }?;
                    ph.mark(dev, "products")?;
                    // ||C||_F^2 of the p_u x p_v product, read as row-major p_v x p_u.
                    // SAFETY: scratch holds the p_u p_v product.
                    unsafe { sumsq::<A>(dev, ps, pv, pu, pu, out) }?;
                    ph.mark(dev, "reductions")?;
                }
            }
        }
    }
    drop(blas);
    let mut inner = download(dev, &inner, pairs.len(), "inner products")?;
    let norms = download(dev, &z.norms, nl * rows, "row norms")?;
    sync(dev)?;
    drop(products);
    ph.mark(dev, "results")?;
    ph.finish();
    // Undo the scales: pair (u, v)'s products carry s_u s_v, their squares its square.
    let s = &z.scales;
    for (value, &(u, v)) in inner.iter_mut().zip(pairs) {
        let back = 1.0 / (s[u] * s[v]);
        *value *= back * back;
    }
    Ok(CkaGramTerms { inner, norms: unscaled_norms(&norms, rows, s) })
}

/// `out[0] += <A, B>_F` in f64 (`sym_inner_<a>`) of the symmetric `n x n` matrices given by
/// the lower triangles of the column-major `a` and `b` (leading dimension `ld`).
///
/// # Safety
/// `a` and `b` address `n x n` matrices of `A` (ld `ld`) and `out` one f64, all live on `dev`.
pub(super) unsafe fn sym_inner<A: BlasScalar>(
    dev: &CudaDevice,
    a: u64,
    b: u64,
    n: usize,
    ld: usize,
    out: u64,
) -> Result<()> {
    // SAFETY: sym_inner_<a>(const A* a, const A* b, tl_u64 n, tl_u64 ld, double* out); the
    // caller's contract covers the memory.
    unsafe { dev.launch(&format!("sym_inner_{}", A::SUFFIX), sym_cfg(dev, n), (a, b, n as u64, ld as u64, out)) }
}

/// `out[0] += ||X||_F^2` in f64 (`sumsq_<a>`) of the row-major `rows x cols` matrix `x` (rows
/// `stride` elements apart).
///
/// # Safety
/// `x` addresses such a matrix of `A` and `out` one f64, all live on `dev`.
pub(super) unsafe fn sumsq<A: BlasScalar>(
    dev: &CudaDevice,
    x: u64,
    rows: usize,
    cols: usize,
    stride: usize,
    out: u64,
) -> Result<()> {
    let cfg = dev.grid_2d(MatrixShape { rows, cols, stride });
    let no_shift = 0u64;
    // SAFETY: sumsq_<a>(const A* x, tl_u64 rows, tl_u64 cols, tl_u64 stride, const double* shift,
    // double* out), shift NULL; the caller's contract covers the memory.
    unsafe {
        dev.launch(&format!("sumsq_{}", A::SUFFIX), cfg, (x, rows as u64, cols as u64, stride as u64, no_shift, out))
    }
}

/// Grid of `shift` (four rows per block step): x over columns, y over groups of four rows, at
/// most the blocks resident at once (one wave).
fn shift_grid(dev: &CudaDevice, f: &cudarc::driver::CudaFunction, rows: usize, cols: usize) -> LaunchConfig {
    let target = dev.resident_blocks(f) as u64;
    let gx = (cols as u64).div_ceil(BLOCK as u64).clamp(1, target);
    let gy = (target / gx).clamp(1, 65_535).min((rows as u64).div_ceil(4)).max(1);
    LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Grid of `sym_inner` for an `n x n` triangle (x over rows below the diagonal, y over columns).
fn sym_cfg(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let target = (dev.sm_count() * BLOCKS_PER_SM) as u64;
    let n64 = n as u64;
    let gx = n64.div_ceil(BLOCK as u64).clamp(1, target);
    let gy = (target / gx).clamp(1, 65_535).min(n64).max(1);
    LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// The CPU's entry points on the device. `products_in_f64` picks the arithmetic of the shifted
/// copies and the products: f64 (for f64 data), else f32.
pub fn cka_batch_moments(
    ctx: &crate::Context,
    layers: &[(String, &Matrix)],
    shifts: &[Vec<f64>],
    nx: usize,
    products_in_f64: bool,
) -> Result<CkaBatchMoments> {
    let dev = device_of(ctx)?;
    if products_in_f64 {
        batch_moments::<f64>(dev, layers, shifts, nx)
    } else {
        batch_moments::<f32>(dev, layers, shifts, nx)
    }
}

/// Sample-space CKA terms on the device (`products_in_f64` as for [`cka_batch_moments`]).
pub fn cka_gram_terms(
    ctx: &crate::Context,
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    products_in_f64: bool,
) -> Result<CkaGramTerms> {
    let dev = device_of(ctx)?;
    if products_in_f64 {
        gram_terms::<f64>(dev, layers, pairs, TermsRoute::Sample)
    } else {
        gram_terms::<f32>(dev, layers, pairs, TermsRoute::Sample)
    }
}

/// The same terms through feature-space products (`p x q` cross products and `p x p` Grams),
/// for whole-data CKA on the device: no `n x n` matrix, and only scalars leave the device.
pub fn cka_feature_terms(
    ctx: &crate::Context,
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    products_in_f64: bool,
) -> Result<CkaGramTerms> {
    let dev = device_of(ctx)?;
    if products_in_f64 {
        gram_terms::<f64>(dev, layers, pairs, TermsRoute::Feature)
    } else {
        gram_terms::<f32>(dev, layers, pairs, TermsRoute::Feature)
    }
}

impl CudaDevice {
    /// `out[r] = sum over c of x[r, c]^2`, in f64 (overwrites `out`, `rows` elements).
    pub fn row_sqnorms<T: DeviceElement>(
        &self,
        x: &DeviceBuffer<T>,
        shape: MatrixShape,
        out: &mut DeviceBuffer<f64>,
    ) -> Result<()> {
        shape.check(x.len(), "x")?;
        check_vec(Some(out.len()), shape.rows, "out")?;
        let (rows, cols, stride) = (shape.rows as u64, shape.cols as u64, shape.stride as u64);
        let (px, _gx) = x.slice.device_ptr(self.stream());
        let (po, _go) = out.slice.device_ptr_mut(self.stream());
        // One warp per row.
        let cfg = self.grid_1d(rows * 32);
        // SAFETY: row_sqnorms_<t>(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
        // double* out); the shape was checked against x, out holds rows values.
        unsafe { self.launch(&format!("row_sqnorms_{}", T::SUFFIX), cfg, (px, rows, cols, stride, po)) }
    }

    /// Adds the sum of squares of all elements of the matrix to `out[0]`, in f64.
    pub fn sumsq<T: DeviceElement>(
        &self,
        x: &DeviceBuffer<T>,
        shape: MatrixShape,
        out: &mut DeviceBuffer<f64>,
    ) -> Result<()> {
        shape.check(x.len(), "x")?;
        if out.is_empty() {
            fail!(ShapeMismatch, "out: needs 1 element, the buffer is empty");
        }
        let (rows, cols, stride) = (shape.rows as u64, shape.cols as u64, shape.stride as u64);
        let (px, _gx) = x.slice.device_ptr(self.stream());
        let (po, _go) = out.slice.device_ptr_mut(self.stream());
        let no_shift = 0u64;
        // SAFETY: sumsq_<t>(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
        // const double* shift, double* out), shift NULL; the shape was checked against x, out
        // holds at least one value.
        unsafe {
            self.launch(&format!("sumsq_{}", T::SUFFIX), self.grid_2d(shape), (px, rows, cols, stride, no_shift, po))
        }
    }
}
