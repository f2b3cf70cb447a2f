//! Benchmark-only knobs of the CKA terms, compiled with the `bench` feature: the Gram algorithm
//! of the feature route (`TL_CUDA_GRAM`) and the phase timer (`TL_CKA_PHASES`), which
//! `benches/gpu.rs` (b) uses to compare the algorithms and to split one call's time.

use super::{sumsq, sym_inner, Shifted};
use crate::backend::cuda::blas::{BlasScalar, Gemm, Handle, Syrk, OP_N, OP_T};
use crate::backend::cuda::device::{addr_mut, alloc_zeros, CudaDevice};
use crate::error::Result;
use cudarc::driver::CudaSlice;

/// How the feature route forms a layer's Gram `U~^T U~` (lower triangle), chosen per call from
/// `TL_CUDA_GRAM` (`syrk`, `joint`, `recursive` or `recursive:<base>`, `gemm`); the default, and
/// the only algorithm without the `bench` feature, is [`GramAlgo::DEFAULT`].
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

    pub(super) fn from_env() -> GramAlgo {
        std::env::var("TL_CUDA_GRAM").ok().and_then(|v| GramAlgo::parse(&v)).unwrap_or(GramAlgo::DEFAULT)
    }
}

/// The lower triangle of `C = A A^T` for the `p x k` column-major `A` (leading dimension `lda`)
/// into `C` (leading dimension `ldc`), by `algo` (`Joint` is decided by the caller and is
/// `Syrk` here).
///
/// # Safety
/// As [`Syrk::run`] for these shapes.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gram<A: BlasScalar>(
    h: Handle,
    algo: GramAlgo,
    p: usize,
    k: usize,
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
            let (a2, c22) = (a + sz * p1 as u64, c + sz * (p1 * ldc + p1) as u64);
            // SAFETY: A1 (p1 x k) and A2 (p2 x k) lie within A, C11 and C22 within C.
            unsafe {
                gram::<A>(h, algo, p1, k, a, lda, c, ldc)?;
                gram::<A>(h, algo, p2, k, a2, lda, c22, ldc)?;
            }
            let block =
                Gemm { ta: OP_N, tb: OP_T, m: p2, n: p1, k, a: a2, lda, b: a, ldb: lda, c: c + sz * p1 as u64, ldc };
            // SAFETY: A2 is p2 x k and A1 p1 x k within A (ld lda); C21 lies within C.
            unsafe { block.run::<A>(h, "Gram block") }
        }
        GramAlgo::Gemm => {
            let full = Gemm { ta: OP_N, tb: OP_T, m: p, n: p, k, a, lda, b: a, ldb: lda, c, ldc };
            // SAFETY: A is p x k (ld lda); C holds p x p (ld ldc).
            unsafe { full.run::<A>(h, "Gram") }
        }
        // SAFETY: A is p x k (ld lda); C holds p x p (ld ldc).
        _ => unsafe { Syrk { trans: OP_N, n: p, k, a, lda, c, ldc }.run::<A>(h, "Gram") },
    }
}

/// The feature route's terms of a pair by one syrk of the side-by-side buffer (both layers in
/// group 0, ld = p + q): the lower triangle holds Gram(0), Gram(1) and block (1, 0) =
/// `U~_1^T U~_0`. Returns the product buffer, which must outlive the queued reductions.
///
/// # Safety
/// `z` holds the shifted layers of `widths` in one group of `rows` columns, and `inner`
/// addresses one f64 per pair, all live on `dev`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn joint_products<A: BlasScalar>(
    dev: &CudaDevice,
    h: Handle,
    z: &Shifted<A>,
    widths: &[usize],
    pairs: &[(usize, usize)],
    rows: usize,
    inner: u64,
    ph: &mut Phases,
) -> Result<CudaSlice<A>> {
    let sz = std::mem::size_of::<A>() as u64;
    let w = z.ld[0];
    let mut scratch = alloc_zeros::<A>(dev, w * w, "products")?;
    let ps = addr_mut(dev, &mut scratch);
    let (base, ldb) = z.block(dev, 0);
    // SAFETY: the buffer is w x rows (ld w); scratch holds w x w.
    unsafe { Syrk { trans: OP_N, n: w, k: rows, a: base, lda: ldb, c: ps, ldc: w }.run::<A>(h, "joint Gram") }?;
    ph.mark(dev, "products")?;
    for (idx, &(u, v)) in pairs.iter().enumerate() {
        let out = inner + 8 * idx as u64;
        let (ou, ov) = (z.offset[u], z.offset[v]);
        if u == v {
            let d = ps + sz * (ou * w + ou) as u64;
            // SAFETY: Gram(u) is the widths[u]-wide diagonal block of scratch (ld w).
            unsafe { sym_inner::<A>(dev, d, d, widths[u], w, out) }?;
        } else {
            // The block below the diagonal: rows of the later layer, columns of the earlier;
            // read row-major it is (earlier width) x (later width), stride w.
            let ((oa, pa), (ob, pb)) =
                if ou < ov { ((ou, widths[u]), (ov, widths[v])) } else { ((ov, widths[v]), (ou, widths[u])) };
            // SAFETY: the block lies within scratch.
            unsafe { sumsq::<A>(dev, ps + sz * (oa * w + ob) as u64, pa, pb, w, out) }?;
        }
    }
    ph.mark(dev, "reductions")?;
    Ok(scratch)
}

/// Wall time per phase of the last `gram_terms` call, when `TL_CKA_PHASES=1` (which also
/// synchronises the stream at each phase boundary, so the phases do not overlap).
static LAST_PHASES: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

/// The phases of the last CKA terms call made with `TL_CKA_PHASES=1`: (name, milliseconds).
pub fn last_phases() -> Vec<(String, f64)> {
    LAST_PHASES.lock().map(|v| v.clone()).unwrap_or_default()
}

/// The phase timer of `gram_terms`, on when `TL_CKA_PHASES=1`.
pub(in crate::backend::cuda) struct Phases {
    on: bool,
    t: std::time::Instant,
    acc: Vec<(String, f64)>,
}

impl Phases {
    pub(super) fn new() -> Self {
        Phases {
            on: std::env::var("TL_CKA_PHASES").is_ok_and(|v| v == "1"),
            t: std::time::Instant::now(),
            acc: Vec::new(),
        }
    }

    /// Ends the current phase (synchronising first), adding its time to `name`.
    pub(super) fn mark(&mut self, dev: &CudaDevice, name: &str) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        dev.synchronize()?;
        let ms = self.t.elapsed().as_secs_f64() * 1e3;
        match self.acc.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 += ms,
            None => self.acc.push((name.to_string(), ms)),
        }
        self.t = std::time::Instant::now();
        Ok(())
    }

    pub(super) fn finish(self) {
        if self.on {
            if let Ok(mut g) = LAST_PHASES.lock() {
                *g = self.acc;
            }
        }
    }
}
