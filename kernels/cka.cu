// CKA kernels: the O(n p) work around the cuBLAS Gram and cross products: column statistics,
// the shifted (centered) copies, row norms and Frobenius norms. Names are <op>_<dtype>.
// CPU twin: src/backend/cpu/cka.rs; host code: src/backend/cuda/cka.rs.
//
// Matrices are row-major, rows = samples, cols = features, row starts `stride` elements apart.
// Sums accumulate in f64; a shift vector (a reference mean) is subtracted first so that data
// with a large offset does not cancel catastrophically.
#include "common.cuh"

// Column tile of colstats: 32 columns (one warp reads 32 consecutive elements of a row) by 8
// rows.
#define TL_COLSTATS_W 32
#define TL_COLSTATS_H 8

// out[r] = sum over c of x[r, c]^2, in f64. One warp per row; blocks of a multiple of 32
// threads; warps walk rows grid-stride.
template <typename T>
__device__ void row_sqnorms_impl(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
                                 double* out) {
    const unsigned lane = threadIdx.x & 31u;
    const tl_u64 warps = ((tl_u64)gridDim.x * blockDim.x) >> 5;
    for (tl_u64 r = ((tl_u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        double s = 0.0;
        for (tl_u64 c = lane; c < cols; c += 32) {
            const double v = tl_elem<T>::to_f64(x[r * stride + c]);
            s = fma(v, v, s);
        }
        s = tl_warp_sum(s);
        if (lane == 0u) {
            out[r] = s;
        }
    }
}

// out[0] += sum of (x[r, c] - shift[c])^2 over the whole matrix, in f64 (the Frobenius norm
// squared when shift is NULL: no shift). 1-D blocks of a multiple of 32 threads; blockIdx.y walks
// rows, x columns. out must be zeroed first.
template <typename T>
__device__ void sumsq_impl(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
                           const double* shift, double* out) {
    double s = 0.0;
    for (tl_u64 r = blockIdx.y; r < rows; r += gridDim.y) {
        TL_GRID_STRIDE(c, cols) {
            const double v = tl_elem<T>::to_f64(x[r * stride + c]) - (shift != 0 ? shift[c] : 0.0);
            s = fma(v, v, s);
        }
    }
    s = tl_block_sum(s);
    if (threadIdx.x == 0) {
        atomicAdd(out, s);
    }
}

// Column statistics for centering, in one pass: sum[c] += sum over rows of x[r, c] (f64),
// varies[c] = 1 when some x[r, c] differs from x[0, c], and *first_bad = the smallest r * cols + c
// whose value is NaN or Inf (atomicMin; start it at ~0). Block (32, 8); blockIdx.x walks column
// tiles, blockIdx.y chunks of rows_per_block rows; each block adds one partial per column with an
// atomic. sum and varies must be zeroed first.
template <typename T>
__device__ void colstats_impl(const T* x, tl_u64 rows, tl_u64 cols, tl_u64 stride, double* sum,
                              int* varies, tl_u64* first_bad, tl_u64 rows_per_block) {
    typedef tl_elem<T> E;
    __shared__ double partial[TL_COLSTATS_H][TL_COLSTATS_W + 1];
    __shared__ int differs[TL_COLSTATS_H][TL_COLSTATS_W + 1];
    const unsigned tx = threadIdx.x, ty = threadIdx.y;
    for (tl_u64 r0 = (tl_u64)blockIdx.y * rows_per_block; r0 < rows;
         r0 += (tl_u64)gridDim.y * rows_per_block) {
        const tl_u64 r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        for (tl_u64 tile = blockIdx.x; tile * TL_COLSTATS_W < cols; tile += gridDim.x) {
            const tl_u64 c = tile * TL_COLSTATS_W + tx;
            double s = 0.0;
            int d = 0;
            if (c < cols) {
                const double first = E::to_f64(x[c]);
                // Four rows per step: four independent loads in flight per thread before the
                // dependent f64 additions (which keep the row order of the plain loop).
                tl_u64 r = r0 + ty;
                for (; r + 3 * TL_COLSTATS_H < r1; r += 4 * TL_COLSTATS_H) {
                    double v[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        v[q] = E::to_f64(x[(r + q * TL_COLSTATS_H) * stride + c]);
                    }
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        if (tl_nonfinite(v[q])) {
                            atomicMin(first_bad, (r + q * TL_COLSTATS_H) * cols + c);
                        }
                        d |= v[q] != first;
                        s += v[q];
                    }
                }
                for (; r < r1; r += TL_COLSTATS_H) {
                    const double v = E::to_f64(x[r * stride + c]);
                    if (tl_nonfinite(v)) {
                        atomicMin(first_bad, r * cols + c);
                    }
                    d |= v != first;
                    s += v;
                }
            }
            partial[ty][tx] = s;
            differs[ty][tx] = d;
            __syncthreads();
            if (ty == 0) {
                double t = 0.0;
                int any = 0;
#pragma unroll
                for (int k = 0; k < TL_COLSTATS_H; ++k) {
                    t += partial[k][tx];
                    any |= differs[k][tx];
                }
                if (c < cols) {
                    atomicAdd(sum + c, t);
                    if (any) {
                        varies[c] = 1;
                    }
                }
            }
            __syncthreads();  // partial and differs are rewritten by the next tile
        }
    }
}

// y[r * ld + c] = (x[r, c] - shift[c]) * scale, computed in f64 and rounded once to the output
// type (f32 or f64), and *first_bad = the smallest r * cols + c whose input is NaN or Inf
// (atomicMin). scale is a power of two (the layer's product scale, see the host code): exact in
// f64, it brings values near the ends of f32's range into it before the rounding.
// With ld = cols this is the row-major centered matrix; read column-major it is the
// `features x rows` transpose that the cuBLAS products take, and ld > cols writes one layer's
// features into a buffer shared by several layers (y points at the layer's first feature).
template <typename T, typename O>
__device__ void shift_impl(const T* __restrict__ x, tl_u64 rows, tl_u64 cols, tl_u64 stride,
                           const double* __restrict__ shift, double scale, O* __restrict__ y,
                           tl_u64 ld, tl_u64* first_bad) {
    // Four rows per block step (rows 4 blockIdx.y .. + 3, then the next 4 gridDim.y): each
    // thread has four loads in flight before its four stores (x and y never overlap).
    for (tl_u64 r = 4 * (tl_u64)blockIdx.y; r < rows; r += 4 * (tl_u64)gridDim.y) {
        const int nr = rows - r < 4 ? (int)(rows - r) : 4;
        TL_GRID_STRIDE(c, cols) {
            const double sh = shift[c];
            double v[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                v[q] = q < nr ? tl_elem<T>::to_f64(x[(r + q) * stride + c]) : 0.0;
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                if (q < nr) {
                    if (tl_nonfinite(v[q])) {
                        atomicMin(first_bad, (r + q) * cols + c);
                    }
                    y[(r + q) * ld + c] = (O)((v[q] - sh) * scale);
                }
            }
        }
    }
}

// out[0] += <A, B>_F in f64 for symmetric n x n matrices given by the lower triangles (diagonal
// included) of the column-major a and b (leading dimension ld): the strict lower triangle counts
// twice. 1-D blocks of a multiple of 32 threads; blockIdx.y walks columns, x rows below them.
// out must be zeroed first.
template <typename T>
__device__ void sym_inner_impl(const T* a, const T* b, tl_u64 n, tl_u64 ld, double* out) {
    double s = 0.0;
    for (tl_u64 j = blockIdx.y; j < n; j += gridDim.y) {
        const tl_u64 len = n - j;
        TL_GRID_STRIDE(k, len) {
            const tl_u64 at = j * ld + j + k;
            const double p = (double)a[at] * (double)b[at];
            s += k == 0 ? p : 2.0 * p;
        }
    }
    s = tl_block_sum(s);
    if (threadIdx.x == 0) {
        atomicAdd(out, s);
    }
}

#define TL_CKA_OPS(NAME, T)                                                                  \
    extern "C" __global__ void row_sqnorms_##NAME(const T* x, tl_u64 rows, tl_u64 cols,      \
                                                  tl_u64 stride, double* out) {              \
        row_sqnorms_impl<T>(x, rows, cols, stride, out);                                     \
    }                                                                                        \
    extern "C" __global__ void sumsq_##NAME(const T* x, tl_u64 rows, tl_u64 cols,            \
                                            tl_u64 stride, const double* shift,              \
                                            double* out) {                                   \
        sumsq_impl<T>(x, rows, cols, stride, shift, out);                                    \
    }                                                                                        \
    extern "C" __global__ void colstats_##NAME(const T* x, tl_u64 rows, tl_u64 cols,         \
                                               tl_u64 stride, double* sum, int* varies,      \
                                               tl_u64* first_bad, tl_u64 rows_per_block) {   \
        colstats_impl<T>(x, rows, cols, stride, sum, varies, first_bad, rows_per_block);     \
    }                                                                                        \
    extern "C" __global__ void shift_##NAME##_to_f32(const T* x, tl_u64 rows, tl_u64 cols,   \
                                                     tl_u64 stride, const double* shift,     \
                                                     double scale, float* y, tl_u64 ld,      \
                                                     tl_u64* first_bad) {                    \
        shift_impl<T, float>(x, rows, cols, stride, shift, scale, y, ld, first_bad);         \
    }                                                                                        \
    extern "C" __global__ void shift_##NAME##_to_f64(const T* x, tl_u64 rows, tl_u64 cols,   \
                                                     tl_u64 stride, const double* shift,     \
                                                     double scale, double* y, tl_u64 ld,     \
                                                     tl_u64* first_bad) {                    \
        shift_impl<T, double>(x, rows, cols, stride, shift, scale, y, ld, first_bad);        \
    }

TL_CKA_OPS(f32, float)
TL_CKA_OPS(f64, double)
TL_CKA_OPS(f16, tl_f16)
TL_CKA_OPS(bf16, tl_bf16)

extern "C" __global__ void sym_inner_f32(const float* a, const float* b, tl_u64 n, tl_u64 ld,
                                         double* out) {
    sym_inner_impl<float>(a, b, n, ld, out);
}
extern "C" __global__ void sym_inner_f64(const double* a, const double* b, tl_u64 n, tl_u64 ld,
                                         double* out) {
    sym_inner_impl<double>(a, b, n, ld, out);
}
