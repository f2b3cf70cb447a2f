/* transferlens across MPI ranks, in C: CKA over samples sharded across the ranks, and network
 * criticality split by module across them. Each part ends by checking itself against the
 * single-process answer and prints the largest difference; the program exits non-zero when a
 * difference passes its bound (CKA: SHARD_CKA_BOUND; criticality: 0).
 *
 *   mpirun -np 2 ./sharded_c        (run.sh beside this file builds and runs everything)
 *
 * CKA: each rank feeds the rows it holds to its own accumulator; the states are then combined by
 * MPI_Allreduce. The moments of two accumulators add up when they share a shift, so: rank 0
 * broadcasts its shift, every rank rebases on it, the moments are summed, and every rank imports
 * the shift and the sum (see tl_cka_accumulator in transferlens.h). Every rank then holds the
 * CKA matrix of all the samples. An all-reduce moves one state per rank, where gathering every
 * state to one rank to merge there would need room for all of them on that rank.
 *
 * Criticality: a module's criticality depends only on the network, its data and the options, so
 * each rank computes the modules m with m % ranks == rank (tl_module_criticality_report) and
 * broadcasts their reports; the total and the PAC-Bayes KL are sums over the modules. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard_data.h"
#include "transferlens.h"

static int rank, ranks;

/* A failed call ends every rank: the library's message first. */
#define TL_CHECK(call)                                                                            \
    do {                                                                                          \
        tl_status status_ = (call);                                                               \
        if (status_ != TL_STATUS_OK) {                                                            \
            fprintf(stderr, "rank %d: %s failed: %s: %s\n", rank, #call, tl_status_name(status_), \
                    tl_last_error_message());                                                     \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                         \
        }                                                                                         \
    } while (0)

static void *checked_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "rank %d: out of memory (%zu bytes)\n", rank, bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return p;
}

static tl_matrix host_matrix(const double *data, uint64_t rows, uint64_t cols) {
    tl_matrix m = {data, TL_DTYPE_F64, rows, cols, 0, -1};
    return m;
}

/* MPI counts are ints: a state may hold more values than INT_MAX, so sum it in pieces. */
static void allreduce_sum(double *values, size_t len) {
    const size_t piece = (size_t)1 << 26;
    for (size_t at = 0; at < len; at += piece) {
        int count = (int)(len - at < piece ? len - at : piece);
        MPI_Allreduce(MPI_IN_PLACE, values + at, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
}

static void bcast_doubles(double *values, size_t len, int root) {
    const size_t piece = (size_t)1 << 26;
    for (size_t at = 0; at < len; at += piece) {
        int count = (int)(len - at < piece ? len - at : piece);
        MPI_Bcast(values + at, count, MPI_DOUBLE, root, MPI_COMM_WORLD);
    }
}

/* The CKA matrix of this rank's rows, all-reduced into the matrix of every row. */
static void sharded_cka(tl_context *ctx, tl_cka_estimator estimator, uint64_t seed, double *out) {
    enum { LAYERS = SHARD_X_LAYERS + SHARD_Y_LAYERS };
    uint64_t first, count;
    shard_range(SHARD_SAMPLES, rank, ranks, &first, &count);
    tl_cka_accumulator *acc = NULL;
    TL_CHECK(tl_cka_accumulator_create(ctx, SHARD_X_LAYERS, SHARD_Y_LAYERS, estimator, &acc));
    /* A rank with no rows fixes the widths instead, so that it can rebase and import like
       the others. */
    if (count == 0) TL_CHECK(tl_cka_accumulator_set_widths(acc, shard_widths, LAYERS));
    double *batch[LAYERS];
    for (int l = 0; l < LAYERS; l++) batch[l] = checked_malloc(SHARD_BATCH * shard_widths[l] * sizeof(double));
    for (uint64_t at = first; at < first + count; at += SHARD_BATCH) {
        uint64_t rows = first + count - at < SHARD_BATCH ? first + count - at : SHARD_BATCH;
        tl_matrix views[LAYERS];
        for (int l = 0; l < LAYERS; l++) {
            shard_layer_rows(seed, l, at, rows, batch[l]);
            views[l] = host_matrix(batch[l], rows, shard_widths[l]);
        }
        TL_CHECK(tl_cka_accumulator_update(acc, views, views + SHARD_X_LAYERS));
    }
    for (int l = 0; l < LAYERS; l++) free(batch[l]);

    size_t shift_len = 0, moments_len = 0;
    TL_CHECK(tl_cka_accumulator_state_size(acc, &shift_len, &moments_len));
    double *shift = checked_malloc(shift_len * sizeof *shift), *moments = checked_malloc(moments_len * sizeof *moments);
    /* Rank 0's shift is a data mean when it holds rows, as it does whenever there are at least as
       many samples as ranks (a zero shift from an empty rank 0 works, less precisely). */
    TL_CHECK(tl_cka_accumulator_export(acc, shift, shift_len, moments, moments_len));
    bcast_doubles(shift, shift_len, 0);
    TL_CHECK(tl_cka_accumulator_rebase(acc, shift, shift_len));
    TL_CHECK(tl_cka_accumulator_export(acc, shift, shift_len, moments, moments_len));
    allreduce_sum(moments, moments_len);
    TL_CHECK(tl_cka_accumulator_import(acc, shift, shift_len, moments, moments_len));
    TL_CHECK(tl_cka_accumulator_result(acc, out));
    free(shift);
    free(moments);
    tl_cka_accumulator_destroy(acc);
}

/* The single-process answer: tl_cka_matrix on every row. */
static void single_process_cka(tl_context *ctx, tl_cka_estimator estimator, uint64_t seed, double *out) {
    enum { LAYERS = SHARD_X_LAYERS + SHARD_Y_LAYERS };
    double *all[LAYERS];
    tl_matrix views[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        all[l] = checked_malloc(SHARD_SAMPLES * shard_widths[l] * sizeof(double));
        shard_layer_rows(seed, l, 0, SHARD_SAMPLES, all[l]);
        views[l] = host_matrix(all[l], SHARD_SAMPLES, shard_widths[l]);
    }
    TL_CHECK(tl_cka_matrix(ctx, views, SHARD_X_LAYERS, views + SHARD_X_LAYERS, SHARD_Y_LAYERS, estimator, out));
    for (int l = 0; l < LAYERS; l++) free(all[l]);
}

/* Returns 1 when the sharded matrices are within the bound on every rank. */
static int cka_part(tl_context *ctx, uint64_t seed) {
    enum { PAIRS = SHARD_X_LAYERS * SHARD_Y_LAYERS };
    int ok = 1;
    for (int e = 0; e < 2; e++) {
        tl_cka_estimator estimator = e == 0 ? TL_CKA_BIASED : TL_CKA_DEBIASED;
        double sharded[PAIRS], single[PAIRS], worst = 0, relative = 0;
        sharded_cka(ctx, estimator, seed, sharded);
        single_process_cka(ctx, estimator, seed, single);
        for (int k = 0; k < PAIRS; k++) {
            double d = fabs(sharded[k] - single[k]);
            worst = fmax(worst, d);
            relative = fmax(relative, d / fmax(1.0, fabs(single[k])));
        }
        /* Every rank holds the same matrix: its largest and smallest value over the ranks agree. */
        double high[PAIRS], low[PAIRS];
        MPI_Allreduce(sharded, high, PAIRS, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(sharded, low, PAIRS, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        int same = memcmp(high, low, sizeof high) == 0;
        MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, &relative, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        int passed = same && relative <= SHARD_CKA_BOUND;
        if (rank == 0) {
            printf("CKA (%s), %d samples over %d ranks:", e == 0 ? "biased" : "debiased", SHARD_SAMPLES, ranks);
            for (int k = 0; k < PAIRS; k++) printf(" %.6f", sharded[k]);
            printf("\n  largest difference from a single process: %.3g (bound %.0e)%s; ranks %s\n", worst,
                   SHARD_CKA_BOUND, relative <= SHARD_CKA_BOUND ? "" : ": OVER THE BOUND",
                   same ? "agree bit for bit" : "DISAGREE");
        }
        ok = ok && passed;
    }
    return ok;
}

/* |a - b|, 0 when both are the same infinity. */
static double gap(double a, double b) { return a == b ? 0.0 : fabs(a - b); }

/* The largest difference between two reports over every field (counts included). */
static double report_gap(const tl_criticality_report *a, const tl_criticality_report *b) {
    const double pairs[][2] = {
        {a->value, b->value},       {a->per_parameter, b->per_parameter}, {a->pac_bayes_term, b->pac_bayes_term},
        {a->spread, b->spread},     {a->alpha, b->alpha},                 {a->sigma, b->sigma},
        {a->noise_std, b->noise_std}, {a->expected, b->expected},         {a->expected_se, b->expected_se},
        {a->rewound_metric, b->rewound_metric}, {a->rewind_area, b->rewind_area},
        {(double)a->numel, (double)b->numel},   {(double)a->points, (double)b->points},
        {a->feasible, b->feasible}, {a->repeats, b->repeats},
    };
    double worst = 0;
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) worst = fmax(worst, gap(pairs[i][0], pairs[i][1]));
    return worst;
}

/* Trained weights of the MLP on every rank: rank 0 trains, then broadcasts them into memory that
 * each rank wraps (tl_params_wrap), as a checkpoint would reach every rank. */
static struct tl_params *trained_mlp(tl_context *ctx, const float *x, const uint32_t *labels, float **storage) {
    enum { MODULES = SHARD_MLP_LAYERS - 1 };
    char names[2 * MODULES][32];
    uint64_t shapes[2 * MODULES][2];
    tl_tensor tensors[2 * MODULES];
    size_t total = 0;
    for (int m = 0; m < MODULES; m++) {
        uint64_t in = shard_mlp_sizes[m], out = shard_mlp_sizes[m + 1];
        snprintf(names[2 * m], sizeof names[0], "fc%d.weight", m + 1);
        snprintf(names[2 * m + 1], sizeof names[0], "fc%d.bias", m + 1);
        shapes[2 * m][0] = out, shapes[2 * m][1] = in, shapes[2 * m + 1][0] = out;
        total += out * in + out;
    }
    float *data = *storage = checked_malloc(total * sizeof *data);
    if (rank == 0) {
        struct tl_params *p = NULL;
        TL_CHECK(tl_mlp_init(shard_mlp_sizes, SHARD_MLP_LAYERS, 2, &p));
        tl_train_options train = tl_train_options_default();
        train.epochs = 30;
        TL_CHECK(tl_mlp_train(shard_mlp_sizes, SHARD_MLP_LAYERS, p, x, labels, SHARD_MLP_ROWS, &train, NULL, 0));
        size_t at = 0;
        for (int t = 0; t < 2 * MODULES; t++) {
            tl_dtype dtype;
            const void *values = NULL;
            uint64_t numel = 0;
            TL_CHECK(tl_params_tensor_data(p, names[t], &dtype, &values, &numel));
            memcpy(data + at, values, numel * sizeof(float));
            at += numel;
        }
        tl_params_destroy(p);
    }
    MPI_Bcast(data, (int)total, MPI_FLOAT, 0, MPI_COMM_WORLD);
    size_t at = 0;
    for (int t = 0; t < 2 * MODULES; t++) {
        int is_weight = t % 2 == 0;
        tensors[t] = (tl_tensor){names[t], data + at, TL_DTYPE_F32, shapes[t], is_weight ? 2u : 1u, -1};
        at += shapes[t][0] * (is_weight ? shapes[t][1] : 1);
    }
    struct tl_params *wrapped = NULL;
    TL_CHECK(tl_params_wrap(ctx, tensors, 2 * MODULES, &wrapped));
    return wrapped;
}

/* Returns 1 when the modules computed across the ranks equal the single-process network report. */
static int criticality_part(tl_context *ctx, uint64_t seed) {
    float *x = checked_malloc(SHARD_MLP_ROWS * shard_mlp_sizes[0] * sizeof *x);
    uint32_t *labels = checked_malloc(SHARD_MLP_ROWS * sizeof *labels);
    shard_mlp_rows(seed, 0, SHARD_MLP_ROWS, x, labels);
    tl_evaluator *ev = NULL;
    TL_CHECK(tl_evaluator_mlp(shard_mlp_sizes, SHARD_MLP_LAYERS, x, labels, SHARD_MLP_ROWS, &ev));
    struct tl_params *init = NULL, *live = NULL;
    float *weights = NULL;
    TL_CHECK(tl_mlp_init(shard_mlp_sizes, SHARD_MLP_LAYERS, 1, &init));
    struct tl_params *final_ = trained_mlp(ctx, x, labels, &weights);
    TL_CHECK(tl_params_clone(final_, &live));
    size_t modules = tl_params_module_count(final_);

    /* Fewer noise samples and a coarser search than the defaults: a quick example. */
    tl_criticality_options opts = tl_criticality_options_default();
    opts.samples = 4;
    opts.alphas = 6;
    opts.alpha_steps = 2;
    opts.repeats = 2;
    opts.seed = seed;

    tl_criticality_report *reports = checked_malloc(modules * sizeof *reports);
    memset(reports, 0, modules * sizeof *reports);
    for (size_t m = 0; m < modules; m++) {
        reports[m].size = sizeof *reports;
        if ((int)(m % (size_t)ranks) == rank)
            TL_CHECK(tl_module_criticality_report(ctx, ev, init, final_, NULL, 0, live, m, &opts, &reports[m]));
    }
    for (size_t m = 0; m < modules; m++)
        MPI_Bcast(&reports[m], (int)sizeof *reports, MPI_BYTE, (int)(m % (size_t)ranks), MPI_COMM_WORLD);
    double total = 0, kl = 0;
    for (size_t m = 0; m < modules; m++) total += reports[m].value, kl += reports[m].pac_bayes_term;

    /* The check: rank 0 computes the whole network in one process. */
    double worst = 0;
    if (rank == 0) {
        tl_criticality_report *single = checked_malloc(modules * sizeof *single);
        for (size_t m = 0; m < modules; m++) single[m].size = sizeof *single;
        tl_network_report net;
        net.size = sizeof net;
        TL_CHECK(tl_network_criticality_report(ctx, ev, init, final_, NULL, 0, live, &opts, single, modules, &net));
        printf("network criticality, %zu modules over %d ranks:", modules, ranks);
        for (size_t m = 0; m < modules; m++) {
            char name[64];
            tl_params_module_name(final_, m, name, sizeof name);
            printf(" %s %.4g (rank %zu)", name, reports[m].value, m % (size_t)ranks);
            worst = fmax(worst, report_gap(&reports[m], &single[m]));
        }
        worst = fmax(worst, fmax(gap(total, net.total), gap(kl, net.pac_bayes_kl)));
        printf("\n  total %.6g, PAC-Bayes KL %.6g; largest difference from a single process: %.3g%s\n", total, kl,
               worst, worst == 0 ? "" : ": NOT 0");
        free(single);
    }
    MPI_Bcast(&worst, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);

    free(reports);
    tl_params_destroy(live);
    tl_params_destroy(final_);
    tl_params_destroy(init);
    tl_evaluator_destroy(ev);
    free(weights);
    free(x);
    free(labels);
    return worst == 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    const uint64_t seed = 20;
    tl_context *ctx = NULL;
    TL_CHECK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    int cka_ok = cka_part(ctx, seed);
    int criticality_ok = criticality_part(ctx, seed);
    tl_context_destroy(ctx);
    if (rank == 0) printf("%s\n", cka_ok && criticality_ok ? "sharded C example: OK" : "sharded C example: FAILED");
    MPI_Finalize();
    return cka_ok && criticality_ok ? 0 : 1;
}
