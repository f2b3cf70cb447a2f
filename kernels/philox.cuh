// Philox4x32-10 and Box-Muller normals: the same stream as src/rng.rs (see its module docs).
//
// key = (seed lo, seed hi); counter = (block lo, block hi, stream lo, stream hi), block = index / 4.
// One call gives the normals of elements 4 block .. 4 block + 3: (w0, w1) -> elements 0, 1 and
// (w2, w3) -> elements 2, 3 as r cos(2 pi v), r sin(2 pi v) with r = sqrt(-2 ln u),
// u = ((w_even >> 8) + 1) 2^-24 in (0, 1] and v = (w_odd >> 8) 2^-24 in [0, 1).
// The uniforms are exact in f32, so they equal the CPU's bit for bit; the normals differ from
// the CPU's (computed in f64) only by the rounding of the device's math functions.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void tl_philox4x32_10(tl_u32 c[4], tl_u32 k0, tl_u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const tl_u32 hi0 = __umulhi(0xD2511F53u, c[0]);
        const tl_u32 lo0 = 0xD2511F53u * c[0];
        const tl_u32 hi1 = __umulhi(0xCD9E8D57u, c[2]);
        const tl_u32 lo1 = 0xCD9E8D57u * c[2];
        const tl_u32 n0 = hi1 ^ c[1] ^ k0;
        const tl_u32 n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

__device__ __forceinline__ void tl_philox_block(tl_u64 seed, tl_u64 stream, tl_u64 block,
                                                tl_u32 w[4]) {
    w[0] = (tl_u32)block;
    w[1] = (tl_u32)(block >> 32);
    w[2] = (tl_u32)stream;
    w[3] = (tl_u32)(stream >> 32);
    tl_philox4x32_10(w, (tl_u32)seed, (tl_u32)(seed >> 32));
}

// Uniforms: 24-bit integers times 2^-24, exact in f32 and f64.
__device__ __forceinline__ float tl_radius_uniform(tl_u32 w) {
    return (float)((w >> 8) + 1u) * 5.9604644775390625e-8f;
}
__device__ __forceinline__ float tl_angle_uniform(tl_u32 w) {
    return (float)(w >> 8) * 5.9604644775390625e-8f;
}

__device__ __forceinline__ void tl_normals4(tl_u64 seed, tl_u64 stream, tl_u64 block, float z[4]) {
    tl_u32 w[4];
    tl_philox_block(seed, stream, block, w);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const float r = sqrtf(-2.0f * logf(tl_radius_uniform(w[2 * j])));
        float s, c;
        sincospif(2.0f * tl_angle_uniform(w[2 * j + 1]), &s, &c);
        z[2 * j] = r * c;
        z[2 * j + 1] = r * s;
    }
}

__device__ __forceinline__ void tl_normals4(tl_u64 seed, tl_u64 stream, tl_u64 block,
                                            double z[4]) {
    tl_u32 w[4];
    tl_philox_block(seed, stream, block, w);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const double r = sqrt(-2.0 * log((double)tl_radius_uniform(w[2 * j])));
        double s, c;
        sincospi(2.0 * (double)tl_angle_uniform(w[2 * j + 1]), &s, &c);
        z[2 * j] = r * c;
        z[2 * j + 1] = r * s;
    }
}
