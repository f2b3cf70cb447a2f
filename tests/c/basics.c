/* The FIXED basics of the C ABI: versions, status names, contexts, errors. */
#include "transferlens.h"
#include "check.h"

int main(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", TL_VERSION_MAJOR, TL_VERSION_MINOR, TL_VERSION_PATCH);
    CHECK(strcmp(tl_version(), expected) == 0);
    CHECK(tl_abi_version() == TL_ABI_VERSION);

    CHECK(strcmp(tl_status_name(TL_STATUS_OK), "TL_STATUS_OK") == 0);
    CHECK(strcmp(tl_status_name(TL_STATUS_DEGENERATE_INPUT), "TL_STATUS_DEGENERATE_INPUT") == 0);
    CHECK(strcmp(tl_status_name(TL_STATUS_PANIC), "TL_STATUS_PANIC") == 0);
    CHECK(strcmp(tl_status_name((tl_status)99), "TL_STATUS_UNKNOWN") == 0);

    /* Nothing failed yet on this thread. */
    CHECK(strcmp(tl_last_error_message(), "") == 0);

    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    CHECK(ctx != NULL);
    tl_backend backend = TL_BACKEND_AUTO;
    CHECK_OK(tl_context_backend(ctx, &backend));
    CHECK(backend == TL_BACKEND_CPU);
    tl_context_destroy(ctx);

    /* AUTO resolves to a concrete backend. */
    CHECK_OK(tl_context_create(TL_BACKEND_AUTO, 0, &ctx));
    CHECK_OK(tl_context_backend(ctx, &backend));
    CHECK(backend == TL_BACKEND_CPU || backend == TL_BACKEND_CUDA);
    tl_context_destroy(ctx);

    /* Error paths: each gives its status and a message. */
    CHECK_STATUS(tl_context_create(TL_BACKEND_CPU, 0, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_context_create((tl_backend)7, 0, &ctx), TL_STATUS_INVALID_ARGUMENT);
    CHECK(ctx == NULL);
    CHECK_STATUS(tl_context_backend(NULL, &backend), TL_STATUS_NULL_ARGUMENT);
    if (getenv("TL_TEST_HAS_CUDA") == NULL) {
        tl_status s = tl_context_create(TL_BACKEND_CUDA, 0, &ctx);
        if (s == TL_STATUS_OK) {
            tl_context_destroy(ctx);
        } else {
            CHECK_STATUS(s, TL_STATUS_DEVICE_UNAVAILABLE);
            CHECK(strstr(tl_last_error_message(), "CUDA") != NULL);
        }
    }
    CHECK_STATUS(tl_context_create(TL_BACKEND_CUDA, -1, &ctx), TL_STATUS_INVALID_ARGUMENT);

    tl_context_destroy(NULL); /* a no-op */
    printf("basics: ok\n");
    return 0;
}
