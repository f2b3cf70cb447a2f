/* Sizes a host chooses that no machine holds: each is a status with the size in the message,
 * never an abort; wide layers in an accumulator work as they do in tl_cka_linear. */
#include "transferlens.h"
#include "check.h"

#define WIDE 131072 /* its Gram alone would be 128 GiB of moments */

int main(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));

    /* The built-in MLP with 2^20 x 2^20 weights: 4 TiB. */
    uint64_t huge_mlp[2] = {1u << 20, 1u << 20};
    tl_params *set = (tl_params *)&set; /* not NULL, to see it reset */
    CHECK_STATUS(tl_mlp_init(huge_mlp, 2, 1, &set), TL_STATUS_OUT_OF_MEMORY);
    CHECK(set == NULL);
    CHECK(strstr(tl_last_error_message(), "fc1.weight") != NULL);
    CHECK(strstr(tl_last_error_message(), "TiB") != NULL);

    /* An accumulator told its layers are 2^20 wide: 24 TiB of moments, refused with the size. */
    tl_cka_accumulator *acc = NULL;
    CHECK_OK(tl_cka_accumulator_create(ctx, 1, 1, TL_CKA_BIASED, &acc));
    uint64_t huge_widths[2] = {1u << 20, 1u << 20};
    CHECK_STATUS(tl_cka_accumulator_set_widths(acc, huge_widths, 2), TL_STATUS_OUT_OF_MEMORY);
    CHECK(strstr(tl_last_error_message(), "TiB") != NULL);
    tl_cka_accumulator_destroy(acc);

    /* Layer counts whose pairs cannot be counted. */
    acc = (tl_cka_accumulator *)&acc;
    CHECK_STATUS(tl_cka_accumulator_create(ctx, SIZE_MAX, 2, TL_CKA_BIASED, &acc), TL_STATUS_INVALID_ARGUMENT);
    CHECK(acc == NULL);
    CHECK(strstr(tl_last_error_message(), "overflows") != NULL);

    /* No images: nothing to shuffle, however many blocks an image would have. */
    CHECK_OK(tl_block_shuffle(NULL, 0, 1, 65536, 65536, 1, 7));

    /* A 131072-wide layer through the accumulator, in two batches, equals tl_cka_linear. */
    enum { N = 8, Q = 3 };
    float *x = malloc((size_t)N * WIDE * sizeof *x);
    double y[N * Q];
    CHECK(x != NULL);
    uint64_t state = 11;
    for (size_t i = 0; i < (size_t)N * WIDE; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)(state >> 40) / 16777216.0f - 0.5f;
    }
    for (size_t r = 0; r < N; r++)
        for (size_t j = 0; j < Q; j++) y[r * Q + j] = x[r * WIDE + j] + 0.1 * (double)(r * j % 5) + (double)x[r * WIDE + 1000 + j];
    for (int est = 0; est < 2; est++) {
        tl_matrix whole_x = {x, TL_DTYPE_F32, N, WIDE, 0, -1}, whole_y = {y, TL_DTYPE_F64, N, Q, 0, -1};
        double want = -2, got = -2;
        CHECK_OK(tl_cka_linear(ctx, &whole_x, &whole_y, (tl_cka_estimator)est, &want));
        CHECK_OK(tl_cka_accumulator_create(ctx, 1, 1, (tl_cka_estimator)est, &acc));
        tl_cka_accumulator *other = NULL;
        CHECK_OK(tl_cka_accumulator_create(ctx, 1, 1, (tl_cka_estimator)est, &other));
        tl_matrix first_x = {x, TL_DTYPE_F32, N / 2, WIDE, 0, -1}, first_y = {y, TL_DTYPE_F64, N / 2, Q, 0, -1};
        tl_matrix second_x = {x + (N / 2) * WIDE, TL_DTYPE_F32, N / 2, WIDE, 0, -1};
        tl_matrix second_y = {y + (N / 2) * Q, TL_DTYPE_F64, N / 2, Q, 0, -1};
        CHECK_OK(tl_cka_accumulator_update(acc, &first_x, &first_y));
        CHECK_OK(tl_cka_accumulator_update(other, &second_x, &second_y));
        CHECK_OK(tl_cka_accumulator_merge(acc, other));
        CHECK_OK(tl_cka_accumulator_result(acc, &got));
        CHECK_CLOSE(got, want, 1e-6);
        /* Its state is the samples, not additive moments: there is nothing to export. */
        size_t shift_len = 1, moments_len = 1;
        CHECK_OK(tl_cka_accumulator_state_size(acc, &shift_len, &moments_len));
        CHECK(shift_len == 0 && moments_len == 0);
        double none[1];
        CHECK_STATUS(tl_cka_accumulator_export(acc, none, 1, none, 1), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "samples") != NULL);
        tl_cka_accumulator_destroy(other);
        tl_cka_accumulator_destroy(acc);
    }
    free(x);
    tl_context_destroy(ctx);
    printf("limits: ok\n");
    return 0;
}
