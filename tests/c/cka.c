/* Linear CKA through the C ABI: values against a plain f64 reference written here, the layer
 * matrix, the streaming accumulator (splits, merge, all-reduce protocol) and every error path. */
#include "transferlens.h"
#include "check.h"

/* splitmix64: reproducible data. */
static uint64_t rng_state = 42;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

/* Plain reference: feature-space biased or debiased HSIC on centered copies. */
static double ref_hsic(const double *x, size_t p, const double *y, size_t q, size_t n, int debiased) {
    double *xc = malloc(n * p * sizeof *xc), *yc = malloc(n * q * sizeof *yc);
    for (size_t c = 0; c < p; c++) {
        double m = 0;
        for (size_t r = 0; r < n; r++) m += x[r * p + c];
        m /= (double)n;
        for (size_t r = 0; r < n; r++) xc[r * p + c] = x[r * p + c] - m;
    }
    for (size_t c = 0; c < q; c++) {
        double m = 0;
        for (size_t r = 0; r < n; r++) m += y[r * q + c];
        m /= (double)n;
        for (size_t r = 0; r < n; r++) yc[r * q + c] = y[r * q + c] - m;
    }
    double fro = 0;
    for (size_t i = 0; i < p; i++)
        for (size_t j = 0; j < q; j++) {
            double s = 0;
            for (size_t r = 0; r < n; r++) s += xc[r * p + i] * yc[r * q + j];
            fro += s * s;
        }
    double result = fro;
    if (debiased) {
        double dot = 0, nx = 0, ny = 0, dn = (double)n;
        for (size_t r = 0; r < n; r++) {
            double a = 0, b = 0;
            for (size_t i = 0; i < p; i++) a += xc[r * p + i] * xc[r * p + i];
            for (size_t j = 0; j < q; j++) b += yc[r * q + j] * yc[r * q + j];
            dot += a * b;
            nx += a;
            ny += b;
        }
        result = fro - dn / (dn - 2) * dot + nx * ny / ((dn - 1) * (dn - 2));
    }
    free(xc);
    free(yc);
    return result;
}
static double ref_cka(const double *x, size_t p, const double *y, size_t q, size_t n, int debiased) {
    return ref_hsic(x, p, y, q, n, debiased) /
           sqrt(ref_hsic(x, p, x, p, n, debiased) * ref_hsic(y, q, y, q, n, debiased));
}

static tl_matrix mat(const double *data, uint64_t rows, uint64_t cols) {
    tl_matrix m = {data, TL_DTYPE_F64, rows, cols, 0, -1};
    return m;
}

int main(void) {
    enum { N = 53, P = 7, Q = 4, P2 = 3 };
    static double x[N * P], y[N * Q], x2[N * P2];
    for (size_t i = 0; i < N * P; i++) x[i] = normal();
    for (size_t r = 0; r < N; r++) {
        for (size_t j = 0; j < Q; j++) y[r * Q + j] = x[r * P + j] * (1.0 + (double)j) + 0.8 * normal();
        for (size_t j = 0; j < P2; j++) x2[r * P2 + j] = x[r * P + j + 2] - 2.0 * x[r * P] + normal();
    }
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));

    /* Single pairs, both estimators, against the reference. */
    tl_matrix mx = mat(x, N, P), my = mat(y, N, Q), mx2 = mat(x2, N, P2);
    for (int est = 0; est < 2; est++) {
        double got = -1;
        CHECK_OK(tl_cka_linear(ctx, &mx, &my, (tl_cka_estimator)est, &got));
        CHECK_CLOSE(got, ref_cka(x, P, y, Q, N, est), 1e-10);
        CHECK_OK(tl_cka_linear(ctx, &mx, &mx, (tl_cka_estimator)est, &got));
        CHECK_CLOSE(got, 1.0, 1e-12);
    }

    /* A strided view: the first 5 columns of x. */
    {
        tl_matrix strided = {x, TL_DTYPE_F64, N, 5, P, -1};
        static double compact[N * 5];
        for (size_t r = 0; r < N; r++)
            for (size_t c = 0; c < 5; c++) compact[r * 5 + c] = x[r * P + c];
        double got = 0;
        CHECK_OK(tl_cka_linear(ctx, &strided, &my, TL_CKA_BIASED, &got));
        CHECK_CLOSE(got, ref_cka(compact, 5, y, Q, N, 0), 1e-10);
    }

    /* f32 input. */
    {
        static float xf[N * P], yf[N * Q];
        static double xr[N * P], yr[N * Q];
        for (size_t i = 0; i < N * P; i++) xr[i] = (double)(xf[i] = (float)x[i]);
        for (size_t i = 0; i < N * Q; i++) yr[i] = (double)(yf[i] = (float)y[i]);
        tl_matrix a = {xf, TL_DTYPE_F32, N, P, 0, -1}, b = {yf, TL_DTYPE_F32, N, Q, 0, -1};
        double got = 0;
        CHECK_OK(tl_cka_linear(ctx, &a, &b, TL_CKA_DEBIASED, &got));
        CHECK_CLOSE(got, ref_cka(xr, P, yr, Q, N, 1), 2e-5);
    }

    /* The layer matrix: rows are xs, columns ys. */
    tl_matrix xs[2] = {mx, mx2}, ys[2] = {my, mx};
    const double *xd[2] = {x, x2}, *yd[2] = {y, x};
    size_t xp[2] = {P, P2}, yq[2] = {Q, P};
    double matrix[4];
    CHECK_OK(tl_cka_matrix(ctx, xs, 2, ys, 2, TL_CKA_DEBIASED, matrix));
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) CHECK_CLOSE(matrix[i * 2 + j], ref_cka(xd[i], xp[i], yd[j], yq[j], N, 1), 1e-10);

    /* The accumulator: uneven batches (one row included) equal the full-data matrix. */
    for (int est = 0; est < 2; est++) {
        double full[4], streamed[4];
        CHECK_OK(tl_cka_matrix(ctx, xs, 2, ys, 2, (tl_cka_estimator)est, full));
        tl_cka_accumulator *acc = NULL;
        CHECK_OK(tl_cka_accumulator_create(ctx, 2, 2, (tl_cka_estimator)est, &acc));
        size_t splits[] = {0, 1, 2, 19, 20, 44, N};
        for (size_t s = 0; s + 1 < sizeof splits / sizeof *splits; s++) {
            size_t r0 = splits[s], rows = splits[s + 1] - splits[s];
            tl_matrix bx[2] = {mat(x + r0 * P, rows, P), mat(x2 + r0 * P2, rows, P2)};
            tl_matrix by[2] = {mat(y + r0 * Q, rows, Q), mat(x + r0 * P, rows, P)};
            CHECK_OK(tl_cka_accumulator_update(acc, bx, by));
        }
        CHECK_OK(tl_cka_accumulator_result(acc, streamed));
        for (int k = 0; k < 4; k++) CHECK_CLOSE(streamed[k], full[k], 1e-10);

        /* All-reduce protocol between two "processes" holding halves of the data. */
        tl_cka_accumulator *a = NULL, *b = NULL, *joined = NULL;
        CHECK_OK(tl_cka_accumulator_create(ctx, 2, 2, (tl_cka_estimator)est, &a));
        CHECK_OK(tl_cka_accumulator_create(ctx, 2, 2, (tl_cka_estimator)est, &b));
        {
            tl_matrix ax[2] = {mat(x, 30, P), mat(x2, 30, P2)}, ay[2] = {mat(y, 30, Q), mat(x, 30, P)};
            tl_matrix bx[2] = {mat(x + 30 * P, N - 30, P), mat(x2 + 30 * P2, N - 30, P2)};
            tl_matrix by[2] = {mat(y + 30 * Q, N - 30, Q), mat(x + 30 * P, N - 30, P)};
            CHECK_OK(tl_cka_accumulator_update(a, ax, ay));
            CHECK_OK(tl_cka_accumulator_update(b, bx, by));
        }
        size_t ls = 0, lm = 0;
        CHECK_OK(tl_cka_accumulator_state_size(a, &ls, &lm));
        CHECK(ls == P + P2 + Q + P && lm > ls);
        double *shift = malloc(ls * sizeof *shift), *ma = malloc(lm * sizeof *ma), *mb = malloc(lm * sizeof *mb);
        CHECK_OK(tl_cka_accumulator_export(a, shift, ls, ma, lm));    /* "rank 0" broadcasts its shift */
        CHECK_OK(tl_cka_accumulator_rebase(b, shift, ls));
        CHECK_OK(tl_cka_accumulator_export(b, shift, ls, mb, lm));
        for (size_t k = 0; k < lm; k++) ma[k] += mb[k];               /* the all-reduce */
        CHECK(ma[0] == (double)N);                                   /* the sample count */
        CHECK_OK(tl_cka_accumulator_create(ctx, 2, 2, (tl_cka_estimator)est, &joined));
        uint64_t widths[4] = {P, P2, Q, P};
        CHECK_OK(tl_cka_accumulator_set_widths(joined, widths, 4));
        CHECK_OK(tl_cka_accumulator_import(joined, shift, ls, ma, lm));
        CHECK_OK(tl_cka_accumulator_result(joined, streamed));
        for (int k = 0; k < 4; k++) CHECK_CLOSE(streamed[k], full[k], 1e-10);
        /* merge gives the same. */
        CHECK_OK(tl_cka_accumulator_merge(a, b));
        CHECK_OK(tl_cka_accumulator_result(a, streamed));
        for (int k = 0; k < 4; k++) CHECK_CLOSE(streamed[k], full[k], 1e-10);
        /* Error paths of the state functions. */
        CHECK_STATUS(tl_cka_accumulator_export(a, shift, ls - 1, ma, lm), TL_STATUS_SHAPE_MISMATCH);
        CHECK_STATUS(tl_cka_accumulator_import(a, NULL, ls, ma, lm), TL_STATUS_NULL_ARGUMENT);
        ma[1] = NAN;
        CHECK_STATUS(tl_cka_accumulator_import(a, shift, ls, ma, lm), TL_STATUS_NON_FINITE);
        CHECK_STATUS(tl_cka_accumulator_set_widths(a, widths, 4), TL_STATUS_INVALID_ARGUMENT);
        free(shift);
        free(ma);
        free(mb);
        tl_cka_accumulator_destroy(a);
        tl_cka_accumulator_destroy(b);
        tl_cka_accumulator_destroy(joined);

        /* A batch with other feature counts after the first. */
        tl_matrix wrong[2] = {mat(x, 5, P2), mat(x2, 5, P2)};
        tl_matrix fine[2] = {mat(y, 5, Q), mat(x, 5, P)};
        CHECK_STATUS(tl_cka_accumulator_update(acc, wrong, fine), TL_STATUS_SHAPE_MISMATCH);
        CHECK(strstr(tl_last_error_message(), "x[0]") != NULL);
        tl_cka_accumulator_destroy(acc);
    }
    tl_cka_accumulator_destroy(NULL);

    /* Error paths of tl_cka_linear and tl_cka_matrix: each status with a message. */
    double out = 123.0;
    CHECK_STATUS(tl_cka_linear(NULL, &mx, &my, TL_CKA_BIASED, &out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_linear(ctx, NULL, &my, TL_CKA_BIASED, &out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_linear(ctx, &mx, &my, TL_CKA_BIASED, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_linear(ctx, &mx, &my, (tl_cka_estimator)5, &out), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "estimator") != NULL);
    {
        tl_matrix bad = mx;
        bad.dtype = (tl_dtype)9;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_UNSUPPORTED_DTYPE);
        CHECK(strstr(tl_last_error_message(), "x.dtype") != NULL);
        bad = mx;
        bad.row_stride = P - 1;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "row_stride") != NULL);
        bad = mx;
        bad.rows = 0;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_SHAPE_MISMATCH);
        tl_matrix none_x = mat(x, 0, P), none_y = mat(y, 0, Q);
        CHECK_STATUS(tl_cka_linear(ctx, &none_x, &none_y, TL_CKA_BIASED, &out), TL_STATUS_DEGENERATE_INPUT);
        bad = mx;
        bad.cols = 0;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_INVALID_ARGUMENT);
        bad = mx;
        bad.data = NULL;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_NULL_ARGUMENT);
        bad = mx;
        bad.data = (const char *)x + 1;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_INVALID_ARGUMENT);
        bad = mx;
        bad.device = 0;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "CUDA") != NULL);
        bad = mx;
        bad.device = -2;
        CHECK_STATUS(tl_cka_linear(ctx, &bad, &my, TL_CKA_BIASED, &out), TL_STATUS_INVALID_ARGUMENT);
    }
    {
        /* Too few samples for the debiased estimator; a constant layer; NaN. */
        tl_matrix three_x = mat(x, 3, P), three_y = mat(y, 3, Q);
        CHECK_STATUS(tl_cka_linear(ctx, &three_x, &three_y, TL_CKA_DEBIASED, &out), TL_STATUS_DEGENERATE_INPUT);
        static double constant[N * 2];
        for (size_t i = 0; i < N * 2; i++) constant[i] = 0.1;
        tl_matrix flat = mat(constant, N, 2);
        CHECK_STATUS(tl_cka_linear(ctx, &mx, &flat, TL_CKA_BIASED, &out), TL_STATUS_DEGENERATE_INPUT);
        CHECK(strstr(tl_last_error_message(), "variance") != NULL);
        static double with_nan[N * Q];
        memcpy(with_nan, y, sizeof y);
        with_nan[7 * Q + 1] = NAN;
        tl_matrix nan_y = mat(with_nan, N, Q);
        CHECK_STATUS(tl_cka_linear(ctx, &mx, &nan_y, TL_CKA_BIASED, &out), TL_STATUS_NON_FINITE);
        CHECK(strstr(tl_last_error_message(), "row 7") != NULL);
        tl_matrix short_y = mat(y, N - 1, Q);
        CHECK_STATUS(tl_cka_linear(ctx, &mx, &short_y, TL_CKA_BIASED, &out), TL_STATUS_SHAPE_MISMATCH);
    }
    CHECK(out == 123.0); /* failures leave the output alone */
    CHECK_STATUS(tl_cka_matrix(ctx, xs, 0, ys, 2, TL_CKA_BIASED, matrix), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_cka_matrix(ctx, NULL, 2, ys, 2, TL_CKA_BIASED, matrix), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cka_matrix(ctx, xs, 2, ys, 2, TL_CKA_BIASED, NULL), TL_STATUS_NULL_ARGUMENT);
    {
        tl_cka_accumulator *acc = NULL;
        CHECK_STATUS(tl_cka_accumulator_create(ctx, 0, 1, TL_CKA_BIASED, &acc), TL_STATUS_INVALID_ARGUMENT);
        CHECK(acc == NULL);
        CHECK_STATUS(tl_cka_accumulator_create(ctx, 1, 1, (tl_cka_estimator)3, &acc), TL_STATUS_INVALID_ARGUMENT);
        CHECK_OK(tl_cka_accumulator_create(ctx, 1, 1, TL_CKA_BIASED, &acc));
        CHECK_STATUS(tl_cka_accumulator_result(acc, &out), TL_STATUS_DEGENERATE_INPUT);
        size_t ls = 7, lm = 7;
        CHECK_OK(tl_cka_accumulator_state_size(acc, &ls, &lm));
        CHECK(ls == 0 && lm == 0);
        CHECK_STATUS(tl_cka_accumulator_update(NULL, &mx, &my), TL_STATUS_NULL_ARGUMENT);
        CHECK_STATUS(tl_cka_accumulator_update(acc, &mx, NULL), TL_STATUS_NULL_ARGUMENT);
        tl_cka_accumulator_destroy(acc);
    }

    tl_context_destroy(ctx);
    printf("cka: ok\n");
    return 0;
}
