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
    Conv { conv: ConvLayer, geom: ConvGeom, src: usize, dst: usize },
    GroupNorm { gn: GroupNormLayer, src: usize, dst: usize },
    Relu { src: usize, dst: usize },
    AvgPool { kernel: usize, stride: usize, in_s: Shape, out_s: Shape, src: usize, dst: usize },
    GlobalAvgPool { in_s: Shape, src: usize, dst: usize },
    Dense { dense: DenseLayer, src: usize, dst: usize },
    Add { a: usize, b: usize, dst: usize },
}

impl Step {
    pub fn dst(&self) -> usize {
        match *self {
            Step::Conv { dst, .. }
            | Step::GroupNorm { dst, .. }
            | Step::Relu { dst, .. }
            | Step::AvgPool { dst, .. }
            | Step::GlobalAvgPool { dst, .. }
            | Step::Dense { dst, .. }
            | Step::Add { dst, .. } => dst,
        }
    }
    fn reads(&self) -> Vec<usize> {
        match *self {
            Step::Conv { src, .. }
            | Step::GroupNorm { src, .. }
            | Step::Relu { src, .. }
            | Step::AvgPool { src, .. }
            | Step::GlobalAvgPool { src, .. }
            | Step::Dense { src, .. } => vec![src],
            Step::Add { a, b, .. } => vec![a, b],
        }
    }
}

/// Activation buffers of a chunk of `m` images; `None` where not computed or already freed.
pub(super) type Tape = Vec<Option<Vec<f32>>>;

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
                Layer::GroupNorm(gn) => g.push(Step::GroupNorm { gn: gn.clone(), src: cur, dst: 0 }, shape.numel()),
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
                    let t = g.conv(&b.conv1, shape, cur);
                    let t = g.push(Step::GroupNorm { gn: b.gn1.clone(), src: t, dst: 0 }, n);
                    let t = g.push(Step::Relu { src: t, dst: 0 }, n);
                    let t = g.conv(&b.conv2, s1, t);
                    let t = g.push(Step::GroupNorm { gn: b.gn2.clone(), src: t, dst: 0 }, n);
                    let short = match &b.downsample {
                        Some((ds, dg)) => {
                            let s = g.conv(ds, shape, cur);
                            g.push(Step::GroupNorm { gn: dg.clone(), src: s, dst: 0 }, n)
                        }
                        None => cur,
                    };
                    let t = g.push(Step::Add { a: t, b: short, dst: 0 }, n);
                    g.push(Step::Relu { src: t, dst: 0 }, n)
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
            | Step::Dense { dst: d, .. }
            | Step::Add { dst: d, .. } => *d = dst,
        }
        self.ops.push(op);
        dst
    }

    fn conv(&mut self, conv: &ConvLayer, s: Shape, src: usize) -> usize {
        let geom = geom(conv, s);
        let size = conv.out_c * geom.pixels();
        self.push(Step::Conv { conv: conv.clone(), geom, src, dst: 0 }, size)
    }

    /// A tape for `m` images holding only the input.
    pub fn tape(&self, input: Vec<f32>) -> Tape {
        let mut t = vec![None; self.sizes.len()];
        t[0] = Some(input);
        t
    }

    /// Runs operations `ops` on the `m` images of `tape` with weights `w` (f32, set order). With
    /// `free`, a buffer is dropped after its last reader unless `keep(buffer)`.
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
            let mut out = vec![0f32; m * self.sizes[dst]];
            let get = |b: usize| tape[b].as_deref().expect("an operation's input is computed before it");
            match op {
                Step::Conv { conv, geom, src, .. } => conv_forward(conv, geom, w, get(*src), &mut out),
                Step::GroupNorm { gn, src, .. } => {
                    let x = get(*src);
                    let n = self.sizes[*src];
                    out.par_chunks_mut(n)
                        .zip(x.par_chunks(n))
                        .for_each(|(y, x)| groupnorm_forward(x, w[gn.weight], w[gn.bias], gn.groups, gn.eps, y));
                }
                Step::Relu { src, .. } => {
                    out.par_iter_mut().zip(get(*src).par_iter()).for_each(|(y, &x)| *y = if x > 0.0 { x } else { 0.0 })
                }
                Step::AvgPool { kernel, stride, in_s, out_s, src, .. } => {
                    out.par_chunks_mut(out_s.numel()).zip(get(*src).par_chunks(in_s.numel())).for_each(|(y, x)| {
                        avgpool_forward(x, in_s.c, in_s.h, in_s.w, *kernel, *stride, out_s.h, out_s.w, y)
                    })
                }
                Step::GlobalAvgPool { in_s, src, .. } => out
                    .par_chunks_mut(in_s.c)
                    .zip(get(*src).par_chunks(in_s.numel()))
                    .for_each(|(y, x)| global_avgpool(x, in_s.c, y)),
                Step::Dense { dense, src, .. } => dense_forward(dense, w, get(*src), m, &mut out),
                Step::Add { a, b, .. } => out
                    .par_iter_mut()
                    .zip(get(*a).par_iter().zip(get(*b).par_iter()))
                    .for_each(|(y, (&a, &b))| *y = a + b),
            }
            tape[dst] = Some(out);
            if free {
                for r in op.reads() {
                    if self.last_read[r].is_some_and(|l| l <= i) && !keep(r) {
                        tape[r] = None;
                    }
                }
            }
        }
    }

    /// Gradients of every tensor (set order, `grads` zeroed by the caller) from `dlogits`, the
    /// gradient of the loss with respect to the last buffer, on a full tape of `m` images.
    pub fn backward(&self, w: &[&[f32]], m: usize, tape: &Tape, dlogits: Vec<f32>, grads: &mut [Vec<f32>]) {
        let mut dbuf: Tape = vec![None; self.sizes.len()];
        dbuf[*self.layer_out.last().expect("a CNN has layers")] = Some(dlogits);
        for op in self.ops.iter().rev() {
            let Some(dy) = dbuf[op.dst()].take() else { continue };
            let get = |b: usize| tape[b].as_deref().expect("the forward pass kept every buffer");
            match op {
                Step::Conv { conv, geom, src, .. } => {
                    let dx = conv_backward(conv, geom, w, get(*src), &dy, *src != 0, grads);
                    if let Some(dx) = dx {
                        accumulate(&mut dbuf, *src, dx);
                    }
                }
                Step::GroupNorm { gn, src, .. } => {
                    let x = get(*src);
                    let n = self.sizes[*src];
                    let c = gn.channels;
                    let mut dx = vec![0f32; x.len()];
                    // Per image: dgamma then dbeta, added across images in order below.
                    let mut partial = vec![0f32; m * 2 * c];
                    dx.par_chunks_mut(n)
                        .zip(partial.par_chunks_mut(2 * c))
                        .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
                        .for_each(|((dx, part), (x, dy))| {
                            let (dg, db) = part.split_at_mut(c);
                            groupnorm_backward(x, dy, w[gn.weight], gn.groups, gn.eps, dx, dg, db);
                        });
                    for part in partial.chunks(2 * c) {
                        add_into(&mut grads[gn.weight], &part[..c]);
                        add_into(&mut grads[gn.bias], &part[c..]);
                    }
                    accumulate(&mut dbuf, *src, dx);
                }
                Step::Relu { dst, src } => {
                    let y = get(*dst);
                    let dx: Vec<f32> =
                        dy.par_iter().zip(y.par_iter()).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect();
                    accumulate(&mut dbuf, *src, dx);
                }
                Step::AvgPool { kernel, stride, in_s, out_s, src, .. } => {
                    let mut dx = vec![0f32; m * in_s.numel()];
                    dx.par_chunks_mut(in_s.numel()).zip(dy.par_chunks(out_s.numel())).for_each(|(dx, dy)| {
                        avgpool_backward(dy, in_s.c, in_s.h, in_s.w, *kernel, *stride, out_s.h, out_s.w, dx)
                    });
                    accumulate(&mut dbuf, *src, dx);
                }
                Step::GlobalAvgPool { in_s, src, .. } => {
                    let p = in_s.h * in_s.w;
                    let scale = 1.0 / p as f32;
                    let mut dx = vec![0f32; m * in_s.numel()];
                    dx.par_chunks_mut(in_s.numel()).zip(dy.par_chunks(in_s.c)).for_each(|(dx, dy)| {
                        for (c, &g) in dy.iter().enumerate() {
                            dx[c * p..(c + 1) * p].fill(g * scale);
                        }
                    });
                    accumulate(&mut dbuf, *src, dx);
                }
                Step::Dense { dense, src, .. } => {
                    let x = get(*src);
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
                        let mut dx = vec![0f32; m * fi];
                        let wt = MatRef::from_row_major_slice(w[dense.weight], fo, fi);
                        faer::linalg::matmul::matmul(
                            MatMut::from_row_major_slice_mut(&mut dx, m, fi),
                            Accum::Replace,
                            dz,
                            wt,
                            1.0f32,
                            Par::Seq,
                        );
                        accumulate(&mut dbuf, *src, dx);
                    }
                }
                Step::Add { a, b, .. } => {
                    accumulate(&mut dbuf, *b, dy.clone());
                    accumulate(&mut dbuf, *a, dy);
                }
            }
        }
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// Adds `g` to the gradient of buffer `b`.
fn accumulate(dbuf: &mut Tape, b: usize, g: Vec<f32>) {
    match &mut dbuf[b] {
        Some(d) => d.par_iter_mut().zip(g.par_iter()).for_each(|(d, s)| *d += s),
        slot => *slot = Some(g),
    }
}

/// `out = conv(x)` for `m` images, each its own im2col and GEMM (`out_c x patch` by
/// `patch x pixels`).
pub(super) fn conv_forward(conv: &ConvLayer, g: &ConvGeom, w: &[&[f32]], x: &[f32], out: &mut [f32]) {
    let (patch, pixels) = (g.patch(), g.pixels());
    let in_size = g.in_c * g.h * g.w;
    let weight = MatRef::from_row_major_slice(w[conv.weight], conv.out_c, patch);
    let bias = conv.bias.map(|b| w[b]);
    out.par_chunks_mut(conv.out_c * pixels).zip(x.par_chunks(in_size)).for_each_init(
        || vec![0f32; if g.is_pointwise() { 0 } else { patch * pixels }],
        |cols, (y, x)| {
            let b: &[f32] = if g.is_pointwise() {
                x
            } else {
                im2col(g, x, cols);
                cols
            };
            faer::linalg::matmul::matmul(
                MatMut::from_row_major_slice_mut(y, conv.out_c, pixels),
                Accum::Replace,
                weight,
                MatRef::from_row_major_slice(b, patch, pixels),
                1.0f32,
                Par::Seq,
            );
            if let Some(bias) = bias {
                for (row, &bv) in y.chunks_mut(pixels).zip(bias) {
                    row.iter_mut().for_each(|v| *v += bv);
                }
            }
        },
    );
}

/// The conv's weight (and bias) gradient added into `grads`, and the input's gradient when
/// `want_dx`.
fn conv_backward(
    conv: &ConvLayer,
    g: &ConvGeom,
    w: &[&[f32]],
    x: &[f32],
    dy: &[f32],
    want_dx: bool,
    grads: &mut [Vec<f32>],
) -> Option<Vec<f32>> {
    let (patch, pixels) = (g.patch(), g.pixels());
    let in_size = g.in_c * g.h * g.w;
    let out_size = conv.out_c * pixels;
    let m = dy.len() / out_size;
    let weight = MatRef::from_row_major_slice(w[conv.weight], conv.out_c, patch);
    let mut dx = if want_dx { vec![0f32; m * in_size] } else { Vec::new() };
    let groups = m.div_ceil(GRAD_GROUP);
    let mut dx_parts: Vec<&mut [f32]> = if want_dx {
        dx.chunks_mut(GRAD_GROUP * in_size).collect()
    } else {
        (0..groups).map(|_| &mut [][..]).collect()
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_parts
        .par_iter_mut()
        .enumerate()
        .map(|(k, dxg)| {
            let mut dw = vec![0f32; conv.out_c * patch];
            let mut db = vec![0f32; conv.out_c];
            let mut cols = vec![0f32; patch * pixels];
            for i in k * GRAD_GROUP..((k + 1) * GRAD_GROUP).min(m) {
                let xi = &x[i * in_size..(i + 1) * in_size];
                let dyi = &dy[i * out_size..(i + 1) * out_size];
                if g.is_pointwise() {
                    cols.copy_from_slice(xi);
                } else {
                    im2col(g, xi, &mut cols);
                }
                let dyi_m = MatRef::from_row_major_slice(dyi, conv.out_c, pixels);
                faer::linalg::matmul::matmul(
                    MatMut::from_row_major_slice_mut(&mut dw, conv.out_c, patch),
                    Accum::Add,
                    dyi_m,
                    MatRef::from_row_major_slice(&cols, patch, pixels).transpose(),
                    1.0f32,
                    Par::Seq,
                );
                for (d, row) in db.iter_mut().zip(dyi.chunks(pixels)) {
                    *d += row.iter().sum::<f32>();
                }
                if want_dx {
                    let dxi = &mut dxg[(i - k * GRAD_GROUP) * in_size..][..in_size];
                    faer::linalg::matmul::matmul(
                        MatMut::from_row_major_slice_mut(&mut cols, patch, pixels),
                        Accum::Replace,
                        weight.transpose(),
                        dyi_m,
                        1.0f32,
                        Par::Seq,
                    );
                    if g.is_pointwise() {
                        add_into(dxi, &cols);
                    } else {
                        col2im_add(g, &cols, dxi);
                    }
                }
            }
            (dw, db)
        })
        .collect();
    for (dw, db) in &partials {
        add_into(&mut grads[conv.weight], dw);
        if let Some(b) = conv.bias {
            add_into(&mut grads[b], db);
        }
    }
    want_dx.then_some(dx)
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
