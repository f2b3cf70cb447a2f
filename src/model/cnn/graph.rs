//! The lowered layers as a list of operations on activation buffers, run forward (for
//! evaluation, keeping only what is still needed; for training, keeping everything) and backward.
//!
//! A buffer holds `m` images of one shape, image after image (NCHW). Buffer 0 is the input. Every
//! operation runs its images in parallel and reduces across images in a fixed order (per-image or
//! per-group partial sums added in image order), so results do not depend on the number of
//! threads; the products are faer's sequential GEMM inside each task.

use super::lower::{ConvLayer, DenseLayer, GroupNormLayer, Layer, Shape};
use crate::backend::cpu::cnn::{
    avgpool_backward, avgpool_forward, col2im_add, global_avgpool, groupnorm_backward, groupnorm_forward, im2col,
    ConvGeom,
};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// Images per task of a conv's weight gradient: the partial sums of a group are added in image
/// order, then the groups' partials in group order.
const GRAD_GROUP: usize = 4;

#[derive(Debug, Clone)]
pub(super) enum Step {
    Conv {
        conv: ConvLayer,
        geom: ConvGeom,
        src: usize,
        dst: usize,
    },
    /// GroupNorm of `src`, plus `residual` when there is one, then a ReLU when `relu`: a
    /// residual block's norms with the add and the ReLUs after them, in one pass per image
    /// (the backward needs the output only, for the ReLU's mask, not the values in between).
    GroupNorm {
        gn: GroupNormLayer,
        src: usize,
        residual: Option<usize>,
        relu: bool,
        dst: usize,
    },
    Relu {
        src: usize,
        dst: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
        in_s: Shape,
        out_s: Shape,
        src: usize,
        dst: usize,
    },
    GlobalAvgPool {
        in_s: Shape,
        src: usize,
        dst: usize,
    },
    Dense {
        dense: DenseLayer,
        src: usize,
        dst: usize,
    },
}

impl Step {
    pub fn dst(&self) -> usize {
        match *self {
            Step::Conv { dst, .. }
            | Step::GroupNorm { dst, .. }
            | Step::Relu { dst, .. }
            | Step::AvgPool { dst, .. }
            | Step::GlobalAvgPool { dst, .. }
            | Step::Dense { dst, .. } => dst,
        }
    }
    fn reads(&self) -> Vec<usize> {
        match *self {
            Step::GroupNorm { src, residual, .. } => std::iter::once(src).chain(residual).collect(),
            Step::Conv { src, .. }
            | Step::Relu { src, .. }
            | Step::AvgPool { src, .. }
            | Step::GlobalAvgPool { src, .. }
            | Step::Dense { src, .. } => vec![src],
        }
    }
}

/// The activation buffers of a chunk of `m` images (`None`: not computed, or freed), and spare
/// buffers for later operations: a buffer that is freed or replaced goes to the spares rather than
/// to the allocator, so a tape reused across minibatches or chunks allocates nothing large once
/// it has grown (fresh pages from the system cost more than the arithmetic on them).
#[derive(Debug, Default)]
pub(super) struct Tape {
    bufs: Vec<Option<Vec<f32>>>,
    spare: Vec<Vec<f32>>,
    /// Per buffer that a GroupNorm writes, each image's group statistics (mean,
    /// `1 / sqrt(var + eps)`), for the backward pass.
    norm_stats: Vec<Vec<(f32, f32)>>,
}

impl Tape {
    /// Buffer `b`, which must have been computed.
    pub fn get(&self, b: usize) -> &[f32] {
        self.bufs[b].as_deref().expect("an operation's input is computed before it")
    }

    /// Stores `v` as buffer `b`.
    pub fn set(&mut self, b: usize, v: Vec<f32>) {
        if let Some(old) = self.bufs[b].replace(v) {
            self.spare.push(old);
        }
    }

    fn free(&mut self, b: usize) {
        if let Some(v) = self.bufs[b].take() {
            self.spare.push(v);
        }
    }

    /// A buffer of `n` values, its contents unspecified: the smallest spare that holds them, else
    /// the largest spare grown.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        let fits =
            (0..self.spare.len()).filter(|&i| self.spare[i].capacity() >= n).min_by_key(|&i| self.spare[i].capacity());
        let pick = fits.or_else(|| (0..self.spare.len()).max_by_key(|&i| self.spare[i].capacity()));
        let mut v = pick.map(|i| self.spare.swap_remove(i)).unwrap_or_default();
        if v.len() >= n {
            v.truncate(n);
        } else {
            v.resize(n, 0.0);
        }
        v
    }

    fn take_zeroed(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.take(n);
        v.fill(0.0);
        v
    }

    /// Frees every buffer, then makes buffer 0 the images `input` (copied).
    pub fn reset(&mut self, buffers: usize, input: &[f32]) {
        self.reset_with(buffers, |x| x.copy_from_slice(input), input.len());
    }

    /// Frees every buffer, then makes buffer 0 a buffer of `len` values written by `fill`.
    pub fn reset_with(&mut self, buffers: usize, fill: impl FnOnce(&mut [f32]), len: usize) {
        for b in 0..self.bufs.len() {
            self.free(b);
        }
        self.bufs.resize(buffers, None);
        self.norm_stats.resize(buffers, Vec::new());
        let mut x = self.take(len);
        fill(&mut x);
        self.bufs[0] = Some(x);
    }

    /// The computed buffers, without the spares.
    pub fn fork(&self) -> Tape {
        Tape { bufs: self.bufs.clone(), spare: Vec::new(), norm_stats: self.norm_stats.clone() }
    }

    /// Adds `g` to buffer `b`, or makes it buffer `b` when there is none.
    fn accumulate(&mut self, b: usize, g: Vec<f32>) {
        match &mut self.bufs[b] {
            Some(d) => {
                d.par_iter_mut().zip(g.par_iter()).for_each(|(d, s)| *d += s);
                self.spare.push(g);
            }
            slot => *slot = Some(g),
        }
    }
}

/// The buffers of one training step, kept from step to step: the forward tape and the gradients
/// of the buffers.
#[derive(Debug, Default)]
pub(super) struct Workspace {
    pub tape: Tape,
    pub dbuf: Tape,
}

thread_local! {
    /// Each thread's im2col matrix, grown to the largest conv it has run.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch of `n` values (contents unspecified). `f` must not call it
/// again (the GEMMs inside run sequentially, so no other task runs on this thread meanwhile).
fn with_cols<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with_borrow_mut(|c| {
        if c.len() < n {
            c.resize(n, 0.0);
        }
        f(&mut c[..n])
    })
}

#[derive(Debug, Clone)]
pub(super) struct Graph {
    pub ops: Vec<Step>,
    /// Values per image of each buffer.
    pub sizes: Vec<usize>,
    /// The operations of each layer.
    pub layer_ops: Vec<Range<usize>>,
    /// The buffer holding each layer's output.
    pub layer_out: Vec<usize>,
    /// The last operation that reads each buffer (`None`: no operation reads it).
    last_read: Vec<Option<usize>>,
}

fn geom(conv: &ConvLayer, s: Shape) -> ConvGeom {
    ConvGeom {
        in_c: s.c,
        h: s.h,
        w: s.w,
        kernel: conv.kernel,
        stride: conv.stride,
        padding: conv.padding,
        oh: conv.out_side(s.h),
        ow: conv.out_side(s.w),
    }
}

impl Graph {
    pub fn new(input: Shape, layers: &[Layer], shapes: &[Shape]) -> Graph {
        let mut g = Graph {
            ops: Vec::new(),
            sizes: vec![input.numel()],
            layer_ops: Vec::new(),
            layer_out: Vec::new(),
            last_read: Vec::new(),
        };
        let mut cur = 0usize;
        let mut shape = input;
        for (layer, &out_s) in layers.iter().zip(shapes) {
            let start = g.ops.len();
            cur = match layer {
                Layer::Conv(c) => g.conv(c, shape, cur),
                Layer::GroupNorm(gn) => g.push(
                    Step::GroupNorm { gn: gn.clone(), src: cur, residual: None, relu: false, dst: 0 },
                    shape.numel(),
                ),
                Layer::Relu => g.push(Step::Relu { src: cur, dst: 0 }, shape.numel()),
                Layer::AvgPool { kernel, stride } => g.push(
                    Step::AvgPool { kernel: *kernel, stride: *stride, in_s: shape, out_s, src: cur, dst: 0 },
                    out_s.numel(),
                ),
                Layer::GlobalAvgPool => g.push(Step::GlobalAvgPool { in_s: shape, src: cur, dst: 0 }, out_s.numel()),
                // The same values, read as a vector.
                Layer::Flatten => cur,
                Layer::Dense(d) => g.push(Step::Dense { dense: d.clone(), src: cur, dst: 0 }, d.out_f),
                Layer::Block(b) => {
                    let s1 = Shape { c: b.conv1.out_c, h: b.conv1.out_side(shape.h), w: b.conv1.out_side(shape.w) };
                    let n = s1.numel();
                    // relu(gn1(conv1(x))), then relu(gn2(conv2(.)) + shortcut): the block's inner
                    // ReLU is the output of its second operation (`Cnn::unit_buffer`).
                    let t = g.conv(&b.conv1, shape, cur);
                    let t =
                        g.push(Step::GroupNorm { gn: b.gn1.clone(), src: t, residual: None, relu: true, dst: 0 }, n);
                    let t = g.conv(&b.conv2, s1, t);
                    let short = match &b.downsample {
                        Some((ds, dg)) => {
                            let s = g.conv(ds, shape, cur);
                            g.push(Step::GroupNorm { gn: dg.clone(), src: s, residual: None, relu: false, dst: 0 }, n)
                        }
                        None => cur,
                    };
                    g.push(Step::GroupNorm { gn: b.gn2.clone(), src: t, residual: Some(short), relu: true, dst: 0 }, n)
                }
            };
            shape = out_s;
            g.layer_ops.push(start..g.ops.len());
            g.layer_out.push(cur);
        }
        g.last_read = vec![None; g.sizes.len()];
        for (i, op) in g.ops.iter().enumerate() {
            for r in op.reads() {
                g.last_read[r] = Some(i);
            }
        }
        g
    }

    /// Appends `op` writing a new buffer of `size` values per image; returns the buffer.
    fn push(&mut self, mut op: Step, size: usize) -> usize {
        let dst = self.sizes.len();
        self.sizes.push(size);
        match &mut op {
            Step::Conv { dst: d, .. }
            | Step::GroupNorm { dst: d, .. }
            | Step::Relu { dst: d, .. }
            | Step::AvgPool { dst: d, .. }
            | Step::GlobalAvgPool { dst: d, .. }
            | Step::Dense { dst: d, .. } => *d = dst,
        }
        self.ops.push(op);
        dst
    }

    fn conv(&mut self, conv: &ConvLayer, s: Shape, src: usize) -> usize {
        let geom = geom(conv, s);
        let size = conv.out_c * geom.pixels();
        self.push(Step::Conv { conv: conv.clone(), geom, src, dst: 0 }, size)
    }

    /// Runs operations `ops` on the `m` images of `tape` with weights `w` (f32, set order). With
    /// `free`, a buffer is freed after its last reader unless `keep(buffer)`.
    pub fn forward(
        &self,
        w: &[&[f32]],
        m: usize,
        tape: &mut Tape,
        ops: Range<usize>,
        free: bool,
        keep: &dyn Fn(usize) -> bool,
    ) {
        for i in ops {
            let op = &self.ops[i];
            let dst = op.dst();
            let mut out = tape.take(m * self.sizes[dst]);
            match op {
                Step::Conv { conv, geom, src, .. } => conv_forward(conv, geom, w, tape.get(*src), &mut out),
                Step::GroupNorm { gn, src, residual, relu, .. } => {
                    let n = self.sizes[*src];
                    let mut stats = std::mem::take(&mut tape.norm_stats[dst]);
                    stats.resize(m * gn.groups, (0.0, 0.0));
                    let residual = residual.map(|r| tape.get(r));
                    out.par_chunks_mut(n)
                        .zip(tape.get(*src).par_chunks(n).zip(stats.par_chunks_mut(gn.groups)))
                        .enumerate()
                        .for_each(|(i, (y, (x, stats)))| {
                            let r = residual.map(|r| &r[i * n..(i + 1) * n]);
                            groupnorm_forward(x, w[gn.weight], w[gn.bias], gn.groups, gn.eps, r, *relu, stats, y)
                        });
                    tape.norm_stats[dst] = stats;
                }
                Step::Relu { src, .. } => out
                    .par_iter_mut()
                    .zip(tape.get(*src).par_iter())
                    .for_each(|(y, &x)| *y = if x > 0.0 { x } else { 0.0 }),
                Step::AvgPool { kernel, stride, in_s, out_s, src, .. } => {
                    out.par_chunks_mut(out_s.numel()).zip(tape.get(*src).par_chunks(in_s.numel())).for_each(|(y, x)| {
                        avgpool_forward(x, in_s.c, in_s.h, in_s.w, *kernel, *stride, out_s.h, out_s.w, y)
                    })
                }
                Step::GlobalAvgPool { in_s, src, .. } => out
                    .par_chunks_mut(in_s.c)
                    .zip(tape.get(*src).par_chunks(in_s.numel()))
                    .for_each(|(y, x)| global_avgpool(x, in_s.c, y)),
                Step::Dense { dense, src, .. } => dense_forward(dense, w, tape.get(*src), m, &mut out),
            }
            tape.set(dst, out);
            if free {
                for r in op.reads() {
                    if self.last_read[r].is_some_and(|l| l <= i) && !keep(r) {
                        tape.free(r);
                    }
                }
            }
        }
    }

    /// Gradients of every tensor (set order, `grads` zeroed by the caller) from `dlogits`, the
    /// gradient of the loss with respect to the last buffer, on the full tape of `m` images in
    /// `ws`. `dlogits` comes from (and its buffer returns to) `ws.dbuf`'s spares.
    pub fn backward(&self, w: &[&[f32]], m: usize, ws: &mut Workspace, dlogits: Vec<f32>, grads: &mut [Vec<f32>]) {
        let Workspace { tape, dbuf } = ws;
        for b in 0..dbuf.bufs.len() {
            dbuf.free(b);
        }
        dbuf.bufs.resize(self.sizes.len(), None);
        dbuf.bufs[*self.layer_out.last().expect("a CNN has layers")] = Some(dlogits);
        for op in self.ops.iter().rev() {
            let Some(mut dy) = dbuf.bufs[op.dst()].take() else { continue };
            match op {
                Step::Conv { conv, geom, src, .. } => {
                    // Every image's gradient is written in full by its task.
                    let mut dx = if *src != 0 { Some(dbuf.take(m * self.sizes[*src])) } else { None };
                    conv_backward(conv, geom, w, tape.get(*src), &dy, dx.as_deref_mut(), grads);
                    if let Some(dx) = dx {
                        dbuf.accumulate(*src, dx);
                    }
                }
                Step::GroupNorm { gn, src, residual, relu, dst } => {
                    let (x, y) = (tape.get(*src), tape.get(*dst));
                    let n = self.sizes[*src];
                    let c = gn.channels;
                    let mut dx = dbuf.take(x.len());
                    // The gradient of the sum before the ReLU, which the residual receives as is.
                    let mut dres = residual.map(|_| dbuf.take(dy.len()));
                    let dres_parts: Vec<Option<&mut [f32]>> = match &mut dres {
                        Some(d) => d.chunks_mut(n).map(Some).collect(),
                        None => (0..m).map(|_| None).collect(),
                    };
                    // Per image: dgamma then dbeta, added across images in order below.
                    let mut partial = vec![0f32; m * 2 * c];
                    dx.par_chunks_mut(n)
                        .zip(partial.par_chunks_mut(2 * c))
                        .zip(dy.par_chunks_mut(n).zip(dres_parts))
                        .zip(x.par_chunks(n).zip(y.par_chunks(n)))
                        .zip(tape.norm_stats[*dst].par_chunks(gn.groups))
                        .for_each(|((((dx, part), (dy, dres)), (x, y)), stats)| {
                            if *relu {
                                dy.iter_mut().zip(y).for_each(|(d, &y)| *d = if y > 0.0 { *d } else { 0.0 });
                            }
                            if let Some(dres) = dres {
                                dres.copy_from_slice(dy);
                            }
                            let (dg, db) = part.split_at_mut(c);
                            groupnorm_backward(x, dy, w[gn.weight], stats, dx, dg, db);
                        });
                    for part in partial.chunks(2 * c) {
                        add_into(&mut grads[gn.weight], &part[..c]);
                        add_into(&mut grads[gn.bias], &part[c..]);
                    }
                    if let (Some(r), Some(d)) = (residual, dres) {
                        dbuf.accumulate(*r, d);
                    }
                    dbuf.accumulate(*src, dx);
                }
                Step::Relu { dst, src } => {
                    let mut dx = dbuf.take(dy.len());
                    dx.par_iter_mut()
                        .zip(dy.par_iter().zip(tape.get(*dst).par_iter()))
                        .for_each(|(d, (&g, &y))| *d = if y > 0.0 { g } else { 0.0 });
                    dbuf.accumulate(*src, dx);
                }
                Step::AvgPool { kernel, stride, in_s, out_s, src, .. } => {
                    let mut dx = dbuf.take_zeroed(m * in_s.numel());
                    dx.par_chunks_mut(in_s.numel()).zip(dy.par_chunks(out_s.numel())).for_each(|(dx, dy)| {
                        avgpool_backward(dy, in_s.c, in_s.h, in_s.w, *kernel, *stride, out_s.h, out_s.w, dx)
                    });
                    dbuf.accumulate(*src, dx);
                }
                Step::GlobalAvgPool { in_s, src, .. } => {
                    let p = in_s.h * in_s.w;
                    let scale = 1.0 / p as f32;
                    let mut dx = dbuf.take(m * in_s.numel());
                    dx.par_chunks_mut(in_s.numel()).zip(dy.par_chunks(in_s.c)).for_each(|(dx, dy)| {
                        for (c, &g) in dy.iter().enumerate() {
                            dx[c * p..(c + 1) * p].fill(g * scale);
                        }
                    });
                    dbuf.accumulate(*src, dx);
                }
                Step::Dense { dense, src, .. } => {
                    let x = tape.get(*src);
                    let (fi, fo) = (dense.in_f, dense.out_f);
                    let dz = MatRef::from_row_major_slice(&dy, m, fo);
                    let xin = MatRef::from_row_major_slice(x, m, fi);
                    faer::linalg::matmul::matmul(
                        MatMut::from_row_major_slice_mut(&mut grads[dense.weight], fo, fi),
                        Accum::Add,
                        dz.transpose(),
                        xin,
                        1.0f32,
                        Par::Seq,
                    );
                    if let Some(b) = dense.bias {
                        for row in dy.chunks(fo) {
                            add_into(&mut grads[b], row);
                        }
                    }
                    if *src != 0 {
                        let mut dx = dbuf.take(m * fi);
                        let wt = MatRef::from_row_major_slice(w[dense.weight], fo, fi);
                        faer::linalg::matmul::matmul(
                            MatMut::from_row_major_slice_mut(&mut dx, m, fi),
                            Accum::Replace,
                            dz,
                            wt,
                            1.0f32,
                            Par::Seq,
                        );
                        dbuf.accumulate(*src, dx);
                    }
                }
            }
            dbuf.spare.push(dy);
        }
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// `out = conv(x)` for `m` images, each its own im2col and GEMM (`out_c x patch` by
/// `patch x pixels`).
pub(super) fn conv_forward(conv: &ConvLayer, g: &ConvGeom, w: &[&[f32]], x: &[f32], out: &mut [f32]) {
    let (patch, pixels) = (g.patch(), g.pixels());
    let in_size = g.in_c * g.h * g.w;
    let weight = MatRef::from_row_major_slice(w[conv.weight], conv.out_c, patch);
    let bias = conv.bias.map(|b| w[b]);
    out.par_chunks_mut(conv.out_c * pixels).zip(x.par_chunks(in_size)).for_each(|(y, x)| {
        let product = |y: &mut [f32], b: &[f32]| {
            faer::linalg::matmul::matmul(
                MatMut::from_row_major_slice_mut(y, conv.out_c, pixels),
                Accum::Replace,
                weight,
                MatRef::from_row_major_slice(b, patch, pixels),
                1.0f32,
                Par::Seq,
            )
        };
        if g.is_pointwise() {
            product(y, x);
        } else {
            with_cols(patch * pixels, |cols| {
                im2col(g, x, cols);
                product(y, cols);
            });
        }
        if let Some(bias) = bias {
            for (row, &bv) in y.chunks_mut(pixels).zip(bias) {
                row.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
}

/// The conv's weight (and bias) gradient added into `grads`, and the input's gradient written into
/// `dx` when given.
fn conv_backward(
    conv: &ConvLayer,
    g: &ConvGeom,
    w: &[&[f32]],
    x: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    grads: &mut [Vec<f32>],
) {
    let (patch, pixels) = (g.patch(), g.pixels());
    let in_size = g.in_c * g.h * g.w;
    let out_size = conv.out_c * pixels;
    let m = dy.len() / out_size;
    let weight = MatRef::from_row_major_slice(w[conv.weight], conv.out_c, patch);
    let want_dx = dx.is_some();
    let groups = m.div_ceil(GRAD_GROUP);
    let mut dx_parts: Vec<&mut [f32]> = match dx {
        Some(dx) => dx.chunks_mut(GRAD_GROUP * in_size).collect(),
        None => (0..groups).map(|_| &mut [][..]).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_parts
        .par_iter_mut()
        .enumerate()
        .map(|(k, dxg)| {
            let mut dw = vec![0f32; conv.out_c * patch];
            let mut db = vec![0f32; conv.out_c];
            with_cols(patch * pixels, |cols| {
                for i in k * GRAD_GROUP..((k + 1) * GRAD_GROUP).min(m) {
                    let xi = &x[i * in_size..(i + 1) * in_size];
                    let dyi = &dy[i * out_size..(i + 1) * out_size];
                    let dyi_m = MatRef::from_row_major_slice(dyi, conv.out_c, pixels);
                    let xcols: &[f32] = if g.is_pointwise() {
                        xi
                    } else {
                        im2col(g, xi, cols);
                        cols
                    };
                    faer::linalg::matmul::matmul(
                        MatMut::from_row_major_slice_mut(&mut dw, conv.out_c, patch),
                        Accum::Add,
                        dyi_m,
                        MatRef::from_row_major_slice(xcols, patch, pixels).transpose(),
                        1.0f32,
                        Par::Seq,
                    );
                    if conv.bias.is_some() {
                        for (d, row) in db.iter_mut().zip(dyi.chunks(pixels)) {
                            *d += row.iter().sum::<f32>();
                        }
                    }
                    if want_dx {
                        let dxi = &mut dxg[(i - k * GRAD_GROUP) * in_size..][..in_size];
                        // A pointwise conv's column matrix is the image: its gradient goes there.
                        let dcols: &mut [f32] = if g.is_pointwise() { dxi } else { cols };
                        faer::linalg::matmul::matmul(
                            MatMut::from_row_major_slice_mut(dcols, patch, pixels),
                            Accum::Replace,
                            weight.transpose(),
                            dyi_m,
                            1.0f32,
                            Par::Seq,
                        );
                        if !g.is_pointwise() {
                            dxi.fill(0.0);
                            col2im_add(g, cols, dxi);
                        }
                    }
                }
            });
            (dw, db)
        })
        .collect();
    for (dw, db) in &partials {
        add_into(&mut grads[conv.weight], dw);
        if let Some(b) = conv.bias {
            add_into(&mut grads[b], db);
        }
    }
}

/// `out = x W^T + b` for the `m` rows of `x`.
pub(super) fn dense_forward(d: &DenseLayer, w: &[&[f32]], x: &[f32], m: usize, out: &mut [f32]) {
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(out, m, d.out_f),
        Accum::Replace,
        MatRef::from_row_major_slice(x, m, d.in_f),
        MatRef::from_row_major_slice(w[d.weight], d.out_f, d.in_f).transpose(),
        1.0f32,
        Par::Seq,
    );
    if let Some(b) = d.bias {
        for row in out.chunks_mut(d.out_f) {
            add_into(row, w[b]);
        }
    }
}
