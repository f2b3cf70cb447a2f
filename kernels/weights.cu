// Weight-space kernels: interpolation, segmented sums of squares, the raw Philox normals and
// dtype conversion. Names are <op>_<dtype>; one template per op, instantiated at the end.
// CPU twin: src/backend/cpu/weights.rs; host code: src/backend/cuda/weights.rs.
//
// Arithmetic is in f32 for f16 / bf16 / f32 storage and in f64 for f64, rounded once to the
// storage type. Reductions accumulate in f64.
#include "common.cuh"
#include "philox.cuh"

// out = (1 - l) a + l b, as fma(l, b, (1 - l) a) in acc, then rounded to T once. The CPU twin
// computes the same expression (lerp32 / lerp_f64, with mul_add) and gives the same bits. l = 0
// and l = 1 copy the endpoint's bits (the formula would turn -0 into +0 and NaN payloads into
// the default NaN). When nonfinite is not NULL, *nonfinite = 1 if a result is NaN or Inf (an
// input holds one, or the result overflows T), as the CPU checks every result.
template <typename T>
__device__ void lerp_impl(T* out, const T* a, const T* b, tl_u64 n,
                          typename tl_elem<T>::acc l, int* nonfinite) {
    typedef tl_elem<T> E;
    typedef typename E::acc A;
    const int V = tl_pack<T>::N;
    // Vector body (16 bytes per array per thread and step) when every pointer is aligned, then
    // the scalar tail; misaligned pointers take the scalar loop for everything.
    const bool vec = tl_aligned16(out) && tl_aligned16(a) && tl_aligned16(b);
    const tl_u64 nv = vec ? n / V : 0;
    const tl_u64 done = nv * V;
    bool bad = false;
    if (l == A(0) || l == A(1)) {
        const T* src = l == A(0) ? a : b;
        TL_GRID_STRIDE(j, nv) {
            const tl_pack<T> p = tl_load16(src + j * V);
            tl_store16(out + j * V, p);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                bad |= tl_nonfinite(E::to_f64(p.v[k]));
            }
        }
        for (tl_u64 i = done + tl_thread_id(); i < n; i += tl_thread_count()) {
            out[i] = src[i];
            bad |= tl_nonfinite(E::to_f64(src[i]));
        }
    } else {
        const A m = A(1) - l;
        TL_GRID_STRIDE(j, nv) {
            const tl_pack<T> pa = tl_load16(a + j * V);
            const tl_pack<T> pb = tl_load16(b + j * V);
            tl_pack<T> po;
#pragma unroll
            for (int k = 0; k < V; ++k) {
                po.v[k] = E::store(tl_fma(l, E::load(pb.v[k]), m * E::load(pa.v[k])));
                bad |= tl_nonfinite(E::to_f64(po.v[k]));
            }
            tl_store16(out + j * V, po);
        }
        for (tl_u64 i = done + tl_thread_id(); i < n; i += tl_thread_count()) {
            const T r = E::store(tl_fma(l, E::load(b[i]), m * E::load(a[i])));
            out[i] = r;
            bad |= tl_nonfinite(E::to_f64(r));
        }
    }
    if (bad && nonfinite != 0) {
        *nonfinite = 1;
    }
}

// out[e] = z(seed, stream, index0 + e): the raw stream of philox.cuh, which the tests compare
// with src/rng.rs and the GPU benchmark uses for its data.
template <typename A>
__device__ void normals_impl(A* out, tl_u64 n, tl_u64 seed, tl_u64 stream, tl_u64 index0) {
    const tl_u64 first = index0 >> 2;
    const tl_u64 count = ((index0 + n - 1) >> 2) - first + 1;
    TL_GRID_STRIDE(j, count) {
        const tl_u64 blk = first + j;
        A z[4];
        tl_normals4(seed, stream, blk, z);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const tl_u64 idx = 4 * blk + (tl_u64)k;
            if (idx >= index0 && idx - index0 < n) {
                out[idx - index0] = z[k];
            }
        }
    }
}

// For segments s = 0 .. nseg - 1 covering elements offsets[s] .. offsets[s + 1] of a and b:
// out_diff[s] += sum (a - b)^2 (when b is not NULL) and out_a[s] += sum a^2 (when out_a is not
// NULL), in f64. One launch for all segments: block k takes the elements
// k chunk .. (k + 1) chunk (grid-stride over chunks), walks the segments overlapping them and
// adds one partial per segment with an atomic, so the work is balanced however unequal the
// segments are. The outputs must be zeroed first. The order of the atomic additions varies, so
// results may differ from run to run in the last bits.
template <typename T>
__device__ void segment_sumsq_impl(const T* a, const T* b, const tl_u64* offsets, tl_u32 nseg,
                                   tl_u64 chunk, double* out_diff, double* out_a) {
    typedef tl_elem<T> E;
    const int V = tl_pack<T>::N;
    const bool vec = tl_aligned16(a) && (b == 0 || tl_aligned16(b));
    const tl_u64 total = offsets[nseg];
    for (tl_u64 c0 = (tl_u64)blockIdx.x * chunk; c0 < total; c0 += (tl_u64)gridDim.x * chunk) {
        const tl_u64 c1 = c0 + chunk < total ? c0 + chunk : total;
        // First segment ending after c0 (offsets are non-decreasing): binary search.
        tl_u32 lo = 0, hi = nseg;
        while (lo < hi) {
            const tl_u32 mid = (lo + hi) >> 1;
            if (offsets[mid + 1] > c0) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        for (tl_u32 s = lo; s < nseg && offsets[s] < c1; ++s) {
            const tl_u64 s0 = offsets[s] > c0 ? offsets[s] : c0;
            const tl_u64 s1 = offsets[s + 1] < c1 ? offsets[s + 1] : c1;
            double sd = 0.0, sa = 0.0;
            // Aligned 16-byte vectors from the first multiple of V at or after s0 to the last
            // before s1; the scalar loop takes the head and the tail (and everything when a
            // pointer is misaligned).
            tl_u64 v0 = s0, v1 = s0;
            if (vec) {
                v0 = (s0 + V - 1) / V * V;
                v1 = s1 / V * V;
                if (v1 < v0) {
                    v0 = v1 = s0;
                }
            }
            for (tl_u64 j = v0 / V + threadIdx.x; j < v1 / V; j += blockDim.x) {
                const tl_pack<T> pa = tl_load16(a + j * V);
                double ta = 0.0, td = 0.0;
                if (b != 0) {
                    const tl_pack<T> pb = tl_load16(b + j * V);
#pragma unroll
                    for (int k = 0; k < V; ++k) {
                        const double d = E::to_f64(pa.v[k]) - E::to_f64(pb.v[k]);
                        td = fma(d, d, td);
                    }
                }
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const double x = E::to_f64(pa.v[k]);
                    ta = fma(x, x, ta);
                }
                sd += td;
                sa += ta;
            }
            const tl_u64 nhead = v0 - s0;
            for (tl_u64 t = threadIdx.x; t < nhead + (s1 - v1); t += blockDim.x) {
                const tl_u64 i = t < nhead ? s0 + t : v1 + (t - nhead);
                const double x = E::to_f64(a[i]);
                if (b != 0) {
                    const double d = x - E::to_f64(b[i]);
                    sd = fma(d, d, sd);
                }
                sa = fma(x, x, sa);
            }
            // Uniform control flow: s, s0, s1 are the same in every thread of the block.
            if (b != 0) {
                sd = tl_block_sum(sd);
            }
            if (out_a != 0) {
                sa = tl_block_sum(sa);
            }
            if (threadIdx.x == 0) {
                if (b != 0) {
                    atomicAdd(out_diff + s, sd);
                }
                if (out_a != 0) {
                    atomicAdd(out_a + s, sa);
                }
            }
        }
    }
}

// out = in converted to D, rounded once to nearest even (through f64, which holds every source
// value exactly; f64 -> f16 / bf16 goes through round-to-odd f32, see common.cuh).
template <typename S, typename D>
__device__ void convert_impl(D* out, const S* in, tl_u64 n) {
    TL_GRID_STRIDE(i, n) { out[i] = tl_elem<D>::from_f64(tl_elem<S>::to_f64(in[i])); }
}

#define TL_WEIGHTS_OPS(NAME, T)                                                                 \
    extern "C" __global__ void lerp_##NAME(T* out, const T* a, const T* b, tl_u64 n,            \
                                           tl_elem<T>::acc l, int* nonfinite) {                 \
        lerp_impl<T>(out, a, b, n, l, nonfinite);                                               \
    }                                                                                           \
    extern "C" __global__ void segment_sumsq_##NAME(const T* a, const T* b,                     \
                                                    const tl_u64* offsets, tl_u32 nseg,         \
                                                    tl_u64 chunk, double* out_diff,             \
                                                    double* out_a) {                            \
        segment_sumsq_impl<T>(a, b, offsets, nseg, chunk, out_diff, out_a);                     \
    }

TL_WEIGHTS_OPS(f32, float)
TL_WEIGHTS_OPS(f64, double)
TL_WEIGHTS_OPS(f16, tl_f16)
TL_WEIGHTS_OPS(bf16, tl_bf16)

extern "C" __global__ void normals_f32(float* out, tl_u64 n, tl_u64 seed, tl_u64 stream,
                                       tl_u64 index0) {
    normals_impl<float>(out, n, seed, stream, index0);
}
extern "C" __global__ void normals_f64(double* out, tl_u64 n, tl_u64 seed, tl_u64 stream,
                                       tl_u64 index0) {
    normals_impl<double>(out, n, seed, stream, index0);
}

#define TL_CONVERT(SN, S, DN, D)                                                          \
    extern "C" __global__ void convert_##SN##_to_##DN(D* out, const S* in, tl_u64 n) {    \
        convert_impl<S, D>(out, in, n);                                                   \
    }

TL_CONVERT(f32, float, f64, double)
TL_CONVERT(f32, float, f16, tl_f16)
TL_CONVERT(f32, float, bf16, tl_bf16)
TL_CONVERT(f64, double, f32, float)
TL_CONVERT(f64, double, f16, tl_f16)
TL_CONVERT(f64, double, bf16, tl_bf16)
TL_CONVERT(f16, tl_f16, f32, float)
TL_CONVERT(f16, tl_f16, f64, double)
TL_CONVERT(f16, tl_f16, bf16, tl_bf16)
TL_CONVERT(bf16, tl_bf16, f32, float)
TL_CONVERT(bf16, tl_bf16, f64, double)
TL_CONVERT(bf16, tl_bf16, f16, tl_f16)
