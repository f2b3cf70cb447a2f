//! CPU twin of `kernels/cnn.cu`; CUDA host code in `backend/cuda/cnn.rs`. The per-image pieces of
//! the built-in CNN ([`crate::model::cnn`] runs the schedule and the products through faer's
//! GEMM): im2col and its adjoint, GroupNorm forward and backward, average pooling, and the
//! softmax cross-entropy with the 0-1 error (shared with the MLP, [`super::mlp`]).
//!
//! Every function here works on one image (`C x H x W`, row major per channel), so that the model
//! runs images in parallel and every result is the same for any number of threads.
//!
//! Rounding: im2col and pooling move or average f32 values (a pool sums its window in f32, in row
//! order, then multiplies by `1 / (k * k)`; the global pool sums in f64); GroupNorm takes each
//! group's mean and population variance in f64 (two passes), rounds `1 / sqrt(var + eps)` and the
//! mean to f32, and computes `gamma * ((x - mean) * rstd) + beta` in f32. The f64 sums run over 8
//! interleaved partial sums added in a fixed order (`lane_sum`). A device version that sums in
//! another order agrees to a few ulps, not bit for bit.

pub(crate) use super::mlp::{row_loss, SoftmaxXent};
use std::ops::Range;

/// The geometry of one convolution on one image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub in_c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Rows of the column matrix, `in_c * k * k`.
    pub fn patch(&self) -> usize {
        self.in_c * self.kernel * self.kernel
    }
    /// Columns of the column matrix, the output pixels.
    pub fn pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// Whether the column matrix is the image itself (a 1 x 1, stride 1, unpadded conv).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// The output columns `lo..hi` of a row whose input column `ox * stride + kx - padding` falls
/// inside the image (`w` pixels wide); the others read the zero padding.
#[inline(always)]
fn valid_columns(g: &ConvGeom, kx: usize) -> (usize, usize) {
    let (s, p) = (g.stride, g.padding);
    // ox * s + kx >= p and ox * s + kx < w + p.
    let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
    let hi = if g.w + p > kx { (g.w + p - kx).div_ceil(s).min(g.ow) } else { 0 };
    (lo.min(hi), hi)
}

/// `out[i] = src[i * stride]`. The strides of the CNNs' convs (1 and 2) get loops of their own,
/// which the compiler vectorises; a stride known only at run time makes a scalar loop.
#[inline(always)]
fn gather(out: &mut [f32], src: &[f32], stride: usize) {
    match stride {
        1 => out.copy_from_slice(&src[..out.len()]),
        2 => {
            // Whole pairs (an interleaved load), then the last tap, whose pair may end the row.
            let Some((last, head)) = out.split_last_mut() else { return };
            head.iter_mut().zip(src.chunks_exact(2)).for_each(|(o, pair)| *o = pair[0]);
            *last = src[2 * head.len()];
        }
        _ => out.iter_mut().zip(src.iter().step_by(stride)).for_each(|(o, &v)| *o = v),
    }
}

/// `dst[i * stride] += src[i]`, the adjoint of [`gather`].
#[inline(always)]
fn scatter_add(src: &[f32], dst: &mut [f32], stride: usize) {
    match stride {
        1 => dst.iter_mut().zip(src).for_each(|(d, v)| *d += v),
        2 => {
            let Some((last, head)) = src.split_last() else { return };
            dst.chunks_exact_mut(2).zip(head).for_each(|(pair, v)| pair[0] += v);
            dst[2 * head.len()] += last;
        }
        _ => dst.iter_mut().step_by(stride).zip(src).for_each(|(d, v)| *d += v),
    }
}

multiversion! {
    /// The column matrix of `image` (`patch x pixels`, row major): row `(ci, ky, kx)`, column
    /// `(oy, ox)` holds the input pixel under that filter tap, 0 in the padding.
    pub(crate) fn im2col<>(g: &ConvGeom, image: &[f32], cols: &mut [f32]) {
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let pixels = g.pixels();
        for ci in 0..g.in_c {
            let plane = &image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((ci * k + ky) * k + kx) * pixels..][..pixels];
                    if let Some(tap) = SameSizeTap::new(g, ky, kx) {
                        // One contiguous copy, then zeros where the tap reads the padding.
                        row[..tap.copy.start].fill(0.0);
                        row[tap.copy.end..].fill(0.0);
                        let len = tap.copy.len();
                        row[tap.copy].copy_from_slice(&plane[tap.src_start..tap.src_start + len]);
                        for e in tap.edge {
                            for oy in tap.rows.clone() {
                                row[oy * g.w + e] = 0.0;
                            }
                        }
                        continue;
                    }
                    let (lo, hi) = valid_columns(g, kx);
                    for oy in 0..g.oh {
                        let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                        let iy = oy * s + ky;
                        if iy < p || iy >= g.h + p {
                            out.iter_mut().for_each(|o| *o = 0.0);
                            continue;
                        }
                        let src = &plane[(iy - p) * g.w..(iy - p + 1) * g.w];
                        out[..lo].iter_mut().for_each(|o| *o = 0.0);
                        out[hi..].iter_mut().for_each(|o| *o = 0.0);
                        if lo < hi {
                            gather(&mut out[lo..hi], &src[lo * s + kx - p..], s);
                        }
                    }
                }
            }
        }
    }
}

/// One filter tap `(ky, kx)` of a stride-1 conv whose output has the input's size
/// (`2 * padding = kernel - 1`): its row of the column matrix is the image plane shifted by
/// `shift = (ky - p) * w + (kx - p)` pixels, except where the tap falls in the padding.
struct SameSizeTap {
    /// Output rows whose tap row lies inside the image; the others read padding only.
    rows: Range<usize>,
    /// Entries `copy` of the row hold the plane's entries `copy + shift`, apart from the
    /// columns `edge` of each output row, where the shift wrapped around from the neighbouring
    /// row (they read the padding).
    copy: Range<usize>,
    src_start: usize,
    edge: Range<usize>,
}

impl SameSizeTap {
    /// The tap, or `None` when the conv is not a same-size stride-1 one.
    #[inline(always)]
    fn new(g: &ConvGeom, ky: usize, kx: usize) -> Option<SameSizeTap> {
        if g.stride != 1 || g.oh != g.h || g.ow != g.w {
            return None;
        }
        let (p, h, w) = (g.padding as isize, g.h as isize, g.w as isize);
        let (dy, dx) = (ky as isize - p, kx as isize - p);
        let rows = ((-dy).max(0) as usize)..((h - dy).min(h).max(0) as usize);
        let rows = rows.start.min(rows.end)..rows.end;
        let band = rows.start * g.w..rows.end * g.w;
        let copy =
            if band.is_empty() { 0..0 } else { band.start + (-dx).max(0) as usize..band.end - dx.max(0) as usize };
        let src_start = if copy.is_empty() { 0 } else { (copy.start as isize + dy * w + dx) as usize };
        let edge = if dx < 0 { 0..(-dx) as usize } else { (w - dx) as usize..g.w };
        Some(SameSizeTap { rows, copy, src_start, edge })
    }
}

multiversion! {
    /// The adjoint of [`im2col`]: adds each entry of `cols` onto the input pixel it was read from.
    /// The entries of `cols` that [`im2col`] fills from the padding are set to 0 on the way (the
    /// adjoint ignores them).
    pub(crate) fn col2im_add<>(g: &ConvGeom, cols: &mut [f32], image: &mut [f32]) {
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let pixels = g.pixels();
        for ci in 0..g.in_c {
            let plane = &mut image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((ci * k + ky) * k + kx) * pixels..][..pixels];
                    if let Some(tap) = SameSizeTap::new(g, ky, kx) {
                        // Zero the wrapped entries, then one contiguous sum.
                        for e in tap.edge {
                            for oy in tap.rows.clone() {
                                row[oy * g.w + e] = 0.0;
                            }
                        }
                        let len = tap.copy.len();
                        let dst = &mut plane[tap.src_start..tap.src_start + len];
                        dst.iter_mut().zip(&row[tap.copy]).for_each(|(d, v)| *d += v);
                        continue;
                    }
                    let (lo, hi) = valid_columns(g, kx);
                    if lo >= hi {
                        continue;
                    }
                    for oy in 0..g.oh {
                        let iy = oy * s + ky;
                        if iy < p || iy >= g.h + p {
                            continue;
                        }
                        let dst = &mut plane[(iy - p) * g.w..(iy - p + 1) * g.w];
                        scatter_add(&row[oy * g.ow + lo..oy * g.ow + hi], &mut dst[lo * s + kx - p..], s);
                    }
                }
            }
        }
    }
}

/// The f64 sum of `f(a[i], b[i])` over 8 interleaved partial sums (element i into sum i mod 8),
/// added in a fixed order at the end: the same bits on any machine, without one long chain of
/// dependent additions.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(x, y);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The two sums `lane_sum(a, b, f)` and `lane_sum(a, b, g)` (the same bits) in one pass.
#[inline(always)]
fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64, g: impl Fn(f32, f32) -> f64) -> (f64, f64) {
    let (mut acc_f, mut acc_g) = ([0f64; 8], [0f64; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc_f[l] += f(x[l], y[l]);
            acc_g[l] += g(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc_f[l] += f(x, y);
        acc_g[l] += g(x, y);
    }
    let total = |a: [f64; 8]| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    (total(acc_f), total(acc_g))
}

/// Mean and `1 / sqrt(var + eps)` of each group of one image (`channels x pixels`).
#[inline(always)]
fn group_stats(x: &[f32], groups: usize, eps: f64, stats: &mut [(f32, f32)]) {
    let n = x.len() / groups;
    for (g, st) in stats.iter_mut().enumerate().take(groups) {
        let part = &x[g * n..(g + 1) * n];
        let mean = lane_sum(part, part, |v, _| v as f64) / n as f64;
        let var = lane_sum(part, part, |v, _| (v as f64 - mean) * (v as f64 - mean)) / n as f64;
        *st = (mean as f32, (1.0 / (var + eps).sqrt()) as f32);
    }
}

multiversion! {
    /// GroupNorm of one image: `y = gamma[c] * ((x - mean) * rstd) + beta[c]` per group's
    /// statistics, then `y + residual` when there is one, then the ReLU when `relu`: the same
    /// arithmetic as the separate passes, in one. Each group's mean and `1 / sqrt(var + eps)` are
    /// left in `stats` (one entry per group) for [`groupnorm_backward`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn groupnorm_forward<>(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        groups: usize,
        eps: f64,
        residual: Option<&[f32]>,
        relu: bool,
        stats: &mut [(f32, f32)],
        y: &mut [f32],
    ) {
        let channels = gamma.len();
        let pixels = x.len() / channels;
        let cpg = channels / groups;
        group_stats(x, groups, eps, stats);
        let relu_of = |v: f32| if v > 0.0 { v } else { 0.0 };
        for c in 0..channels {
            let (mean, rstd) = stats[c / cpg];
            let (gm, bt) = (gamma[c], beta[c]);
            let plane = c * pixels..(c + 1) * pixels;
            let (src, out) = (&x[plane.clone()], &mut y[plane.clone()]);
            let norm = |v: f32| gm * ((v - mean) * rstd) + bt;
            match (residual, relu) {
                (None, false) => out.iter_mut().zip(src).for_each(|(o, &v)| *o = norm(v)),
                (None, true) => out.iter_mut().zip(src).for_each(|(o, &v)| *o = relu_of(norm(v))),
                (Some(r), false) => {
                    out.iter_mut().zip(src.iter().zip(&r[plane])).for_each(|(o, (&v, &r))| *o = norm(v) + r)
                }
                (Some(r), true) => out
                    .iter_mut()
                    .zip(src.iter().zip(&r[plane]))
                    .for_each(|(o, (&v, &r))| *o = relu_of(norm(v) + r)),
            }
        }
    }
}

multiversion! {
    /// GroupNorm backward for one image: `dx` from `dy`, and this image's terms of the gamma and
    /// beta gradients added into `dgamma`, `dbeta`; `stats` are the groups' statistics that
    /// [`groupnorm_forward`] left.
    pub(crate) fn groupnorm_backward<>(
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        stats: &[(f32, f32)],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let channels = gamma.len();
        let pixels = x.len() / channels;
        let cpg = channels / stats.len();
        let n = (cpg * pixels) as f64;
        for (g, &(mean, rstd)) in stats.iter().enumerate() {
            // Sums over the group of dxhat and dxhat * xhat (dxhat = dy * gamma), from the per-channel
            // sums of dy and dy * xhat, which are also the channel's dbeta and dgamma.
            let (mut s1, mut s2) = (0f64, 0f64);
            for (c, &gm) in gamma.iter().enumerate().skip(g * cpg).take(cpg) {
                let (xc, dyc) = (&x[c * pixels..(c + 1) * pixels], &dy[c * pixels..(c + 1) * pixels]);
                let (db, dg) = lane_sums(dyc, xc, |d, _| d as f64, |d, x| (d * ((x - mean) * rstd)) as f64);
                dgamma[c] += dg as f32;
                dbeta[c] += db as f32;
                s1 += gm as f64 * db;
                s2 += gm as f64 * dg;
            }
            let (m1, m2) = ((s1 / n) as f32, (s2 / n) as f32);
            for (c, &gm) in gamma.iter().enumerate().skip(g * cpg).take(cpg) {
                for i in c * pixels..(c + 1) * pixels {
                    let xhat = (x[i] - mean) * rstd;
                    dx[i] = rstd * (dy[i] * gm - m1 - xhat * m2);
                }
            }
        }
    }
}

multiversion! {
    /// Average pooling of one image (`channels x h x w`), no padding, floor mode.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn avgpool_forward<>(
        x: &[f32],
        channels: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        oh: usize,
        ow: usize,
        y: &mut [f32],
    ) {
        let scale = 1.0 / (k * k) as f32;
        for c in 0..channels {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0f32;
                    for ky in 0..k {
                        for kx in 0..k {
                            sum += plane[(oy * s + ky) * w + ox * s + kx];
                        }
                    }
                    y[(c * oh + oy) * ow + ox] = sum * scale;
                }
            }
        }
    }
}

multiversion! {
    /// The adjoint of [`avgpool_forward`]: adds `dy / (k * k)` over each window into `dx`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn avgpool_backward<>(
        dy: &[f32],
        channels: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        oh: usize,
        ow: usize,
        dx: &mut [f32],
    ) {
        let scale = 1.0 / (k * k) as f32;
        for c in 0..channels {
            let plane = &mut dx[c * h * w..(c + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[(c * oh + oy) * ow + ox] * scale;
                    for ky in 0..k {
                        for kx in 0..k {
                            plane[(oy * s + ky) * w + ox * s + kx] += g;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// The mean of each channel of one image (`channels x pixels`), summed in f64.
    pub(crate) fn global_avgpool<>(x: &[f32], channels: usize, y: &mut [f32]) {
        let pixels = x.len() / channels;
        for (c, o) in y.iter_mut().enumerate().take(channels) {
            let part = &x[c * pixels..(c + 1) * pixels];
            *o = (lane_sum(part, part, |v, _| v as f64) / pixels as f64) as f32;
        }
    }
}

/// The gradient of the softmax cross-entropy of one row of logits, scaled by `scale`
/// (`(softmax - onehot) * scale`), and the row's loss.
pub(crate) fn xent_grad(logits: &[f32], label: usize, scale: f32, grad: &mut [f32]) -> f64 {
    let (loss, _) = row_loss(logits, label);
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    for (j, (g, &v)) in grad.iter_mut().zip(logits).enumerate() {
        let p = ((v as f64 - max).exp() / sum) as f32;
        *g = (p - if j == label { 1.0 } else { 0.0 }) * scale;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col element by element from its definition.
    fn naive_im2col(g: &ConvGeom, image: &[f32]) -> Vec<f32> {
        let k = g.kernel;
        let mut cols = vec![0f32; g.patch() * g.pixels()];
        for ci in 0..g.in_c {
            for ky in 0..k {
                for kx in 0..k {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                            let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                            let inside = iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                            let v = if inside { image[(ci * g.h + iy as usize) * g.w + ix as usize] } else { 0.0 };
                            cols[((ci * k + ky) * k + kx) * g.pixels() + oy * g.ow + ox] = v;
                        }
                    }
                }
            }
        }
        cols
    }

    /// im2col equals its definition, and col2im is its adjoint (<im2col x, c> = <x, col2im c>),
    /// on every combination of kernel, stride and padding that fits small odd images.
    #[test]
    fn im2col_and_its_adjoint_on_every_small_geometry() {
        for (h, w) in [(5, 7), (6, 4), (1, 3)] {
            for kernel in 1..=4 {
                for stride in 1..=3 {
                    for padding in 0..=3 {
                        if h + 2 * padding < kernel || w + 2 * padding < kernel {
                            continue;
                        }
                        let (oh, ow) =
                            ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
                        let g = ConvGeom { in_c: 2, h, w, kernel, stride, padding, oh, ow };
                        let image: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
                        let mut cols = vec![f32::NAN; g.patch() * g.pixels()];
                        im2col(&g, &image, &mut cols);
                        assert_eq!(cols, naive_im2col(&g, &image), "{g:?}");
                        let c: Vec<f32> = (0..cols.len()).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
                        let mut back = vec![0f32; image.len()];
                        let mut c_scratch = c.clone();
                        col2im_add(&g, &mut c_scratch, &mut back);
                        let lhs: f64 = cols.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let rhs: f64 = image.iter().zip(&back).map(|(&a, &b)| a as f64 * b as f64).sum();
                        assert_eq!(lhs, rhs, "{g:?}");
                    }
                }
            }
        }
    }
}
