/* CKA's uncertainty through the C ABI (tl_cka_statistics): the interval, the null and the most
 * influential samples against a plain f64 reference written here, the size-versioned structs,
 * and every error path. */
#include <stddef.h>

#include "transferlens.h"
#include "check.h"

/* splitmix64: reproducible data. */
static uint64_t rng_state = 20;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

/* Biased HSIC of rows [0, n) except `skip` (n: none) of x (n x p) and y (n x q). */
static double ref_hsic(const double *x, size_t p, const double *y, size_t q, size_t n, size_t skip) {
    double mx[16] = {0}, my[16] = {0}, kept = 0;
    for (size_t r = 0; r < n; r++) {
        if (r == skip) continue;
        kept += 1;
        for (size_t i = 0; i < p; i++) mx[i] += x[r * p + i];
        for (size_t j = 0; j < q; j++) my[j] += y[r * q + j];
    }
    for (size_t i = 0; i < p; i++) mx[i] /= kept;
    for (size_t j = 0; j < q; j++) my[j] /= kept;
    double fro = 0;
    for (size_t i = 0; i < p; i++)
        for (size_t j = 0; j < q; j++) {
            double s = 0;
            for (size_t r = 0; r < n; r++)
                if (r != skip) s += (x[r * p + i] - mx[i]) * (y[r * q + j] - my[j]);
            fro += s * s;
        }
    return fro;
}
static double ref_cka(const double *x, size_t p, const double *y, size_t q, size_t n, size_t skip) {
    return ref_hsic(x, p, y, q, n, skip) / sqrt(ref_hsic(x, p, x, p, n, skip) * ref_hsic(y, q, y, q, n, skip));
}

static tl_matrix mat(const double *data, uint64_t rows, uint64_t cols) {
    tl_matrix m = {data, TL_DTYPE_F64, rows, cols, 0, -1};
    return m;
}

int main(void) {
    enum { N = 37, P = 5, Q = 11, TOP = 3 };
    static double x[N * P], y[N * Q];
    for (size_t i = 0; i < N * P; i++) x[i] = normal();
    for (size_t r = 0; r < N; r++)
        for (size_t j = 0; j < Q; j++) y[r * Q + j] = x[r * P + j % P] * (1.0 + (double)j) + 2.0 * normal() + 3.0;
    for (size_t j = 0; j < Q; j++) y[17 * Q + j] *= 8.0; /* an outlying sample */
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_matrix mx = mat(x, N, P), my = mat(y, N, Q);
    const double want = ref_cka(x, P, y, Q, N, N);

    tl_cka_stats_options d = tl_cka_stats_options_default();
    CHECK(d.size == sizeof d && d.estimator == TL_CKA_BIASED && d.resamples == 1000 && d.level == 0.95);
    CHECK(d.blocks == 0 && d.permutations == 0 && d.seed == 0 && d.interval == TL_CKA_INTERVAL_JACKKNIFE);

    /* Everything at once, with a bootstrap interval. */
    tl_cka_stats_options o = d;
    o.interval = TL_CKA_INTERVAL_PERCENTILE;
    o.resamples = 300;
    o.permutations = 49;
    o.seed = 5;
    tl_cka_stats_report rep;
    uint64_t top[TOP];
    double delta[TOP];
    rep.size = sizeof rep;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &o, &rep, top, delta, TOP));
    CHECK(rep.size == sizeof rep);
    CHECK_CLOSE(rep.cka, want, 1e-9);
    CHECK(rep.lower < rep.cka && rep.cka < rep.upper && rep.std_error > 0);
    CHECK(rep.blocks == N && rep.block_size == 1 && rep.degenerate_resamples == 0);
    CHECK(rep.p_value == 1.0 / 50.0 && rep.null_mean < rep.cka && rep.null_std > 0);
    CHECK(rep.top_written == TOP && top[0] == 17);
    for (int k = 0; k < TOP; k++) CHECK_CLOSE(rep.cka + delta[k], ref_cka(x, P, y, Q, N, (size_t)top[k]), 1e-9);
    CHECK(fabs(delta[0]) >= fabs(delta[1]) && fabs(delta[1]) >= fabs(delta[2]));

    /* Percentile and BCa read the same resamples at different levels. */
    CHECK(isfinite(rep.bias_correction) && isnan(rep.acceleration)); /* a: BCa only */
    CHECK(isnan(rep.jackknife_estimate));
    tl_cka_stats_options bca = o;
    bca.interval = TL_CKA_INTERVAL_BCA;
    tl_cka_stats_report by_bca;
    by_bca.size = sizeof by_bca;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &bca, &by_bca, NULL, NULL, 0));
    CHECK(by_bca.std_error == rep.std_error && by_bca.bias_correction == rep.bias_correction);
    CHECK(isfinite(by_bca.acceleration) && by_bca.lower < by_bca.upper);
    CHECK(by_bca.lower != rep.lower || by_bca.upper != rep.upper);

    /* The same seed gives the same interval; NULL options are the defaults. */
    tl_cka_stats_report again;
    again.size = sizeof again;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &o, &again, NULL, NULL, 0));
    CHECK(again.lower == rep.lower && again.upper == rep.upper && again.top_written == 0);
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, NULL, &again, NULL, NULL, 0));
    CHECK(again.blocks == 0 && isnan(again.p_value) && isfinite(again.jackknife_estimate)); /* the jackknife */

    /* The jackknife interval (the default) against the leave-one-out values of the reference:
     * centred on n cka - (n - 1) mean, half-width z sqrt((n - 1) / n sum (v - mean)^2). It
     * shares those values with the top samples: the same ones as above. */
    {
        double left_out[N], mean = 0, spread = 0;
        for (size_t i = 0; i < N; i++) mean += (left_out[i] = ref_cka(x, P, y, Q, N, i)) / N;
        for (size_t i = 0; i < N; i++) spread += (left_out[i] - mean) * (left_out[i] - mean);
        const double centre = N * want - (N - 1) * mean, se = sqrt((N - 1.0) / N * spread);
        const double z90 = 1.6448536269514722; /* a 0.90 interval */
        tl_cka_stats_options jk = d;
        jk.level = 0.90;
        tl_cka_stats_report by_jk;
        uint64_t jk_top[TOP];
        double jk_delta[TOP];
        by_jk.size = sizeof by_jk;
        CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &jk, &by_jk, jk_top, jk_delta, TOP));
        CHECK_CLOSE(by_jk.cka, want, 1e-9);
        CHECK_CLOSE(by_jk.jackknife_estimate, centre, 1e-9);
        CHECK_CLOSE(by_jk.std_error, se, 1e-9);
        CHECK_CLOSE(by_jk.lower, centre - z90 * se, 1e-9);
        CHECK_CLOSE(by_jk.upper, centre + z90 * se, 1e-9);
        CHECK(isnan(by_jk.bias_correction) && isnan(by_jk.acceleration) && by_jk.blocks == 0);
        CHECK(by_jk.top_written == TOP && jk_top[0] == top[0] && jk_delta[0] == delta[0]);
        /* It draws no resamples: any non-zero count asks for it, the seed changes nothing. */
        tl_cka_stats_options one = jk;
        one.resamples = 1;
        one.seed = 77;
        CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &one, &again, NULL, NULL, 0));
        CHECK(again.lower == by_jk.lower && again.upper == by_jk.upper);
        /* A report from before jackknife_estimate: the bytes after it stay the caller's. */
        struct {
            tl_cka_stats_report head;
            double sentinel;
        } before;
        before.head.size = offsetof(tl_cka_stats_report, jackknife_estimate);
        before.head.jackknife_estimate = -7;
        CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &jk, &before.head, NULL, NULL, 0));
        CHECK(before.head.jackknife_estimate == -7 && before.head.lower == by_jk.lower);
    }

    /* Nothing asked for: CKA alone, the rest NaN. */
    tl_cka_stats_options none = d;
    none.resamples = 0;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &none, &again, NULL, NULL, 0));
    CHECK_CLOSE(again.cka, want, 1e-9);
    CHECK(isnan(again.lower) && isnan(again.upper) && isnan(again.p_value) && again.blocks == 0);

    /* An older caller's smaller report: only its bytes are written. */
    struct {
        tl_cka_stats_report head;
        double sentinel;
    } old;
    old.sentinel = -7;
    old.head.size = offsetof(tl_cka_stats_report, p_value);
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &o, &old.head, NULL, NULL, 0));
    CHECK(old.head.size == offsetof(tl_cka_stats_report, p_value) && old.head.lower == rep.lower);
    old.head.size = offsetof(tl_cka_stats_report, top_written);
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &o, &old.head, NULL, NULL, 0));
    CHECK(old.sentinel == -7 && old.head.p_value == rep.p_value);
    /* An older caller's smaller options: the later fields take their defaults (seed 0). */
    tl_cka_stats_options shorter = o;
    shorter.size = offsetof(tl_cka_stats_options, seed);
    shorter.seed = 99;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &shorter, &again, NULL, NULL, 0));
    tl_cka_stats_options seed0 = o;
    seed0.seed = 0;
    tl_cka_stats_report with_seed0;
    with_seed0.size = sizeof with_seed0;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &seed0, &with_seed0, NULL, NULL, 0));
    CHECK(again.lower == with_seed0.lower && again.upper == with_seed0.upper);
    /* Options from before `interval`: a percentile interval. */
    tl_cka_stats_options no_kind = bca;
    no_kind.size = offsetof(tl_cka_stats_options, interval);
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &no_kind, &again, NULL, NULL, 0));
    CHECK(again.lower == rep.lower && again.upper == rep.upper);
    /* A report from before bias_correction: the bytes after it stay the caller's. */
    old.head.size = offsetof(tl_cka_stats_report, bias_correction);
    old.head.bias_correction = -7;
    CHECK_OK(tl_cka_statistics(ctx, &mx, &my, &o, &old.head, NULL, NULL, 0));
    CHECK(old.head.bias_correction == -7 && old.head.top_written == 0 && old.head.lower == rep.lower);

    /* Errors. */
    CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &o, NULL, NULL, NULL, 0), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_statistics(ctx, NULL, &my, &o, &rep, NULL, NULL, 0), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_statistics(NULL, &mx, &my, &o, &rep, NULL, NULL, 0), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &o, &rep, NULL, delta, TOP), TL_STATUS_NULL_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "top_samples") != NULL);
    CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &o, &rep, top, NULL, TOP), TL_STATUS_NULL_ARGUMENT);
    {
        tl_cka_stats_options bad = o;
        bad.level = 1.5;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "level") != NULL);
        bad = o;
        bad.resamples = 1;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "resamples") != NULL);
        bad = o;
        bad.blocks = N + 1;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "blocks") != NULL);
        bad = o;
        bad.estimator = 7;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "opts->estimator") != NULL);
        bad = o;
        bad.interval = 3; /* none of PERCENTILE, BCA, JACKKNIFE */
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "opts->interval") != NULL);
        bad = o;
        bad.size = offsetof(tl_cka_stats_options, level) + 4;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &bad, &rep, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "opts->size") != NULL);
        tl_cka_stats_report cut;
        cut.size = offsetof(tl_cka_stats_report, cka) + 3;
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &my, &o, &cut, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "out->size") != NULL);
    }
    {
        /* Too few samples to leave one out (debiased needs 4 after), no variance, NaN, shapes. */
        tl_cka_stats_options deb = none;
        deb.estimator = TL_CKA_DEBIASED;
        tl_matrix four_x = mat(x, 4, P), four_y = mat(y, 4, Q);
        CHECK_STATUS(tl_cka_statistics(ctx, &four_x, &four_y, &deb, &rep, top, delta, TOP), TL_STATUS_DEGENERATE_INPUT);
        static double constant[N * 2], with_nan[N * Q];
        for (size_t i = 0; i < N * 2; i++) constant[i] = 1.5;
        tl_matrix flat = mat(constant, N, 2);
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &flat, &o, &rep, NULL, NULL, 0), TL_STATUS_DEGENERATE_INPUT);
        memcpy(with_nan, y, sizeof y);
        with_nan[5 * Q + 2] = NAN;
        tl_matrix nan_y = mat(with_nan, N, Q);
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &nan_y, &o, &rep, NULL, NULL, 0), TL_STATUS_NON_FINITE);
        CHECK(strstr(tl_last_error_message(), "row 5") != NULL);
        tl_matrix short_y = mat(y, N - 1, Q);
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &short_y, &o, &rep, NULL, NULL, 0), TL_STATUS_SHAPE_MISMATCH);
        CHECK_STATUS(tl_cka_statistics(ctx, &mx, &short_y, &none, &rep, top, delta, TOP), TL_STATUS_SHAPE_MISMATCH);
    }
    tl_context_destroy(ctx);
    return 0;
}
