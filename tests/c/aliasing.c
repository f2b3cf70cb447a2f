/* The analyses write every point into `live` while they read their inputs, so `live` must be a
 * set of its own: each analysis refuses a `live` that is one of its inputs (the same handle) or
 * that shares memory with one (a second set wrapped over the same array), with
 * TL_STATUS_INVALID_ARGUMENT and a message that names `live` and the input. */
#include "transferlens.h"
#include "check.h"

#define K 16

static float w0[K], w1[K], w2[K], live_w[K];

static int32_t zero_loss(void *user, const struct tl_params *params, struct tl_metrics *out) {
    (void)user, (void)params;
    out->loss = 0;
    out->error = 0;
    out->accuracy = 1;
    return 0;
}

static struct tl_params *wrap(tl_context *ctx, float *data) {
    uint64_t shape[1] = {K};
    tl_tensor t = {"w.weight", data, TL_DTYPE_F32, shape, 1, -1};
    struct tl_params *p = NULL;
    CHECK_OK(tl_params_wrap(ctx, &t, 1, &p));
    return p;
}

/* The call failed with TL_STATUS_INVALID_ARGUMENT, and its message names `live` and `input`:
 * "live is <input>: ..." for the same handle, "live shares memory with <input> (...)" for a set
 * over the same memory. */
#define CHECK_REFUSED(call, input)                                                              \
    do {                                                                                        \
        CHECK_STATUS(call, TL_STATUS_INVALID_ARGUMENT);                                         \
        const char *msg_ = tl_last_error_message();                                             \
        if (strncmp(msg_, "live is " input ":", strlen("live is " input ":")) != 0 &&           \
            strncmp(msg_, "live shares memory with " input " (",                                \
                    strlen("live shares memory with " input " (")) != 0) {                      \
            fprintf(stderr, "%s:%d: the message should name live and %s: %s\n", __FILE__,     \
                    __LINE__, input, msg_);                                                     \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

int main(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    for (int i = 0; i < K; i++) {
        w0[i] = (float)i;
        w1[i] = (float)(2 * i);
        w2[i] = (float)(3 * i);
    }
    struct tl_params *p0 = wrap(ctx, w0), *p1 = wrap(ctx, w1), *p2 = wrap(ctx, w2);
    struct tl_params *live = wrap(ctx, live_w);
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_from_callback(zero_loss, NULL, &ev));
    tl_criticality_options o = tl_criticality_options_default();
    o.alphas = 2;
    o.sigmas = 2;
    o.samples = 1;
    tl_criticality c[1];
    tl_network_summary net;
    tl_metrics curve[2];
    double grid[2] = {0, 1};

    /* A checkpoint of the path as live: first, middle and last. */
    const struct tl_params *ck[3] = {p0, p1, p2};
    CHECK_REFUSED(tl_module_criticality(ctx, ev, NULL, NULL, ck, 3, p0, 0, &o, c), "checkpoints[0]");
    CHECK_REFUSED(tl_module_criticality(ctx, ev, NULL, NULL, ck, 3, p1, 0, &o, c), "checkpoints[1]");
    CHECK_REFUSED(tl_module_criticality(ctx, ev, NULL, NULL, ck, 3, p2, 0, &o, c), "checkpoints[2]");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, NULL, NULL, ck, 3, p0, &o, c, 1, &net), "checkpoints[0]");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, NULL, NULL, ck, 3, p1, &o, c, 1, &net), "checkpoints[1]");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, NULL, NULL, ck, 3, p2, &o, c, 1, &net), "checkpoints[2]");

    /* init or final of the straight path as live. */
    CHECK_REFUSED(tl_module_criticality(ctx, ev, p0, p2, NULL, 0, p0, 0, &o, c), "init");
    CHECK_REFUSED(tl_module_criticality(ctx, ev, p0, p2, NULL, 0, p2, 0, &o, c), "final");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, p0, p2, NULL, 0, p0, &o, c, 1, &net), "init");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, p0, p2, NULL, 0, p2, &o, c, 1, &net), "final");

    /* a or b of a curve, init or final of a rewind. */
    CHECK_REFUSED(tl_interpolation_curve(ctx, ev, p0, p1, p0, grid, 2, -1, curve), "a");
    CHECK_REFUSED(tl_interpolation_curve(ctx, ev, p0, p1, p1, grid, 2, -1, curve), "b");
    CHECK_REFUSED(tl_rewind_curve(ctx, ev, p0, p1, p0, 0, grid, 2, curve), "init");
    CHECK_REFUSED(tl_rewind_curve(ctx, ev, p0, p1, p1, 0, grid, 2, curve), "final");

    /* A live set wrapped over the same memory as an input: a different handle, the same weights. */
    struct tl_params *over_w1 = wrap(ctx, w1);
    CHECK_REFUSED(tl_module_criticality(ctx, ev, NULL, NULL, ck, 3, over_w1, 0, &o, c), "checkpoints[1]");
    CHECK(strstr(tl_last_error_message(), "w.weight") != NULL); /* and the tensor */
    CHECK_REFUSED(tl_network_criticality(ctx, ev, NULL, NULL, ck, 3, over_w1, &o, c, 1, &net), "checkpoints[1]");
    CHECK_REFUSED(tl_module_criticality(ctx, ev, p1, p2, NULL, 0, over_w1, 0, &o, c), "init");
    CHECK_REFUSED(tl_network_criticality(ctx, ev, p0, p1, NULL, 0, over_w1, &o, c, 1, &net), "final");
    CHECK_REFUSED(tl_interpolation_curve(ctx, ev, p0, p1, over_w1, grid, 2, -1, curve), "b");
    CHECK_REFUSED(tl_rewind_curve(ctx, ev, p1, p2, over_w1, 0, grid, 2, curve), "init");

    /* A NULL live is a NULL argument, whatever the inputs. */
    CHECK_STATUS(tl_interpolation_curve(ctx, ev, NULL, p1, NULL, grid, 2, -1, curve), TL_STATUS_NULL_ARGUMENT);

    /* A set of its own is accepted, and the refusals above left the inputs untouched. */
    CHECK_OK(tl_module_criticality(ctx, ev, NULL, NULL, ck, 3, live, 0, &o, c));
    CHECK_OK(tl_interpolation_curve(ctx, ev, p0, p1, live, grid, 2, -1, curve));
    CHECK_OK(tl_rewind_curve(ctx, ev, p0, p1, live, 0, grid, 2, curve));
    for (int i = 0; i < K; i++) CHECK(w0[i] == (float)i && w1[i] == (float)(2 * i) && w2[i] == (float)(3 * i));

    tl_params_destroy(over_w1);
    tl_evaluator_destroy(ev);
    tl_params_destroy(live);
    tl_params_destroy(p0);
    tl_params_destroy(p1);
    tl_params_destroy(p2);
    tl_context_destroy(ctx);
    return 0;
}
