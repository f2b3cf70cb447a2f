// Kernels of the built-in MLP's batched perturbed evaluation (module criticality): K noisy
// copies of one layer, the dense layers' bias and ReLU, and the softmax cross-entropy with the
// 0-1 error reduced per copy. The products themselves are cuBLAS SGEMMs. Names are <op>_<dtype>.
// CPU twin: src/backend/cpu/mlp.rs; host code: src/backend/cuda/mlp.rs.
//
// Layout: activations are column-major `width x columns` (a row-major `rows x width` matrix),
// so a layer is Z = W H with W the row-major `out x in` weight. The perturbed layer's K weight
// copies are stacked into one `(K out) x in` matrix, and its output `(K out) x rows`, read as
// `out x (rows K)`, is the K copies' activations stacked: column i K + k is row i of copy k.
#include "common.cuh"
#include "philox.cuh"

// out[k n + e] = round_T(theta[e] + sigma z(seed, stream0 + k, index0 + e)) as f32, for the
// copies k = blockIdx.y (grid-stride over gridDim.y): the noisy value is rounded once to the
// storage type T (as writing it into a set of that dtype would), then widened to f32 for the
// products. Arithmetic in T's acc type (f64 for f64 data). Threads walk Philox blocks, so each
// Philox call serves up to four elements. n >= 1; the host checks index0 + n and the streams
// for overflow. Where the CPU twin differs: it computes theta + sigma z in f64 from its f64
// normals, rounded once to T, so a noisy value can land on the neighbouring value of T.
template <typename T>
__device__ void noisy_copies_impl(float* out, const T* theta, tl_u64 n,
                                  typename tl_elem<T>::acc sigma, tl_u64 seed, tl_u64 stream0,
                                  tl_u64 index0, tl_u32 copies) {
    typedef tl_elem<T> E;
    typedef typename E::acc A;
    const tl_u64 first = index0 >> 2;
    const tl_u64 count = ((index0 + n - 1) >> 2) - first + 1;
    for (tl_u32 k = blockIdx.y; k < copies; k += gridDim.y) {
        float* dst = out + (tl_u64)k * n;
        TL_GRID_STRIDE(j, count) {
            const tl_u64 blk = first + j;
            A z[4];
            tl_normals4(seed, stream0 + k, blk, z);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const tl_u64 idx = 4 * blk + (tl_u64)q;
                if (idx >= index0 && idx - index0 < n) {
                    const tl_u64 e = idx - index0;
                    const T v = E::store(tl_fma(sigma, z[q], E::load(theta[e])));
                    dst[e] = (float)E::load(v);
                }
            }
        }
    }
}

// z[r, c] = act(z[r, c] + bias[r]) for the column-major rows x cols matrix z (ld = rows), act
// = ReLU when relu != 0, else the identity. Fused into one pass over z after its GEMM. With
// rows a multiple of 4 and z 16-byte aligned, four rows of a column per 16-byte access.
extern "C" __global__ void bias_act_f32(float* z, const float* bias, tl_u64 rows, tl_u64 cols,
                                        tl_u32 relu) {
    const tl_u64 total = rows * cols;
    if ((rows & 3u) == 0u && tl_aligned16(z)) {
        TL_GRID_STRIDE(j, total / 4) {
            const tl_u64 r = (4 * j) % rows;
            tl_pack<float> p = tl_load16(z + 4 * j);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float v = p.v[q] + bias[r + q];
                p.v[q] = relu != 0u && v < 0.0f ? 0.0f : v;
            }
            tl_store16(z + 4 * j, p);
        }
        return;
    }
    TL_GRID_STRIDE(i, total) {
        const float v = z[i] + bias[i % rows];
        z[i] = relu != 0u && v < 0.0f ? 0.0f : v;
    }
}

// Softmax cross-entropy and 0-1 error of the stacked logits (column-major classes x (rows
// sets), column i sets + k = row i of set k, labels[i] its class), reduced per set: block
// (bx, k) sums the rows i = bx, bx + gridDim.x, ... (in units of blockDim.x) of set k and
// writes partial_loss[k gridDim.x + bx] and partial_wrong[k gridDim.x + bx]; the host adds the
// partials of each set in order, so results do not vary from run to run. Per row, in f64 as
// the CPU twin: loss = max + log sum exp(z - max) - z[label]; wrong when the first arg-max
// is not the label. NaN logits give a NaN loss, which the host reports. Where the CPU twin
// differs: exp and log are the C library's there, and it adds the rows in order.
extern "C" __global__ void softmax_xent_f32(const float* logits, const tl_u32* labels,
                                            tl_u64 rows, tl_u32 classes, tl_u32 sets,
                                            double* partial_loss, double* partial_wrong) {
    const tl_u32 k = blockIdx.y;
    double loss = 0.0, wrong = 0.0;
    for (tl_u64 i = (tl_u64)blockIdx.x * blockDim.x + threadIdx.x; i < rows;
         i += (tl_u64)gridDim.x * blockDim.x) {
        const float* z = logits + (i * sets + k) * classes;
        tl_u32 best = 0;
        double max = (double)z[0];
        for (tl_u32 j = 1; j < classes; ++j) {
            const double v = (double)z[j];
            if (v > max) {
                max = v;
                best = j;
            }
        }
        double sum = 0.0;
        for (tl_u32 j = 0; j < classes; ++j) {
            sum += exp((double)z[j] - max);
        }
        const tl_u32 label = labels[i];
        loss += max + log(sum) - (double)z[label];
        wrong += best != label ? 1.0 : 0.0;
    }
    loss = tl_block_sum(loss);
    wrong = tl_block_sum(wrong);
    if (threadIdx.x == 0) {
        partial_loss[(tl_u64)k * gridDim.x + blockIdx.x] = loss;
        partial_wrong[(tl_u64)k * gridDim.x + blockIdx.x] = wrong;
    }
}

#define TL_MLP_OPS(NAME, T)                                                                    \
    extern "C" __global__ void noisy_copies_##NAME(float* out, const T* theta, tl_u64 n,       \
                                                   tl_elem<T>::acc sigma, tl_u64 seed,         \
                                                   tl_u64 stream0, tl_u64 index0,              \
                                                   tl_u32 copies) {                            \
        noisy_copies_impl<T>(out, theta, n, sigma, seed, stream0, index0, copies);             \
    }

TL_MLP_OPS(f32, float)
TL_MLP_OPS(f64, double)
TL_MLP_OPS(f16, tl_f16)
TL_MLP_OPS(bf16, tl_bf16)
