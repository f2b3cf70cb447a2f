// Kernels of the built-in CNN's evaluation and of its batched perturbed evaluation (module
// criticality): im2col, the conv bias with ReLU, GroupNorm fused with the residual add and ReLU,
// average pooling, global average pooling, and the replication of a batch for K copies. The
// products are cuBLAS SGEMMs; the noisy copies of a module's tensors and the softmax
// cross-entropy are the MLP's kernels (kernels/mlp.cu). Names are <op>_f32.
// CPU twin: src/backend/cpu/cnn.rs; host code: src/backend/cuda/cnn.rs.
//
// Layout: activations are NCHW, image after image, each channel row by row. K noisy copies of a
// module run on N images as N K stacked images, image i K + k being image i under copy k; so the
// K copies of a per-channel parameter (stacked copy after copy) read as one parameter of K C
// channels of N images, and the kernels below need no notion of copies.
#include "common.cuh"

// The geometry of one convolution (matches `ConvGeom` in backend/cuda/cnn.rs field by field).
struct tl_conv_geom {
    tl_u32 in_c, h, w, kernel, stride, padding, oh, ow;
};

// The geometry of one GroupNorm over `images` images of `channels x pixels` (matches
// `GroupNormGeom` in backend/cuda/cnn.rs).
struct tl_gn_geom {
    tl_u64 images, pixels;
    tl_u32 channels, groups, relu, pad;
    double eps;
};

// The geometry of one average pooling over `planes` = images x channels planes (matches
// `PoolGeom` in backend/cuda/cnn.rs).
struct tl_pool_geom {
    tl_u64 planes;
    tl_u32 h, w, kernel, stride, oh, ow;
};

// cols[b][(ci, ky, kx)][(oy, ox)] = x[b][ci][oy s + ky - p][ox s + kx - p], 0 in the padding:
// per image the row-major `patch x pixels` column matrix of the CPU twin's im2col.
extern "C" __global__ void im2col_f32(const float* x, float* cols, tl_u64 images, tl_conv_geom g) {
    const tl_u64 pixels = (tl_u64)g.oh * g.ow;
    const tl_u64 taps = (tl_u64)g.kernel * g.kernel;
    const tl_u64 per_image = (tl_u64)g.in_c * taps * pixels;
    const tl_u64 plane = (tl_u64)g.h * g.w;
    TL_GRID_STRIDE(i, images * per_image) {
        const tl_u64 b = i / per_image;
        const tl_u64 r = i - b * per_image;
        const tl_u64 row = r / pixels;
        const tl_u64 pix = r - row * pixels;
        const tl_u32 ci = (tl_u32)(row / taps);
        const tl_u32 tap = (tl_u32)(row - (tl_u64)ci * taps);
        const tl_u32 ky = tap / g.kernel, kx = tap - ky * g.kernel;
        const tl_u32 oy = (tl_u32)(pix / g.ow), ox = (tl_u32)(pix - (tl_u64)oy * g.ow);
        const long long iy = (long long)oy * g.stride + ky - g.padding;
        const long long ix = (long long)ox * g.stride + kx - g.padding;
        float v = 0.0f;
        if (iy >= 0 && iy < (long long)g.h && ix >= 0 && ix < (long long)g.w) {
            v = x[(b * g.in_c + ci) * plane + (tl_u64)iy * g.w + (tl_u64)ix];
        }
        cols[i] = v;
    }
}

// y[b][c][p] = act(x[b][c][p] + bias[c]) over `images` images of `channels x pixels`; no bias
// when bias is null (a plain ReLU), act = ReLU (x > 0 ? x : 0, as the CPU) when relu != 0.
// y may be x.
extern "C" __global__ void channel_bias_relu_f32(const float* x, float* y, const float* bias,
                                                 tl_u64 images, tl_u32 channels, tl_u64 pixels,
                                                 tl_u32 relu) {
    TL_GRID_STRIDE(i, images * channels * pixels) {
        float v = x[i];
        if (bias != 0) {
            v = __fadd_rn(v, bias[(i / pixels) % channels]);
        }
        y[i] = relu != 0u ? (v > 0.0f ? v : 0.0f) : v;
    }
}

// GroupNorm of `images` images: per image and group, the mean and population variance of the
// group's channels and pixels in f64 (two passes), the mean and 1 / sqrt(var + eps) rounded to
// f32, then y = gamma[c] ((x - mean) rstd) + beta[c] in f32 without contraction (as the CPU twin
// computes it), plus residual (when not null, same layout as y), then ReLU when g.relu != 0.
// One block per (image, group), grid-stride; y may be x. Where the CPU twin differs: it sums
// the group over 8 interleaved partial sums, here in a tree, so mean and rstd can differ in
// their last f32 bit.
extern "C" __global__ void groupnorm_f32(const float* x, float* y, const float* gamma,
                                         const float* beta, const float* residual, tl_gn_geom g) {
    __shared__ double shared_stat;
    const tl_u32 cpg = g.channels / g.groups;
    const tl_u64 n = (tl_u64)cpg * g.pixels;
    for (tl_u64 pair = blockIdx.x; pair < g.images * g.groups; pair += gridDim.x) {
        const tl_u64 base = pair * n;  // groups are contiguous: image b, group q at (b G + q) n
        const tl_u32 first_c = (tl_u32)(pair % g.groups) * cpg;
        double s = 0.0;
        for (tl_u64 e = threadIdx.x; e < n; e += blockDim.x) {
            s += (double)x[base + e];
        }
        s = tl_block_sum(s);
        if (threadIdx.x == 0) {
            shared_stat = s / (double)n;
        }
        __syncthreads();
        const double mean = shared_stat;
        double q = 0.0;
        for (tl_u64 e = threadIdx.x; e < n; e += blockDim.x) {
            const double d = (double)x[base + e] - mean;
            q += d * d;
        }
        q = tl_block_sum(q);
        __syncthreads();  // every thread has read shared_stat
        if (threadIdx.x == 0) {
            shared_stat = q / (double)n;
        }
        __syncthreads();
        const float mean_f = (float)mean;
        const float rstd = (float)(1.0 / sqrt(shared_stat + g.eps));
        for (tl_u64 e = threadIdx.x; e < n; e += blockDim.x) {
            const tl_u32 c = first_c + (tl_u32)(e / g.pixels);
            const float xhat = __fmul_rn(__fsub_rn(x[base + e], mean_f), rstd);
            float v = __fadd_rn(__fmul_rn(gamma[c], xhat), beta[c]);
            if (residual != 0) {
                v = __fadd_rn(v, residual[base + e]);
            }
            y[base + e] = g.relu != 0u ? (v > 0.0f ? v : 0.0f) : v;
        }
        __syncthreads();  // shared_stat is rewritten by the next pair
    }
}

// Average pooling, no padding, floor mode: each window summed in f32 in row order, times
// 1 / (k k) (as the CPU twin).
extern "C" __global__ void avgpool_f32(const float* x, float* y, tl_pool_geom g) {
    const tl_u64 out_plane = (tl_u64)g.oh * g.ow;
    const tl_u64 in_plane = (tl_u64)g.h * g.w;
    const float scale = 1.0f / (float)(g.kernel * g.kernel);
    TL_GRID_STRIDE(i, g.planes * out_plane) {
        const tl_u64 pl = i / out_plane;
        const tl_u64 r = i - pl * out_plane;
        const tl_u32 oy = (tl_u32)(r / g.ow), ox = (tl_u32)(r - (tl_u64)oy * g.ow);
        const float* src = x + pl * in_plane + (tl_u64)oy * g.stride * g.w + (tl_u64)ox * g.stride;
        float sum = 0.0f;
        for (tl_u32 ky = 0; ky < g.kernel; ++ky) {
            for (tl_u32 kx = 0; kx < g.kernel; ++kx) {
                sum = __fadd_rn(sum, src[(tl_u64)ky * g.w + kx]);
            }
        }
        y[i] = __fmul_rn(sum, scale);
    }
}

// y[plane] = the mean of the plane's pixels, summed in f64, rounded to f32: one thread per plane
// (the planes of the late layers are small). Where the CPU twin differs: it sums over 8
// interleaved partial sums, here in order; the f64 sums differ in their last bits, which the
// rounding to f32 hides but for rare ties.
extern "C" __global__ void global_avgpool_f32(const float* x, float* y, tl_u64 planes,
                                              tl_u64 pixels) {
    TL_GRID_STRIDE(pl, planes) {
        const float* src = x + pl * pixels;
        double s = 0.0;
        for (tl_u64 p = 0; p < pixels; ++p) {
            s += (double)src[p];
        }
        y[pl] = (float)(s / (double)pixels);
    }
}

// y[(i copies + k) per_image + e] = x[i per_image + e]: each of `images` images repeated for
// the copies (the input of a module whose first layer reads it as K stacked images).
extern "C" __global__ void repeat_images_f32(const float* x, float* y, tl_u64 images,
                                             tl_u64 per_image, tl_u32 copies) {
    TL_GRID_STRIDE(j, images * copies * per_image) {
        const tl_u64 b = j / per_image;
        y[j] = x[(b / copies) * per_image + (j - b * per_image)];
    }
}
