/* The data of the MPI examples (sharded.c, sharded.cpp): every value is a function of (seed,
 * stream, index) alone, so a rank can make exactly its own rows of a data set, and also every
 * row, to compute the single-process answer it checks itself against. C99, usable from C++. */
#ifndef SHARD_DATA_H
#define SHARD_DATA_H

#include <math.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The CKA part: SHARD_SAMPLES rows of two x layers and two y layers, each a different function of
 * SHARD_LATENT hidden normals per row, so that the CKA values are neither 0 nor 1. */
enum { SHARD_SAMPLES = 2000, SHARD_LATENT = 8, SHARD_X_LAYERS = 2, SHARD_Y_LAYERS = 2, SHARD_BATCH = 64 };
static const uint64_t shard_widths[SHARD_X_LAYERS + SHARD_Y_LAYERS] = {24, 16, 12, 20}; /* x layers, then y */

/* The accumulator's bound on f64 data: the C and Rust tests hold every merged or all-reduced
 * CKA value within 1e-10 of the full-data value (|difference| <= 1e-10 max(1, |value|)). */
#define SHARD_CKA_BOUND 1e-10

/* The criticality part: the built-in MLP (inputs, hidden, hidden, classes: modules fc1 to fc3)
 * trained on SHARD_MLP_ROWS rows. */
enum { SHARD_MLP_ROWS = 600, SHARD_MLP_LAYERS = 4 };
static const uint64_t shard_mlp_sizes[SHARD_MLP_LAYERS] = {8, 32, 16, 4};

/* splitmix64's finaliser over (seed, stream, index): independent uniform 64-bit values. */
static inline uint64_t shard_mix(uint64_t seed, uint64_t stream, uint64_t index) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ULL ^ stream * 0xd1b54a32d192ed03ULL ^ index * 0x94d049bb133111ebULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A uniform in (0, 1). */
static inline double shard_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return ((double)(shard_mix(seed, stream, index) >> 11) + 0.5) / 9007199254740992.0;
}

/* A standard normal (Box-Muller on two uniforms of the index). */
static inline double shard_normal(uint64_t seed, uint64_t stream, uint64_t index) {
    double u = shard_uniform(seed, stream, 2 * index), v = shard_uniform(seed, stream, 2 * index + 1);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* The rows [first, first + count) of the rank of `ranks` that holds them: the samples are cut
 * into consecutive, nearly equal shards. */
static inline void shard_range(uint64_t total, int rank, int ranks, uint64_t *first, uint64_t *count) {
    uint64_t lo = total * (uint64_t)rank / (uint64_t)ranks, hi = total * (uint64_t)(rank + 1) / (uint64_t)ranks;
    *first = lo;
    *count = hi - lo;
}

/* Rows [first, first + rows) of CKA layer `layer` (0, 1: x layers; 2, 3: y layers), row-major
 * rows x shard_widths[layer] doubles: a fixed random map of the row's latent normals, a
 * nonlinearity per layer, noise, and for layer 0 an offset of 50 (the accumulator's shift keeps
 * its precision). */
static inline void shard_layer_rows(uint64_t seed, int layer, uint64_t first, uint64_t rows, double *out) {
    const uint64_t width = shard_widths[layer];
    for (uint64_t r = 0; r < rows; r++) {
        double latent[SHARD_LATENT];
        for (int k = 0; k < SHARD_LATENT; k++) latent[k] = shard_normal(seed, 1, (first + r) * SHARD_LATENT + k);
        for (uint64_t j = 0; j < width; j++) {
            double h = 0;
            for (int k = 0; k < SHARD_LATENT; k++) h += shard_normal(seed, 10 + layer, j * SHARD_LATENT + k) * latent[k];
            double noise = shard_normal(seed, 20 + layer, (first + r) * width + j);
            double v = layer == 0 ? 50.0 + h : layer == 1 ? tanh(h) : layer == 2 ? h + h * h / 8.0 : h > 0 ? h : 0.1 * h;
            out[r * width + j] = v + 0.5 * noise;
        }
    }
}

/* Rows [first, first + rows) of the MLP's data: normal inputs (rows x shard_mlp_sizes[0]
 * floats) and the class of the largest of 4 fixed linear scores of them. */
static inline void shard_mlp_rows(uint64_t seed, uint64_t first, uint64_t rows, float *x, uint32_t *labels) {
    const uint64_t in = shard_mlp_sizes[0], classes = shard_mlp_sizes[SHARD_MLP_LAYERS - 1];
    for (uint64_t r = 0; r < rows; r++) {
        for (uint64_t k = 0; k < in; k++) x[r * in + k] = (float)shard_normal(seed, 30, (first + r) * in + k);
        uint32_t best = 0;
        double best_score = -INFINITY;
        for (uint64_t c = 0; c < classes; c++) {
            double s = 0;
            for (uint64_t k = 0; k < in; k++) s += shard_normal(seed, 31, c * in + k) * x[r * in + k];
            if (s > best_score) best_score = s, best = (uint32_t)c;
        }
        labels[r] = best;
    }
}

#ifdef __cplusplus
}
#endif

#endif
