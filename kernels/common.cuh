// Shared definitions of the transferlens kernels.
//
// The kernels are compiled at run time by NVRTC with no CUDA toolkit headers on the include path
// (the libnvrtc wheel ships none), so this file defines what cuda_fp16.h / cuda_bf16.h /
// stdint.h would otherwise provide: fixed-width integers and the f16 / bf16 conversions.
// Conversions round to nearest, ties to even, exactly as IEEE 754 and the `half` crate do.
#pragma once

typedef unsigned short tl_u16;
typedef unsigned int tl_u32;
typedef unsigned long long tl_u64;

// f16 and bf16 are stored as raw bits; the wrappers keep the two apart in templates.
struct tl_f16 {
    tl_u16 bits;
};
struct tl_bf16 {
    tl_u16 bits;
};

// ---- f16 / bf16 <-> f32 -----------------------------------------------------------------------

__device__ __forceinline__ float tl_f16_to_f32(tl_u16 h) {
    const tl_u32 sign = (tl_u32)(h & 0x8000u) << 16;
    const tl_u32 exp = (h >> 10) & 0x1fu;
    const tl_u32 man = h & 0x3ffu;
    if (exp == 0x1fu) {  // inf, or NaN made quiet (as the half crate does)
        return __uint_as_float(sign | 0x7f800000u | (man ? 0x400000u | (man << 13) : 0u));
    }
    if (exp == 0u) {  // zero or subnormal: man * 2^-24, exact in f32
        return __uint_as_float(sign | __float_as_uint((float)man * 5.9604644775390625e-8f));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

__device__ __forceinline__ tl_u16 tl_f32_to_f16(float f) {
    const tl_u32 x = __float_as_uint(f);
    const tl_u32 sign = (x >> 16) & 0x8000u;
    const tl_u32 ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {  // NaN: quiet, top payload bits kept
        return (tl_u16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) {  // >= 65520 (half-way past 65504, ties to even) and inf
        return (tl_u16)(sign | 0x7c00u);
    }
    if (ax >= 0x38800000u) {  // normal in f16 (>= 2^-14): rebias, round 23 -> 10 bits
        const tl_u32 r = ax - 0x38000000u;
        return (tl_u16)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
    }
    if (ax < 0x33000000u) {  // < 2^-25: rounds to zero (2^-25 itself ties to even 0 below)
        return (tl_u16)sign;
    }
    // Subnormal in f16: the value is m * 2^(e - 150), i.e. m >> (126 - e) units of 2^-24.
    const tl_u32 e = ax >> 23;
    const tl_u32 m = (ax & 0x7fffffu) | 0x800000u;
    const tl_u32 s = 126u - e;  // 14 ..= 24
    tl_u32 q = m >> s;
    const tl_u32 rem = m & ((1u << s) - 1u);
    const tl_u32 half = 1u << (s - 1u);
    if (rem > half || (rem == half && (q & 1u))) {
        q += 1u;  // may carry into the smallest normal, which is the right encoding
    }
    return (tl_u16)(sign | q);
}

__device__ __forceinline__ float tl_bf16_to_f32(tl_u16 h) {
    return __uint_as_float((tl_u32)h << 16);
}

__device__ __forceinline__ tl_u16 tl_f32_to_bf16(float f) {
    const tl_u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: quiet
        return (tl_u16)((x >> 16) | 0x40u);
    }
    return (tl_u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// f64 -> f32 rounded to odd: truncate, then set the last bit if anything was lost. Rounding
// that to f16 / bf16 (at least 2 bits shorter) to nearest gives the correctly rounded f64 ->
// f16 / bf16 result, with no double rounding.
__device__ __forceinline__ float tl_f64_to_f32_odd(double d) {
    const float t = __double2float_rz(d);
    if ((double)t == d) {
        return t;
    }
    return __uint_as_float(__float_as_uint(t) | 1u);
}

// ---- element traits -----------------------------------------------------------------------------
// acc: the arithmetic type (f32 for f16 / bf16 / f32, f64 for f64); load / store convert
// between storage and acc, store rounding once to nearest even.

template <typename T>
struct tl_elem;

template <>
struct tl_elem<float> {
    typedef float acc;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
    static __device__ __forceinline__ double to_f64(float v) { return (double)v; }
    static __device__ __forceinline__ float from_f64(double v) { return (float)v; }
};

template <>
struct tl_elem<double> {
    typedef double acc;
    static __device__ __forceinline__ double load(double v) { return v; }
    static __device__ __forceinline__ double store(double v) { return v; }
    static __device__ __forceinline__ double to_f64(double v) { return v; }
    static __device__ __forceinline__ double from_f64(double v) { return v; }
};

template <>
struct tl_elem<tl_f16> {
    typedef float acc;
    static __device__ __forceinline__ float load(tl_f16 v) { return tl_f16_to_f32(v.bits); }
    static __device__ __forceinline__ tl_f16 store(float v) {
        tl_f16 r;
        r.bits = tl_f32_to_f16(v);
        return r;
    }
    static __device__ __forceinline__ double to_f64(tl_f16 v) { return (double)load(v); }
    static __device__ __forceinline__ tl_f16 from_f64(double v) {
        return store(tl_f64_to_f32_odd(v));
    }
};

template <>
struct tl_elem<tl_bf16> {
    typedef float acc;
    static __device__ __forceinline__ float load(tl_bf16 v) { return tl_bf16_to_f32(v.bits); }
    static __device__ __forceinline__ tl_bf16 store(float v) {
        tl_bf16 r;
        r.bits = tl_f32_to_bf16(v);
        return r;
    }
    static __device__ __forceinline__ double to_f64(tl_bf16 v) { return (double)load(v); }
    static __device__ __forceinline__ tl_bf16 from_f64(double v) {
        return store(tl_f64_to_f32_odd(v));
    }
};

__device__ __forceinline__ float tl_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double tl_fma(double a, double b, double c) { return fma(a, b, c); }

// Whether a value (widened to f64) is NaN or +-Inf: every exponent bit set. A bit test, so
// that no compiler flag can fold it away.
__device__ __forceinline__ bool tl_nonfinite(double v) {
    return (__double_as_longlong(v) & 0x7ff0000000000000LL) == 0x7ff0000000000000LL;
}

// ---- 16-byte vectors ----------------------------------------------------------------------------
// One 16-byte load or store moves 4 f32, 2 f64 or 8 f16 / bf16 (ld.global.v4.u32): a quarter of
// the memory instructions of scalar access for f32, an eighth for the 2-byte types, and 16 bytes
// in flight per instruction. The vector paths require 16-byte aligned pointers (checked at run
// time: memory wrapped from other libraries need not be) and fall back to scalar code otherwise.

struct alignas(16) tl_v16 {
    tl_u32 x, y, z, w;
};

template <typename T>
union tl_pack {
    enum { N = 16 / sizeof(T) };
    tl_v16 raw;
    T v[16 / sizeof(T)];
};

template <typename T>
__device__ __forceinline__ bool tl_aligned16(const T* p) {
    return ((tl_u64)p & 15u) == 0u;
}

template <typename T>
__device__ __forceinline__ tl_pack<T> tl_load16(const T* p) {
    tl_pack<T> r;
    r.raw = *reinterpret_cast<const tl_v16*>(p);
    return r;
}

template <typename T>
__device__ __forceinline__ void tl_store16(T* p, const tl_pack<T>& v) {
    *reinterpret_cast<tl_v16*>(p) = v.raw;
}

// ---- loops and reductions -----------------------------------------------------------------------

// Grid-stride loop over 0 .. n with 64-bit indices: correct for any grid size.
#define TL_GRID_STRIDE(i, n)                                                        \
    for (tl_u64 i = (tl_u64)blockIdx.x * blockDim.x + threadIdx.x; i < (tl_u64)(n); \
         i += (tl_u64)gridDim.x * blockDim.x)

// The global thread index and the number of threads of the grid.
__device__ __forceinline__ tl_u64 tl_thread_id() { return (tl_u64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ tl_u64 tl_thread_count() { return (tl_u64)gridDim.x * blockDim.x; }

__device__ __forceinline__ double tl_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;
}

// Sum of v over a 1-D block whose size is a multiple of 32; the result is valid in thread 0.
// Every thread of the block must call it (it synchronises).
__device__ __forceinline__ double tl_block_sum(double v) {
    __shared__ double warp_sums[32];
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warp = threadIdx.x >> 5;
    v = tl_warp_sum(v);
    __syncthreads();  // a previous call may still be reading warp_sums
    if (lane == 0u) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    const unsigned nwarps = blockDim.x >> 5;
    v = threadIdx.x < nwarps ? warp_sums[threadIdx.x] : 0.0;
    if (warp == 0u) {
        v = tl_warp_sum(v);
    }
    return v;
}
