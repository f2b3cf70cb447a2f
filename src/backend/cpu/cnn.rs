//! CPU twin of `kernels/cnn.cu`; CUDA host code in `backend/cuda/cnn.rs`. The per-image pieces of
//! the built-in CNN ([`crate::model::cnn`] runs the schedule and the products through faer's
//! GEMM): im2col and its adjoint, GroupNorm forward and backward, average pooling, and the
//! softmax cross-entropy with the 0-1 error (shared with the MLP, [`super::mlp`]).
//!
//! Every function here works on one image (`C x H x W`, row major per channel), so that the model
//! runs images in parallel and every result is the same for any number of threads.
//!
//! Rounding: im2col and pooling move or average f32 values (a pool sums its window in f32, in row
//! order, then multiplies by `1 / (k * k)`); GroupNorm takes each group's mean and population
//! variance in f64 (two passes, pixels in order), rounds `1 / sqrt(var + eps)` and the mean to
//! f32, and computes `gamma * ((x - mean) * rstd) + beta` in f32. A device version that sums in
//! another order agrees to a few ulps, not bit for bit.

pub(crate) use super::mlp::{row_loss, SoftmaxXent};

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

/// The column matrix of `image` (`patch x pixels`, row major): row `(ci, ky, kx)`, column
/// `(oy, ox)` holds the input pixel under that filter tap, 0 in the padding.
pub(crate) fn im2col(g: &ConvGeom, image: &[f32], cols: &mut [f32]) {
    let (k, s, p) = (g.kernel, g.stride, g.padding as isize);
    let pixels = g.pixels();
    for ci in 0..g.in_c {
        let plane = &image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * pixels..][..pixels];
                for oy in 0..g.oh {
                    let iy = (oy * s + ky) as isize - p;
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * s + kx) as isize - p;
                        *o = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each entry of `cols` onto the input pixel it was read from.
pub(crate) fn col2im_add(g: &ConvGeom, cols: &[f32], image: &mut [f32]) {
    let (k, s, p) = (g.kernel, g.stride, g.padding as isize);
    let pixels = g.pixels();
    for ci in 0..g.in_c {
        let plane = &mut image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * pixels..][..pixels];
                for oy in 0..g.oh {
                    let iy = (oy * s + ky) as isize - p;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, &v) in row[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                        let ix = (ox * s + kx) as isize - p;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Mean and `1 / sqrt(var + eps)` of each group of one image (`channels x pixels`).
pub(crate) fn group_stats(x: &[f32], channels: usize, groups: usize, eps: f64, stats: &mut [(f32, f32)]) {
    let n = x.len() / groups;
    for (g, st) in stats.iter_mut().enumerate().take(groups) {
        let part = &x[g * n..(g + 1) * n];
        let mean = part.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = part.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / n as f64;
        *st = (mean as f32, (1.0 / (var + eps).sqrt()) as f32);
    }
    debug_assert_eq!(x.len() % channels, 0);
}

/// GroupNorm of one image: `y = gamma[c] * ((x - mean) * rstd) + beta[c]` per group's statistics.
pub(crate) fn groupnorm_forward(x: &[f32], gamma: &[f32], beta: &[f32], groups: usize, eps: f64, y: &mut [f32]) {
    let channels = gamma.len();
    let pixels = x.len() / channels;
    let cpg = channels / groups;
    let mut stats = vec![(0f32, 0f32); groups];
    group_stats(x, channels, groups, eps, &mut stats);
    for c in 0..channels {
        let (mean, rstd) = stats[c / cpg];
        let (gm, bt) = (gamma[c], beta[c]);
        let src = &x[c * pixels..(c + 1) * pixels];
        for (o, &v) in y[c * pixels..(c + 1) * pixels].iter_mut().zip(src) {
            *o = gm * ((v - mean) * rstd) + bt;
        }
    }
}

/// GroupNorm backward for one image: `dx` from `dy`, and this image's terms of the gamma and
/// beta gradients added into `dgamma`, `dbeta`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn groupnorm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    groups: usize,
    eps: f64,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let channels = gamma.len();
    let pixels = x.len() / channels;
    let cpg = channels / groups;
    let n = (cpg * pixels) as f64;
    let mut stats = vec![(0f32, 0f32); groups];
    group_stats(x, channels, groups, eps, &mut stats);
    for (g, &(mean, rstd)) in stats.iter().enumerate() {
        // Sums over the group of dxhat and dxhat * xhat, dxhat = dy * gamma.
        let (mut s1, mut s2) = (0f64, 0f64);
        for (c, &gm) in gamma.iter().enumerate().skip(g * cpg).take(cpg) {
            let (mut dg, mut db) = (0f64, 0f64);
            for i in c * pixels..(c + 1) * pixels {
                let xhat = (x[i] - mean) * rstd;
                let dxhat = dy[i] * gm;
                s1 += dxhat as f64;
                s2 += (dxhat * xhat) as f64;
                dg += (dy[i] * xhat) as f64;
                db += dy[i] as f64;
            }
            dgamma[c] += dg as f32;
            dbeta[c] += db as f32;
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

/// Average pooling of one image (`channels x h x w`), no padding, floor mode.
#[allow(clippy::too_many_arguments)]
pub(crate) fn avgpool_forward(
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

/// The adjoint of [`avgpool_forward`]: adds `dy / (k * k)` over each window into `dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn avgpool_backward(
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

/// The mean of each channel of one image (`channels x pixels`), summed in f64.
pub(crate) fn global_avgpool(x: &[f32], channels: usize, y: &mut [f32]) {
    let pixels = x.len() / channels;
    for (c, o) in y.iter_mut().enumerate().take(channels) {
        *o = (x[c * pixels..(c + 1) * pixels].iter().map(|&v| v as f64).sum::<f64>() / pixels as f64) as f32;
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
