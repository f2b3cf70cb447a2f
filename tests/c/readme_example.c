/* The C example of the README (tests/readme.rs checks that the README quotes this file). */
#include <stdio.h>
#include "transferlens.h"

int main(void) {
    /* Activations of 6 samples: 3 features in layer A, 2 in layer B (row-major). */
    const float a[6 * 3] = {0.1f, 1.2f, -0.3f, 0.8f, -0.5f, 0.9f, -1.1f, 0.4f, 0.2f,
                            0.6f, 0.3f, -0.7f, -0.2f, -0.9f, 1.4f, 0.5f, 0.7f, 0.1f};
    const float b[6 * 2] = {0.3f, 1.0f, 0.9f, -0.2f, -1.0f, 0.6f, 0.4f, 0.5f, -0.1f, -1.2f, 0.6f, 0.8f};
    tl_matrix x = {a, TL_DTYPE_F32, 6, 3, 0, -1}; /* data, dtype, rows, cols, row_stride, device */
    tl_matrix y = {b, TL_DTYPE_F32, 6, 2, 0, -1};

    tl_context *ctx = NULL;
    if (tl_context_create(TL_BACKEND_AUTO, 0, &ctx) != TL_STATUS_OK) {
        fprintf(stderr, "transferlens: %s\n", tl_last_error_message());
        return 1;
    }
    double cka = 0.0;
    tl_status status = tl_cka_linear(ctx, &x, &y, TL_CKA_DEBIASED, &cka);
    if (status != TL_STATUS_OK) {
        fprintf(stderr, "%s: %s\n", tl_status_name(status), tl_last_error_message());
        tl_context_destroy(ctx);
        return 1;
    }
    printf("debiased linear CKA = %.4f\n", cka);
    tl_context_destroy(ctx);
    return 0;
}
