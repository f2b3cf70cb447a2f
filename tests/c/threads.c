/* Several threads, each with its own context: the same answers as one thread, and error
 * messages that stay with the thread that failed. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include "transferlens.h"
#include "check.h"

enum { N = 200, P = 9, Q = 5, THREADS = 4, ROUNDS = 20 };
static double x[N * P], y[N * Q], expected;

static void *worker(void *arg) {
    long id = (long)arg;
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_matrix mx = {x, TL_DTYPE_F64, N, P, 0, -1}, my = {y, TL_DTYPE_F64, N, Q, 0, -1};
    for (int r = 0; r < ROUNDS; r++) {
        double got = 0;
        CHECK_OK(tl_cka_linear(ctx, &mx, &my, TL_CKA_DEBIASED, &got));
        CHECK(got == expected);
        if (id % 2 == 1) {
            /* Odd threads fail on purpose; even threads must never see their messages. */
            tl_matrix short_y = my;
            short_y.rows = 3;
            CHECK_STATUS(tl_cka_linear(ctx, &mx, &short_y, TL_CKA_BIASED, &got), TL_STATUS_SHAPE_MISMATCH);
        } else {
            CHECK(strcmp(tl_last_error_message(), "") == 0);
        }
    }
    tl_context_destroy(ctx);
    return NULL;
}

int main(void) {
    for (size_t i = 0; i < N * P; i++) x[i] = sin(0.37 * (double)i) + 0.1 * cos(1.7 * (double)(i * i % 101));
    for (size_t r = 0; r < N; r++)
        for (size_t j = 0; j < Q; j++) y[r * Q + j] = x[r * P + j] * x[r * P + j + 1] + 0.3 * sin((double)(r + 13 * j));
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_matrix mx = {x, TL_DTYPE_F64, N, P, 0, -1}, my = {y, TL_DTYPE_F64, N, Q, 0, -1};
    CHECK_OK(tl_cka_linear(ctx, &mx, &my, TL_CKA_DEBIASED, &expected));
    tl_context_destroy(ctx);

    pthread_t threads[THREADS];
    for (long t = 0; t < THREADS; t++) CHECK(pthread_create(&threads[t], NULL, worker, (void *)t) == 0);
    for (int t = 0; t < THREADS; t++) CHECK(pthread_join(threads[t], NULL) == 0);
    printf("threads: ok (%d threads x %d rounds, CKA = %.15f)\n", THREADS, ROUNDS, expected);
    return 0;
}
