//! The CKA primitives on the device: the CUDA side of [`crate::backend::CkaBatchMoments`],
//! [`crate::backend::CkaGramTerms`] and column means, with the semantics of the CPU versions in
//! `backend/cpu.rs`.
//!
//! Each layer is read where it lives: host data is uploaded once per call (the rows it spans,
//! strides included), device memory (`Storage::Device`) is used in place after checking that it
//! belongs to the context's device. One pass (`shift_<t>_to_<a>`) subtracts the shift in f64,
//! rounds once to the arithmetic type `a` (f32 for f32, f16 and bf16 data, f64 for f64 data) and
//! writes the `features x rows` column-major buffer the products take, recording the first NaN
//! or Inf it meets; the dense products are cuBLAS's (`syrk` for Grams, `gemm` for the rest) in
//! full f32 or f64; reductions of their results run on the device in f64, and only small
//! results travel back.

use super::blas::{blas_check, dim, Acc, OP_N, OP_T};
use super::device::{
    addr, addr_mut, alloc_zeros, device_err, device_of, download, AnyBuffer, CudaDevice, BLOCK, BLOCKS_PER_SM,
};
use crate::backend::{CkaBatchMoments, CkaGramTerms};
use crate::error::{fail, Error, Result};
use crate::tensor::{DType, HostSlice, Matrix, Storage};
use cudarc::cublas::sys as cb;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

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

/// Launches kernel `name` with `cfg` and 64-bit arguments (device addresses and sizes).
fn launch(dev: &CudaDevice, name: &str, cfg: LaunchConfig, args: &[u64]) -> Result<()> {
    let f = dev.function(name)?;
    let mut b = dev.stream().launch_builder(f);
    for a in args {
        b.arg(a);
    }
    // SAFETY: every caller passes the kernel's parameters, all of which are 64 bits wide
    // (pointers and tl_u64), in order, with buffers sized for the shape it passes.
    let r = unsafe { b.launch(cfg) }.map(|_| ());
    dev.launched(name, r)
}

/// How the feature route forms a layer's Gram `U~^T U~` (lower triangle), chosen per call from
/// `TL_CUDA_GRAM` (internal, for benchmarking: `syrk`, `joint`, `recursive` or `recursive:<base>`,
/// `gemm`); the default is [`GramAlgo::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramAlgo {
    /// One `cublas<t>syrk` per Gram.
    Syrk,
    /// With exactly two layers (a pair), one `syrk` of the side-by-side `[X~ | Y~]` buffer: its
    /// lower triangle holds both Grams and the cross product `Y~^T X~`. Otherwise as `Syrk`.
    Joint,
    /// A 2 x 2 split: two half-size Grams (recursively) and one `gemm` for the off-diagonal
    /// block, down to `syrk` at widths <= base.
    Recursive(usize),
    /// The full `gemm` `U~^T U~` (twice the FLOPs of `syrk`, at the gemm rate).
    Gemm,
}

impl GramAlgo {
    /// Measured on an H200 (docs/gpu-runs.md, 2026-11-27): for a 65536 x 2048 pair, cka_matrix
    /// took 26.4 ms with `syrk`, 28.0 with `joint`, 31.1 with `recursive:1024`, 33.4 with `gemm`.
    pub const DEFAULT: GramAlgo = GramAlgo::Syrk;

    /// Parses `syrk`, `joint`, `recursive`, `recursive:<base>` or `gemm`.
    pub fn parse(s: &str) -> Option<GramAlgo> {
        match s.trim() {
            "syrk" => Some(GramAlgo::Syrk),
            "joint" => Some(GramAlgo::Joint),
            "gemm" => Some(GramAlgo::Gemm),
            "recursive" => Some(GramAlgo::Recursive(1024)),
            r => r
                .strip_prefix("recursive:")
                .and_then(|b| b.parse::<usize>().ok())
                .filter(|&b| b >= 32)
                .map(GramAlgo::Recursive),
        }
    }

    fn from_env() -> GramAlgo {
        std::env::var("TL_CUDA_GRAM").ok().and_then(|v| GramAlgo::parse(&v)).unwrap_or(GramAlgo::DEFAULT)
    }
}

/// The lower triangle of `C = A A^T` for the `p x k` column-major `A` (leading dimension `lda`)
/// into `C` (leading dimension `ldc`), by `algo` (`Joint` is decided by the caller and is
/// `Syrk` here).
#[allow(clippy::too_many_arguments)]
fn gram<A: Acc>(
    h: cb::cublasHandle_t,
    algo: GramAlgo,
    p: usize,
    k: i32,
    a: u64,
    lda: usize,
    c: u64,
    ldc: usize,
) -> Result<()> {
    let sz = std::mem::size_of::<A>() as u64;
    match algo {
        GramAlgo::Recursive(base) if p > base && p >= 64 => {
            // Split at a multiple of 32 near the middle: C11 = A1 A1^T, C22 = A2 A2^T,
            // C21 = A2 A1^T (p2 x p1, below the diagonal).
            let p1 = (p / 2).next_multiple_of(32).min(p - 32);
            let p2 = p - p1;
            gram::<A>(h, algo, p1, k, a, lda, c, ldc)?;
            gram::<A>(h, algo, p2, k, a + sz * p1 as u64, lda, c + sz * (p1 * ldc + p1) as u64, ldc)?;
            // SAFETY: A2 is p2 x k and A1 p1 x k within A (ld lda); C21 lies within C.
            blas_check("cublas gemm (Gram block)", unsafe {
                A::gemm(
                    h,
                    OP_N,
                    OP_T,
                    dim(p2, "features")?,
                    dim(p1, "features")?,
                    k,
                    a + sz * p1 as u64,
                    dim(lda, "ld")?,
                    a,
                    dim(lda, "ld")?,
                    c + sz * p1 as u64,
                    dim(ldc, "ld")?,
                )
            })
        }
        GramAlgo::Gemm => {
            // SAFETY: A is p x k (ld lda); C holds p x p (ld ldc).
            blas_check("cublas gemm (Gram)", unsafe {
                A::gemm(
                    h,
                    OP_N,
                    OP_T,
                    dim(p, "features")?,
                    dim(p, "features")?,
                    k,
                    a,
                    dim(lda, "ld")?,
                    a,
                    dim(lda, "ld")?,
                    c,
                    dim(ldc, "ld")?,
                )
            })
        }
        _ => {
            // SAFETY: A is p x k (ld lda); C holds p x p (ld ldc).
            blas_check("cublas syrk (Gram)", unsafe {
                A::syrk(h, OP_N, dim(p, "features")?, k, a, dim(lda, "ld")?, c, dim(ldc, "ld")?)
            })
        }
    }
}

/// Wall time per phase of the last `gram_terms` call, when `TL_CKA_PHASES=1` (which also
/// synchronises the stream at each phase boundary, so the phases do not overlap).
static LAST_PHASES: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

/// The phases of the last CKA terms call made with `TL_CKA_PHASES=1`: (name, milliseconds).
#[doc(hidden)]
pub fn last_phases() -> Vec<(String, f64)> {
    LAST_PHASES.lock().map(|v| v.clone()).unwrap_or_default()
}

struct Phases {
    on: bool,
    t: std::time::Instant,
    acc: Vec<(String, f64)>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            on: std::env::var("TL_CKA_PHASES").is_ok_and(|v| v == "1"),
            t: std::time::Instant::now(),
            acc: Vec::new(),
        }
    }
    /// Ends the current phase (synchronising first), adding its time to `name`.
    fn mark(&mut self, dev: &CudaDevice, name: &str) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        sync(dev)?;
        let ms = self.t.elapsed().as_secs_f64() * 1e3;
        match self.acc.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 += ms,
            None => self.acc.push((name.to_string(), ms)),
        }
        self.t = std::time::Instant::now();
        Ok(())
    }
    fn finish(self) {
        if self.on {
            if let Ok(mut g) = LAST_PHASES.lock() {
                *g = self.acc;
            }
        }
    }
}

/// The grid of `colstats` (as `colsum`'s): column tiles of 32 by chunks of rows.
fn colstats_grid(dev: &CudaDevice, rows: u64, cols: u64) -> (LaunchConfig, u64) {
    let target = (dev.sm_count() * BLOCKS_PER_SM) as u64;
    let gx = cols.div_ceil(32).clamp(1, 1024);
    let gy = (target / gx).clamp(1, 65_535).min(rows.div_ceil(8)).max(1);
    let rows_per_block = rows.div_ceil(gy).next_multiple_of(8);
    (LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }, rows_per_block)
}

/// Grid of a row-by-column kernel (x over columns, y over rows), as `CudaDevice::grid_2d`.
fn grid_2d(dev: &CudaDevice, rows: usize, cols: usize) -> LaunchConfig {
    dev.grid_2d(super::MatrixShape::contiguous(rows, cols))
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
        launch(
            dev,
            &format!("colstats_{}", l.suffix()),
            cfg,
            &[l.ptr, rows, cols, l.stride as u64, ps + 8 * start as u64, pv + 4 * start as u64, pb + 8 * u as u64, rpb],
        )?;
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
struct Shifted<A: Acc> {
    /// One buffer per group; `ld[g]` features (rows of the column-major matrix) each.
    bufs: Vec<CudaSlice<A>>,
    ld: Vec<usize>,
    /// Group and feature offset of each layer.
    group: Vec<usize>,
    offset: Vec<usize>,
    /// Squared norms of the shifted rows, computed from the rounded values: layer `u` at
    /// `u * rows`, column-major `rows x layers`.
    norms: CudaSlice<f64>,
}

/// Shifts every layer; `group_of(u)` puts layer `u` in a buffer. Returns the first NaN / Inf as
/// an error.
fn shift_layers<A: Acc>(
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
        let buf = unsafe { dev.stream().alloc::<A>((g * rows).max(1)) }
            .map_err(|e| Error::Device(super::device::describe("cuMemAlloc(shifted layers)", &e)))?;
        bufs.push(buf);
    }
    let flat: Vec<f64> = shifts.concat();
    let dshift = dev.stream().clone_htod(&flat).map_err(device_err("cuMemcpyHtoDAsync(shift)"))?;
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
        launch(
            dev,
            &name,
            shift_grid(dev, dev.function(&name)?, l.rows, l.cols),
            &[
                l.ptr,
                rows as u64,
                cols,
                l.stride as u64,
                pshift + 8 * start as u64,
                y,
                ld[g] as u64,
                pbad + 8 * u as u64,
            ],
        )?;
        // Squared row norms of the rounded values: the layer's block read as row-major
        // `rows x cols` with row stride ld; one warp per row.
        launch(
            dev,
            &format!("row_sqnorms_{}", A::SUFFIX),
            dev.grid_1d(rows as u64 * 32),
            &[y, rows as u64, cols, ld[g] as u64, pnorms + 8 * (u * rows) as u64],
        )?;
        start += l.cols;
    }
    let bad = download(dev, &bad, nl, "flags")?;
    sync(dev)?;
    for (u, l) in layers.iter().enumerate() {
        if bad[u] != u64::MAX {
            return Err(nonfinite(dev, l, bad[u]));
        }
    }
    Ok(Shifted { bufs, ld, group, offset, norms })
}

impl<A: Acc> Shifted<A> {
    /// Device address and leading dimension of layer `u`'s `features x rows` block.
    fn block(&self, dev: &CudaDevice, u: usize) -> (u64, usize) {
        let g = self.group[u];
        (addr(dev, &self.bufs[g]) + (std::mem::size_of::<A>() * self.offset[u]) as u64, self.ld[g])
    }
}

fn to_f64<A: Acc>(v: Vec<A>) -> Vec<f64> {
    v.into_iter().map(Acc::to_f64).collect()
}

fn check_layers(layers: &[(String, &Matrix)]) -> Result<usize> {
    let rows = layers[0].1.rows();
    if let Some((name, m)) = layers.iter().find(|(_, m)| m.rows() != rows) {
        fail!(ShapeMismatch, "{name} has {} rows, {} has {rows}", m.rows(), layers[0].0);
    }
    Ok(rows)
}

/// The moments of one batch (see [`CkaBatchMoments`]) in arithmetic `A`.
pub(crate) fn batch_moments<A: Acc>(
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
    let k = dim(rows, "rows")?;
    let blas = dev.blas()?;
    let h = *blas.handle();

    // All cross products at once: (px x rows) (py x rows)^T.
    let mut cross = alloc_zeros::<A>(dev, px * py, "cross products")?;
    let pc = addr_mut(dev, &mut cross);
    let (bx, by) = (addr(dev, &z.bufs[0]), addr(dev, &z.bufs[1]));
    // SAFETY: column-major operands of the stated shapes in live buffers.
    blas_check("cublas gemm (cross products)", unsafe {
        A::gemm(
            h,
            OP_N,
            OP_T,
            dim(px, "x features")?,
            dim(py, "y features")?,
            k,
            bx,
            dim(px, "ld")?,
            by,
            dim(py, "ld")?,
            pc,
            dim(px, "ld")?,
        )
    })?;

    // Each layer's Gram, lower triangle.
    let mut grams = Vec::with_capacity(nl);
    for (u, &p) in widths.iter().enumerate() {
        let mut g = alloc_zeros::<A>(dev, p * p, "Gram")?;
        let (pa, lda) = z.block(dev, u);
        let pg = addr_mut(dev, &mut g);
        // SAFETY: as above.
        blas_check("cublas syrk (Gram)", unsafe {
            A::syrk(h, OP_N, dim(p, "features")?, k, pa, dim(lda, "ld")?, pg, dim(p, "ld")?)
        })?;
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
        launch(dev, "convert_f64_to_f32", dev.grid_1d(n), &[prhs, addr(dev, &z.norms), n])?;
    }
    let ones = vec![A::one(); rows];
    dev.stream().memcpy_htod(&ones, &mut rhs.slice_mut(nl * rows..)).map_err(device_err("cuMemcpyHtoDAsync(ones)"))?;
    let prhs = addr(dev, &rhs);
    let mut third = Vec::with_capacity(nl);
    for (v, &p) in widths.iter().enumerate() {
        let mut t = alloc_zeros::<A>(dev, p * (nl + 1), "third moments")?;
        let (pa, lda) = z.block(dev, v);
        let pt = addr_mut(dev, &mut t);
        // SAFETY: as above.
        blas_check("cublas gemm (third moments)", unsafe {
            A::gemm(
                h,
                OP_N,
                OP_N,
                dim(p, "features")?,
                dim(nl + 1, "layers")?,
                k,
                pa,
                dim(lda, "ld")?,
                prhs,
                k,
                pt,
                dim(p, "ld")?,
            )
        })?;
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
    Ok(CkaBatchMoments {
        rows,
        cross: to_f64(cross),
        grams_lower: grams.into_iter().map(to_f64).collect(),
        third: third.into_iter().map(to_f64).collect(),
        norms: norms_flat.chunks(rows).map(|c| c.to_vec()).collect(),
    })
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
pub(crate) fn gram_terms<A: Acc>(
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
    let k = dim(rows, "rows")?;
    let blas = dev.blas()?;
    let h = *blas.handle();
    let mut inner = alloc_zeros::<f64>(dev, pairs.len(), "inner products")?;
    let pinner = addr_mut(dev, &mut inner);
    let target = (dev.sm_count() * BLOCKS_PER_SM) as u64;
    let sym_inner = |a: u64, b: u64, n: usize, out: u64| -> Result<()> {
        let n64 = n as u64;
        let gx = n64.div_ceil(BLOCK as u64).clamp(1, target);
        let gy = (target / gx).clamp(1, 65_535).min(n64).max(1);
        let cfg = LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        launch(dev, &format!("sym_inner_{}", A::SUFFIX), cfg, &[a, b, n64, n64, out])
    };
    match route {
        TermsRoute::Sample => {
            let n = dim(rows, "rows")?;
            let mut grams = Vec::with_capacity(nl);
            for (u, &p) in widths.iter().enumerate() {
                let mut g = alloc_zeros::<A>(dev, rows * rows, "sample Gram")?;
                let (pa, lda) = z.block(dev, u);
                let pg = addr_mut(dev, &mut g);
                // SAFETY: block(u) is p_u x rows (ld lda); g is rows x rows.
                blas_check("cublas syrk (sample Gram)", unsafe {
                    A::syrk(h, OP_T, n, dim(p, "features")?, pa, dim(lda, "ld")?, pg, n)
                })?;
                grams.push(g);
            }
            for (k, &(u, v)) in pairs.iter().enumerate() {
                sym_inner(addr(dev, &grams[u]), addr(dev, &grams[v]), rows, pinner + 8 * k as u64)?;
            }
            drop(blas);
            let inner = download(dev, &inner, pairs.len(), "inner products")?;
            let norms = download(dev, &z.norms, nl * rows, "row norms")?;
            sync(dev)?;
            drop(grams);
            Ok(CkaGramTerms { inner, norms: norms.chunks(rows).map(|c| c.to_vec()).collect() })
        }
        TermsRoute::Feature => {
            let algo = GramAlgo::from_env();
            let sz = std::mem::size_of::<A>() as u64;
            if algo == GramAlgo::Joint && nl == 2 {
                // One syrk of the side-by-side buffer (both layers in group 0, ld = p + q): the
                // lower triangle holds Gram(0), Gram(1) and block (1, 0) = U~_1^T U~_0.
                let w = z.ld[0];
                let mut scratch = alloc_zeros::<A>(dev, w * w, "products")?;
                let ps = addr_mut(dev, &mut scratch);
                let (base, ldb) = z.block(dev, 0);
                // SAFETY: the buffer is w x rows (ld w); scratch holds w x w.
                blas_check("cublas syrk (joint Gram)", unsafe {
                    A::syrk(h, OP_N, dim(w, "features")?, k, base, dim(ldb, "ld")?, ps, dim(w, "ld")?)
                })?;
                ph.mark(dev, "products")?;
                for (idx, &(u, v)) in pairs.iter().enumerate() {
                    let out = pinner + 8 * idx as u64;
                    let (ou, ov) = (z.offset[u], z.offset[v]);
                    if u == v {
                        let d = ps + sz * (ou * w + ou) as u64;
                        launch(
                            dev,
                            &format!("sym_inner_{}", A::SUFFIX),
                            sym_cfg(dev, widths[u]),
                            &[d, d, widths[u] as u64, w as u64, out],
                        )?;
                    } else {
                        // The block below the diagonal: rows of the later layer, columns of the
                        // earlier; read row-major it is (earlier width) x (later width), stride w.
                        let ((oa, pa), (ob, pb)) = if ou < ov {
                            ((ou, widths[u]), (ov, widths[v]))
                        } else {
                            ((ov, widths[v]), (ou, widths[u]))
                        };
                        launch(
                            dev,
                            &format!("sumsq_{}", A::SUFFIX),
                            grid_2d(dev, pa, pb),
                            &[ps + sz * (oa * w + ob) as u64, pa as u64, pb as u64, w as u64, out],
                        )?;
                    }
                }
                ph.mark(dev, "reductions")?;
                drop(blas);
                let inner = download(dev, &inner, pairs.len(), "inner products")?;
                let norms = download(dev, &z.norms, nl * rows, "row norms")?;
                sync(dev)?;
                ph.mark(dev, "results")?;
                ph.finish();
                return Ok(CkaGramTerms { inner, norms: norms.chunks(rows).map(|c| c.to_vec()).collect() });
            }
            let largest = pairs.iter().map(|&(u, v)| widths[u] * widths[v]).max().unwrap_or(1);
            let mut scratch = alloc_zeros::<A>(dev, largest, "products")?;
            let ps = addr_mut(dev, &mut scratch);
            for (idx, &(u, v)) in pairs.iter().enumerate() {
                let out = pinner + 8 * idx as u64;
                let (pu, pv) = (widths[u], widths[v]);
                let (au, ldu) = z.block(dev, u);
                if u == v {
                    gram::<A>(h, algo, pu, k, au, ldu, ps, pu)?;
                    ph.mark(dev, "products")?;
                    sym_inner(ps, ps, pu, out)?;
                    ph.mark(dev, "reductions")?;
                } else {
                    let (av, ldv) = z.block(dev, v);
                    // SAFETY: blocks of p_u x rows and p_v x rows; scratch holds p_u p_v.
                    blas_check("cublas gemm (cross product)", unsafe {
                        A::gemm(
                            h,
                            OP_N,
                            OP_T,
                            dim(pu, "features")?,
                            dim(pv, "features")?,
                            k,
                            au,
                            dim(ldu, "ld")?,
                            av,
                            dim(ldv, "ld")?,
                            ps,
                            dim(pu, "ld")?,
                        )
                    })?;
                    ph.mark(dev, "products")?;
                    // ||C||_F^2 of the p_u x p_v product, read as row-major p_v x p_u.
                    launch(
                        dev,
                        &format!("sumsq_{}", A::SUFFIX),
                        grid_2d(dev, pv, pu),
                        &[ps, pv as u64, pu as u64, pu as u64, out],
                    )?;
                    ph.mark(dev, "reductions")?;
                }
            }
            drop(blas);
            let inner = download(dev, &inner, pairs.len(), "inner products")?;
            let norms = download(dev, &z.norms, nl * rows, "row norms")?;
            sync(dev)?;
            ph.mark(dev, "results")?;
            ph.finish();
            Ok(CkaGramTerms { inner, norms: norms.chunks(rows).map(|c| c.to_vec()).collect() })
        }
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

/// Entry points with the CPU's signatures (`wide`: f64 arithmetic).
pub fn cka_batch_moments(
    ctx: &crate::Context,
    layers: &[(String, &Matrix)],
    shifts: &[Vec<f64>],
    nx: usize,
    wide: bool,
) -> Result<CkaBatchMoments> {
    let dev = device_of(ctx)?;
    if wide {
        batch_moments::<f64>(dev, layers, shifts, nx)
    } else {
        batch_moments::<f32>(dev, layers, shifts, nx)
    }
}

/// Sample-space CKA terms on the device.
pub fn cka_gram_terms(
    ctx: &crate::Context,
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    wide: bool,
) -> Result<CkaGramTerms> {
    let dev = device_of(ctx)?;
    if wide {
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
    wide: bool,
) -> Result<CkaGramTerms> {
    let dev = device_of(ctx)?;
    if wide {
        gram_terms::<f64>(dev, layers, pairs, TermsRoute::Feature)
    } else {
        gram_terms::<f32>(dev, layers, pairs, TermsRoute::Feature)
    }
}
