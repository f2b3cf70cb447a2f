/* Evaluators, landscape, criticality and the data tools through the C ABI, with a callback
 * evaluator written here: the host owns its live model (an array the library writes through a
 * wrapped set) and evaluates a quadratic loss whose expectation under noise is known. */
#include "transferlens.h"
#include "check.h"

#define K 2000

static float live_w[K];      /* the host's live model */
static float init_w[K], final_w[K];
static const struct tl_params *live_handle;
static int calls;

/* The host's evaluation: L(w) = ||w||^2 / (2K), read from the host's own memory. */
static int32_t quadratic(void *user, const struct tl_params *params, struct tl_metrics *out) {
    double s = 0;
    (void)user;
    if (params != live_handle) return 3; /* the library must hand back the live set */
    for (int i = 0; i < K; i++) s += (double)live_w[i] * live_w[i];
    out->loss = s / (2.0 * K);
    out->error = out->loss;
    out->accuracy = 1.0 - out->loss;
    calls++;
    return 0;
}

static int32_t failing(void *user, const struct tl_params *params, struct tl_metrics *out) {
    (void)user, (void)params, (void)out;
    tl_set_callback_error("host model exploded");
    return 7;
}

static uint64_t rng_state = 7;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

static struct tl_params *wrap(tl_context *ctx, float *data) {
    uint64_t shape[1] = {K};
    tl_tensor t = {"w.weight", data, TL_DTYPE_F32, shape, 1, -1};
    struct tl_params *p = NULL;
    CHECK_OK(tl_params_wrap(ctx, &t, 1, &p));
    return p;
}

static void callback_analyses(tl_context *ctx) {
    double a = 0;
    for (int i = 0; i < K; i++) {
        init_w[i] = (float)normal();
        final_w[i] = 0.0f;
        a += (double)init_w[i] * init_w[i];
    }
    a /= K;
    struct tl_params *init = wrap(ctx, init_w), *fin = wrap(ctx, final_w), *live = wrap(ctx, live_w);
    live_handle = live;
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_from_callback(quadratic, NULL, &ev));

    /* Interpolation curve: L((1 - l) init) = (1 - l)^2 a / 2, on [-1, 2]. */
    double lambdas[7] = {-1, 0, 0.25, 0.5, 1, 1.5, 2};
    tl_metrics curve[7];
    CHECK_OK(tl_interpolation_curve(ctx, ev, init, fin, live, lambdas, 7, -1, curve));
    for (int i = 0; i < 7; i++) CHECK_CLOSE(curve[i].loss, (1 - lambdas[i]) * (1 - lambdas[i]) * a / 2, 1e-5);
    CHECK(calls == 7);
    tl_barrier_result bar;
    CHECK_OK(tl_barrier(lambdas, curve, 7, TL_METRIC_LOSS, 1e-9, &bar));
    CHECK(bar.value == 0.0 && bar.same_basin == 1); /* convex: never above the chord */
    CHECK_CLOSE(bar.start, a / 2, 1e-5);
    tl_metrics bump[3] = {{0.1, 0.1, 0.9}, {0.5, 0.5, 0.5}, {0.2, 0.2, 0.8}};
    double l3[3] = {0, 0.5, 1};
    CHECK_OK(tl_barrier(l3, bump, 3, TL_METRIC_ACCURACY, 0.01, &bar));
    CHECK_CLOSE(bar.value, 0.35, 1e-12);
    CHECK(bar.peak_lambda == 0.5 && bar.same_basin == 0);
    CHECK_STATUS(tl_barrier(l3, bump, 3, (tl_metric)9, 0.0, &bar), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_barrier(lambdas + 2, curve + 2, 2, TL_METRIC_LOSS, 0.0, &bar), TL_STATUS_INVALID_ARGUMENT);

    /* Criticality of the quadratic: minimise alpha^2 K a / sigma^2 subject to
       (1 - alpha)^2 a / 2 + sigma^2 / 2 <= eps, sigma <= 1. */
    double eps = 0.3, want = INFINITY;
    for (int i = 1; i <= 200000; i++) {
        double al = i / 200000.0, s2 = 2 * eps - (1 - al) * (1 - al) * a;
        if (s2 > 0 && s2 <= 1) want = fmin(want, al * al * K * a / s2);
    }
    tl_criticality_options o = tl_criticality_options_default();
    CHECK(o.size == sizeof o && o.alphas == 11 && o.sigmas == 11 && o.samples == 10);
    o = tl_criticality_options_reference(); /* the values below: one seed, the mean within eps */
    o.metric = TL_METRIC_LOSS;
    o.eps_relative = 0;
    o.eps = eps;
    o.refined = 1;
    o.tolerance = 1e-3;
    o.alpha_steps = 12;
    o.seed = 3;
    tl_criticality c, c2;
    CHECK_OK(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 0, &o, &c));
    CHECK_CLOSE(c.value / want, 1.0, 0.05);
    CHECK(c.expected <= eps && c.numel == K);
    CHECK_OK(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 0, &o, &c2));
    CHECK(c.value == c2.value && c.sigma == c2.sigma); /* same seed, same answer */
    /* The checkpoint path init -> final is the straight path. */
    const struct tl_params *ck[2] = {init, fin};
    CHECK_OK(tl_module_criticality(ctx, ev, NULL, NULL, ck, 2, live, 0, &o, &c2));
    CHECK_CLOSE(c2.value, c.value, 1e-6);
    /* Infeasible: +inf, and so is the bound. */
    o.eps = -1;
    tl_network_summary net;
    CHECK_OK(tl_network_criticality(ctx, ev, init, fin, NULL, 0, live, &o, &c2, 1, &net));
    CHECK(isinf(c2.value) && c2.value > 0 && isinf(net.total) && isinf(net.joint_expected));
    double bound = 0;
    CHECK_OK(tl_pac_bayes_bound(&c2, 1, 0.1, 1000, 0.05, &bound));
    CHECK(isinf(bound));
    CHECK_OK(tl_pac_bayes_bound(&c, 1, 0.1, 1000, 0.05, &bound));
    CHECK(isfinite(bound) && bound > 0.1);
    CHECK_STATUS(tl_pac_bayes_bound(&c, 1, 0.1, 1, 0.05, &bound), TL_STATUS_INVALID_ARGUMENT);
    /* Options from an older caller: a struct whose size stops after `metric` gets the defaults. */
    o = tl_criticality_options_default();
    o.size = 0;
    CHECK_STATUS(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 0, &o, &c2), TL_STATUS_INVALID_ARGUMENT);
    o.size = sizeof o;
    o.refined = 2;
    CHECK_STATUS(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 0, &o, &c2), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 5, NULL, &c2), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_module_criticality(ctx, ev, init, fin, NULL, 0, (struct tl_params *)fin, 0, NULL, &c2),
                 TL_STATUS_INVALID_ARGUMENT);

    /* Rewind curve: alpha = 1 is the final model (loss 0), alpha = 0 the initial one. */
    double alphas[2] = {1, 0};
    CHECK_OK(tl_rewind_curve(ctx, ev, init, fin, live, 0, alphas, 2, curve));
    CHECK(curve[0].loss == 0.0);
    CHECK_CLOSE(curve[1].loss, a / 2, 1e-5);

    /* A failing callback aborts with TL_STATUS_CALLBACK and the host's message. */
    tl_evaluator *bad = NULL;
    CHECK_OK(tl_evaluator_from_callback(failing, NULL, &bad));
    CHECK_STATUS(tl_interpolation_curve(ctx, bad, init, fin, live, lambdas, 7, -1, curve), TL_STATUS_CALLBACK);
    CHECK(strstr(tl_last_error_message(), "host model exploded") != NULL);
    CHECK_STATUS(tl_module_criticality(ctx, bad, init, fin, NULL, 0, live, 0, NULL, &c), TL_STATUS_CALLBACK);
    tl_evaluator_destroy(bad);
    /* A failed maker leaves *out NULL, like every maker. */
    bad = (tl_evaluator *)&bad;
    CHECK_STATUS(tl_evaluator_from_callback(NULL, NULL, &bad), TL_STATUS_NULL_ARGUMENT);
    CHECK(bad == NULL);
    tl_evaluator_destroy(ev);
    tl_params_destroy(init);
    tl_params_destroy(fin);
    tl_params_destroy(live);
}

static void builtin_mlp(tl_context *ctx) {
    enum { ROWS = 40, IN = 4 };
    uint64_t sizes[3] = {IN, 6, 3};
    float x[ROWS * IN];
    uint32_t y[ROWS];
    for (int i = 0; i < ROWS; i++) {
        for (int j = 0; j < IN; j++) x[i * IN + j] = (float)normal();
        y[i] = (uint32_t)(x[i * IN] > 0) + (uint32_t)(x[i * IN + 1] > 0.5);
    }
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_mlp(sizes, 3, x, y, ROWS, &ev));
    struct tl_params *init = NULL, *fin = NULL, *live = NULL;
    CHECK_OK(tl_mlp_init(sizes, 3, 1, &init));
    CHECK_OK(tl_mlp_init(sizes, 3, 2, &fin));
    CHECK_OK(tl_params_clone(fin, &live));
    CHECK(tl_params_module_count(fin) == 2);
    tl_metrics m, r[2];
    CHECK_OK(tl_evaluate(ev, fin, &m));
    CHECK(m.loss > 0 && m.error >= 0 && m.error <= 1 && fabs(m.accuracy + m.error - 1) < 1e-12);
    double alphas[2] = {1, 0.5};
    CHECK_OK(tl_rewind_curve(ctx, ev, init, fin, live, 1, alphas, 2, r));
    CHECK(r[0].loss == m.loss && r[0].error == m.error);
    tl_criticality mods[2], again[2];
    tl_network_summary net, net2;
    tl_criticality_options o = tl_criticality_options_reference();
    o.noise_relative = 1;
    o.samples = 3;
    o.seed = 11;
    CHECK_OK(tl_network_criticality(ctx, ev, init, fin, NULL, 0, live, &o, mods, 2, &net));
    CHECK_OK(tl_network_criticality(ctx, ev, init, fin, NULL, 0, live, &o, again, 2, &net2));
    CHECK(net.total == net2.total && mods[0].value == again[0].value && mods[1].value == again[1].value);
    CHECK(net.total == mods[0].value + mods[1].value);
    CHECK(net.eps == 1.01 * net.final_metric);
    CHECK(isinf(net.total) || (net.joint_expected >= 0 && net.joint_expected <= 1));
    CHECK_STATUS(tl_network_criticality(ctx, ev, init, fin, NULL, 0, live, &o, mods, 3, &net), TL_STATUS_SHAPE_MISMATCH);
    uint64_t bad_sizes[2] = {IN, 1};
    tl_evaluator *bad = NULL;
    CHECK_STATUS(tl_evaluator_mlp(bad_sizes, 2, x, y, ROWS, &bad), TL_STATUS_INVALID_ARGUMENT);
    y[0] = 9;
    CHECK_STATUS(tl_evaluator_mlp(sizes, 3, x, y, ROWS, &bad), TL_STATUS_INVALID_ARGUMENT);
    bad = (tl_evaluator *)&bad;
    CHECK_STATUS(tl_evaluator_mlp(sizes, 3, NULL, y, ROWS, &bad), TL_STATUS_NULL_ARGUMENT);
    CHECK(bad == NULL);
    tl_evaluator_destroy(ev);
    tl_params_destroy(init);
    tl_params_destroy(fin);
    tl_params_destroy(live);
}

static void data_tools(void) {
    /* Two 1 x 4 x 4 images, blocks of 2: whole blocks move, the same way in both images. */
    float img[32], orig[32];
    for (int i = 0; i < 32; i++) orig[i] = img[i] = (float)i;
    CHECK_OK(tl_block_shuffle(img, 2, 1, 4, 4, 4, 5));
    CHECK(memcmp(img, orig, sizeof img) == 0); /* b = H: identity */
    CHECK_OK(tl_block_shuffle(img, 2, 1, 4, 4, 2, 5));
    CHECK(memcmp(img, orig, sizeof img) != 0);
    for (int by = 0; by < 2; by++)
        for (int bx = 0; bx < 2; bx++) {
            /* The block's top-left pixel names its source; the rest of the block follows it. */
            float tl = img[by * 8 + bx * 2];
            int sy = (int)tl / 4, sx = (int)tl % 4;
            CHECK(sy % 2 == 0 && sx % 2 == 0);
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < 2; c++) {
                    CHECK(img[(by * 2 + r) * 4 + bx * 2 + c] == orig[(sy + r) * 4 + sx + c]);
                    CHECK(img[16 + (by * 2 + r) * 4 + bx * 2 + c] == orig[16 + (sy + r) * 4 + sx + c]);
                }
        }
    CHECK_STATUS(tl_block_shuffle(img, 2, 1, 4, 4, 3, 5), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_block_shuffle(NULL, 2, 1, 4, 4, 2, 5), TL_STATUS_NULL_ARGUMENT);

    uint32_t truth[6] = {0, 1, 2, 3, 4, 5}, a[6] = {0, 1, 9, 9, 7, 5}, b[6] = {0, 8, 2, 9, 6, 5};
    uint64_t counts[5];
    uint8_t cat[6];
    CHECK_OK(tl_prediction_agreement(a, b, truth, 6, counts, cat));
    CHECK(counts[0] == 2 && counts[1] == 1 && counts[2] == 1 && counts[3] == 1 && counts[4] == 1);
    CHECK(cat[0] == 0 && cat[1] == 1 && cat[2] == 2 && cat[3] == 3 && cat[4] == 4 && cat[5] == 0);
    CHECK_OK(tl_prediction_agreement(a, b, truth, 6, counts, NULL));
    CHECK_STATUS(tl_prediction_agreement(a, NULL, truth, 6, counts, NULL), TL_STATUS_NULL_ARGUMENT);
}

int main(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    callback_analyses(ctx);
    builtin_mlp(ctx);
    data_tools();
    tl_context_destroy(ctx);
    return 0;
}
