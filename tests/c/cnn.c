/* The built-in CNN through the C ABI: made from a JSON spec, initialised, evaluated, trained on a
 * tiny procedural image task (the loss falls), module criticality and an interpolation curve on
 * its evaluator, module activations for CKA, tl_mlp_train with the same options, and every error
 * path with its status. */
#include <stddef.h>
#include "transferlens.h"
#include "check.h"

#define C 1
#define H 8
#define W 8
#define CLASSES 3
#define ROWS 48
#define PIXELS (C * H * W)

static const char *SPEC =
    "{\"input\": [1, 8, 8], \"classes\": 3, \"layers\": ["
    "{\"type\": \"conv\", \"name\": \"conv1\", \"out\": 4, \"kernel\": 3, \"padding\": 1, \"bias\": false},"
    "{\"type\": \"groupnorm\", \"name\": \"gn1\", \"groups\": 2},"
    "{\"type\": \"relu\"},"
    "{\"type\": \"block\", \"name\": \"layer1\", \"out\": 8, \"stride\": 2, \"groups\": 2},"
    "{\"type\": \"global_avgpool\"},"
    "{\"type\": \"dense\", \"name\": \"fc\", \"out\": 3}]}";

static float x[ROWS * PIXELS];
static uint32_t y[ROWS];

static uint64_t rng_state = 5;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

/* Class 0: horizontal stripes, 1: vertical stripes, 2: a checkerboard; each with noise. */
static void make_images(void) {
    for (int r = 0; r < ROWS; r++) {
        uint32_t label = (uint32_t)(r % CLASSES);
        y[r] = label;
        for (int i = 0; i < H; i++) {
            for (int j = 0; j < W; j++) {
                int on = label == 0 ? i % 2 : label == 1 ? j % 2 : (i + j) % 2;
                x[r * PIXELS + i * W + j] = (float)(on ? 1.0 : -1.0) + (float)(0.6 * (uniform() - 0.5));
            }
        }
    }
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

static void shape_and_modules(const tl_cnn *cnn) {
    uint64_t c = 0, h = 0, w = 0;
    CHECK_OK(tl_cnn_input_shape(cnn, &c, &h, &w));
    CHECK(c == C && h == H && w == W);
    CHECK(tl_cnn_classes(cnn) == CLASSES);
    CHECK(tl_cnn_module_count(cnn) == 3);
    CHECK(strcmp(tl_cnn_module_name(cnn, 0), "conv1") == 0);
    CHECK(strcmp(tl_cnn_module_name(cnn, 1), "layer1") == 0);
    CHECK(strcmp(tl_cnn_module_name(cnn, 2), "fc") == 0);
    CHECK(tl_cnn_module_name(cnn, 3) == NULL);
    uint64_t width = 0;
    CHECK_OK(tl_cnn_module_width(cnn, 0, &width));
    CHECK(width == 4 * H * W);
    CHECK_OK(tl_cnn_module_width(cnn, 1, &width));
    CHECK(width == 8 * (H / 2) * (W / 2));
    CHECK_OK(tl_cnn_module_width(cnn, 2, &width));
    CHECK(width == CLASSES);
    CHECK_STATUS(tl_cnn_module_width(cnn, 3, &width), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_cnn_module_width(NULL, 0, &width), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_input_shape(cnn, &c, NULL, &w), TL_STATUS_NULL_ARGUMENT);
    /* NULL handles give the documented fallbacks. */
    CHECK(tl_cnn_classes(NULL) == 0 && tl_cnn_module_count(NULL) == 0 && tl_cnn_module_name(NULL, 0) == NULL);
}

/* Training lowers the loss; the trained set evaluates better than the initial one; the same seed
 * gives the same losses. */
static void train_and_evaluate(const tl_cnn *cnn, tl_params *init, tl_params **trained) {
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_cnn(cnn, x, y, ROWS, &ev));
    tl_metrics before, after;
    CHECK_OK(tl_evaluate(ev, init, &before));
    CHECK(isfinite(before.loss) && before.loss > 0 && before.error >= 0 && before.error <= 1);

    tl_train_options opts = tl_train_options_default();
    CHECK(opts.size == sizeof opts && opts.epochs == 10 && opts.batch == 32 && opts.lr == 0.05);
    CHECK(opts.momentum == 0.9 && opts.schedule == TL_LR_SCHEDULE_CONSTANT);
    opts.epochs = 12;
    opts.batch = 8;
    opts.lr = 0.05;
    opts.schedule = TL_LR_SCHEDULE_COSINE;
    double losses[12], again[12];
    CHECK_OK(tl_params_clone(init, trained));
    CHECK_OK(tl_cnn_train(cnn, *trained, x, y, ROWS, &opts, losses, 12));
    for (int e = 0; e < 12; e++) CHECK(isfinite(losses[e]) && losses[e] > 0);
    CHECK(losses[11] < 0.5 * losses[0]);
    CHECK_OK(tl_evaluate(ev, *trained, &after));
    CHECK(after.loss < before.loss && after.error <= before.error);
    printf("cnn training: epoch losses %.4f -> %.4f, eval loss %.4f -> %.4f, error %.3f -> %.3f\n", losses[0],
           losses[11], before.loss, after.loss, before.error, after.error);

    tl_params *twin = NULL;
    CHECK_OK(tl_params_clone(init, &twin));
    CHECK_OK(tl_cnn_train(cnn, twin, x, y, ROWS, &opts, again, 12));
    for (int e = 0; e < 12; e++) CHECK(again[e] == losses[e]);
    /* The losses array is optional. */
    opts.epochs = 1;
    CHECK_OK(tl_cnn_train(cnn, twin, x, y, ROWS, &opts, NULL, 0));
    tl_params_destroy(twin);
    tl_evaluator_destroy(ev);
}

/* A host callback that evaluates each set with a CNN evaluator (`user`) through tl_evaluate:
 * criticality then writes every noisy copy into a set, where the CNN evaluator batches them. */
static int32_t via_tl_evaluate(void *user, const struct tl_params *params, struct tl_metrics *out) {
    return tl_evaluate((tl_evaluator *)user, params, out) == TL_STATUS_OK ? 0 : 1;
}

/* Module criticality and an interpolation curve run on the CNN's evaluator; its batched noisy
 * copies give the criticality of writing each copy into a set, bit for bit. */
static void analyses(const tl_cnn *cnn, tl_params *init, tl_params *trained) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_cnn(cnn, x, y, ROWS, &ev));
    tl_params *live = NULL;
    CHECK_OK(tl_params_clone(init, &live));

    double lambdas[3] = {0.0, 0.5, 1.0};
    tl_metrics curve[3], end_a, end_b;
    CHECK_OK(tl_interpolation_curve(ctx, ev, init, trained, live, lambdas, 3, -1, curve));
    CHECK_OK(tl_evaluate(ev, init, &end_a));
    CHECK_OK(tl_evaluate(ev, trained, &end_b));
    CHECK_CLOSE(curve[0].loss, end_a.loss, 1e-12);
    CHECK_CLOSE(curve[2].loss, end_b.loss, 1e-12);
    CHECK(isfinite(curve[1].loss));

    tl_criticality_options o = tl_criticality_options_default();
    o.eps_relative = 2;
    o.eps = 0.1;
    o.metric = TL_METRIC_LOSS;
    o.samples = 2;
    o.repeats = 1;
    o.alphas = 3;
    o.alpha_steps = 0;
    o.tolerance = 0.5;
    tl_criticality crit, written;
    tl_evaluator *plain = NULL, *callback = NULL;
    CHECK_OK(tl_evaluator_cnn(cnn, x, y, ROWS, &plain));
    CHECK_OK(tl_evaluator_from_callback(via_tl_evaluate, plain, &callback));
    int positive = 0;
    for (size_t m = 0; m < tl_cnn_module_count(cnn); m++) {
        CHECK_OK(tl_module_criticality(ctx, ev, init, trained, NULL, 0, live, m, &o, &crit));
        CHECK(crit.value >= 0 && crit.numel > 0 && crit.points > 0);
        CHECK_OK(tl_module_criticality(ctx, callback, init, trained, NULL, 0, live, m, &o, &written));
        CHECK(written.value == crit.value && written.sigma == crit.sigma && written.expected == crit.expected);
        positive += crit.value > 0;
        printf("cnn criticality of %s: %.4g (%llu elements)\n", tl_cnn_module_name(cnn, m), crit.value,
               (unsigned long long)crit.numel);
    }
    CHECK(positive > 0);
    tl_evaluator_destroy(callback);
    tl_evaluator_destroy(plain);
    tl_params_destroy(live);
    tl_evaluator_destroy(ev);
    tl_context_destroy(ctx);
}

/* Activations of every module: the width the CNN reports, finite values; the logits module's
 * activations give the evaluator's predictions. */
static void activations(const tl_cnn *cnn, tl_params *trained) {
    for (size_t m = 0; m < tl_cnn_module_count(cnn); m++) {
        uint64_t width = 0;
        CHECK_OK(tl_cnn_module_width(cnn, m, &width));
        size_t n = (size_t)(ROWS * width);
        float *acts = malloc(n * sizeof *acts);
        CHECK(acts != NULL);
        CHECK_OK(tl_cnn_activations(cnn, trained, x, ROWS, m, acts, n));
        CHECK(all_finite(acts, n));
        if (m == 2) {
            /* The logits: argmax per row against the labels gives the evaluator's error. */
            int wrong = 0;
            for (int r = 0; r < ROWS; r++) {
                int best = 0;
                for (int k = 1; k < CLASSES; k++)
                    if (acts[r * CLASSES + k] > acts[r * CLASSES + best]) best = k;
                wrong += (uint32_t)best != y[r];
            }
            tl_evaluator *ev = NULL;
            tl_metrics got;
            CHECK_OK(tl_evaluator_cnn(cnn, x, y, ROWS, &ev));
            CHECK_OK(tl_evaluate(ev, trained, &got));
            CHECK_CLOSE(got.error, (double)wrong / ROWS, 1e-12);
            tl_evaluator_destroy(ev);
        }
        free(acts);
    }
}

/* tl_mlp_train takes the same options and lowers the MLP's loss on the flattened images. */
static void mlp_training(void) {
    uint64_t sizes[3] = {PIXELS, 16, CLASSES};
    tl_params *p = NULL;
    CHECK_OK(tl_mlp_init(sizes, 3, 3, &p));
    tl_train_options opts = tl_train_options_default();
    opts.epochs = 6;
    opts.batch = 8;
    opts.schedule = TL_LR_SCHEDULE_STEP;
    opts.step_every = 2;
    opts.step_factor = 0.5;
    double losses[6];
    CHECK_OK(tl_mlp_train(sizes, 3, p, x, y, ROWS, &opts, losses, 6));
    CHECK(losses[5] < losses[0]);
    CHECK_STATUS(tl_mlp_train(sizes, 3, NULL, x, y, ROWS, &opts, losses, 6), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_mlp_train(sizes, 3, p, x, y, ROWS, &opts, losses, 5), TL_STATUS_INVALID_ARGUMENT);
    uint64_t other[3] = {PIXELS, 8, CLASSES};
    CHECK_STATUS(tl_mlp_train(other, 3, p, x, y, ROWS, &opts, losses, 6), TL_STATUS_SHAPE_MISMATCH);
    tl_params_destroy(p);
}

/* An options struct of a caller built when tl_train_options ended after `seed`. */
typedef struct {
    size_t size;
    uint64_t epochs, batch;
    double lr, momentum, weight_decay;
    uint64_t seed;
} old_train_options;

static void error_paths(const tl_cnn *cnn, tl_params *init) {
    tl_cnn *bad = (tl_cnn *)1;
    /* Bad specs: the message names the layer and the field. */
    CHECK_STATUS(tl_cnn_create(NULL, &bad), TL_STATUS_NULL_ARGUMENT);
    CHECK(bad == NULL);
    CHECK_STATUS(tl_cnn_create(SPEC, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_create("{\"input\": [1, 8", &bad), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "JSON") != NULL);
    CHECK_STATUS(tl_cnn_create("{\"input\": [1, 8, 8], \"classes\": 3, \"layers\": ["
                               "{\"type\": \"conv\", \"name\": \"conv1\", \"out\": 0, \"kernel\": 3},"
                               "{\"type\": \"global_avgpool\"}, {\"type\": \"dense\", \"name\": \"fc\", \"out\": 3}]}",
                               &bad),
                 TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "conv1") != NULL && strstr(tl_last_error_message(), "out") != NULL);
    CHECK(bad == NULL);
    tl_cnn_destroy(NULL);

    tl_params *p = (tl_params *)1;
    CHECK_STATUS(tl_cnn_init(NULL, 1, &p), TL_STATUS_NULL_ARGUMENT);
    CHECK(p == NULL);
    CHECK_STATUS(tl_cnn_init(cnn, 1, NULL), TL_STATUS_NULL_ARGUMENT);

    /* The evaluator: NULLs, label >= classes, non-finite input, no rows. */
    tl_evaluator *ev = (tl_evaluator *)1;
    CHECK_STATUS(tl_evaluator_cnn(NULL, x, y, ROWS, &ev), TL_STATUS_NULL_ARGUMENT);
    CHECK(ev == NULL);
    CHECK_STATUS(tl_evaluator_cnn(cnn, NULL, y, ROWS, &ev), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, NULL, ROWS, &ev), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, y, ROWS, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, y, 0, &ev), TL_STATUS_DEGENERATE_INPUT);
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, y, UINT64_MAX / 2, &ev), TL_STATUS_INVALID_ARGUMENT);
    y[7] = CLASSES;
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, y, ROWS, &ev), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, NULL, NULL, 0), TL_STATUS_INVALID_ARGUMENT);
    y[7] = 7 % CLASSES;
    float saved = x[5];
    x[5] = NAN;
    CHECK_STATUS(tl_evaluator_cnn(cnn, x, y, ROWS, &ev), TL_STATUS_NON_FINITE);
    CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, NULL, NULL, 0), TL_STATUS_NON_FINITE);
    float out1[CLASSES * 1];
    CHECK_STATUS(tl_cnn_activations(cnn, init, x, 1, 2, out1, CLASSES), TL_STATUS_NON_FINITE);
    x[5] = saved;

    /* A set with the wrong tensors: an MLP's set, and a CNN set of another architecture. */
    uint64_t sizes[3] = {PIXELS, 4, CLASSES};
    tl_params *mlp = NULL;
    CHECK_OK(tl_mlp_init(sizes, 3, 1, &mlp));
    CHECK_OK(tl_evaluator_cnn(cnn, x, y, ROWS, &ev));
    tl_metrics m;
    CHECK_STATUS(tl_evaluate(ev, mlp, &m), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_cnn_train(cnn, mlp, x, y, ROWS, NULL, NULL, 0), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_cnn_activations(cnn, mlp, x, 1, 2, out1, CLASSES), TL_STATUS_NOT_FOUND);
    tl_cnn *wider = NULL;
    CHECK_OK(tl_cnn_create("{\"input\": [1, 8, 8], \"classes\": 3, \"layers\": ["
                           "{\"type\": \"conv\", \"name\": \"conv1\", \"out\": 5, \"kernel\": 3, \"padding\": 1},"
                           "{\"type\": \"global_avgpool\"}, {\"type\": \"dense\", \"name\": \"fc\", \"out\": 3}]}",
                           &wider));
    tl_params *other = NULL;
    CHECK_OK(tl_cnn_init(wider, 1, &other));
    CHECK_STATUS(tl_evaluate(ev, other, &m), TL_STATUS_SHAPE_MISMATCH);
    CHECK_STATUS(tl_cnn_train(cnn, other, x, y, ROWS, NULL, NULL, 0), TL_STATUS_SHAPE_MISMATCH);
    tl_params_destroy(other);
    tl_cnn_destroy(wider);
    tl_params_destroy(mlp);
    tl_evaluator_destroy(ev);

    /* Training: NULLs, the losses' length, every option's range, an options size that cuts a
     * field; an older, smaller struct works with the later fields at their defaults. */
    double losses[3];
    tl_train_options o = tl_train_options_default();
    o.epochs = 3;
    CHECK_STATUS(tl_cnn_train(NULL, init, x, y, ROWS, &o, losses, 3), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, NULL, x, y, ROWS, &o, losses, 3), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, init, NULL, y, ROWS, &o, losses, 3), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, init, x, NULL, ROWS, &o, losses, 3), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, &o, NULL, 3), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, &o, losses, 2), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "n_epoch_losses") != NULL);
    tl_train_options bad_opts[6];
    for (int i = 0; i < 6; i++) bad_opts[i] = o;
    bad_opts[0].batch = 0;
    bad_opts[1].lr = 0.0;
    bad_opts[2].momentum = 1.0;
    bad_opts[3].weight_decay = -1.0;
    bad_opts[4].schedule = TL_LR_SCHEDULE_STEP;
    bad_opts[4].step_every = 0;
    bad_opts[5].schedule = (tl_lr_schedule)7;
    for (int i = 0; i < 6; i++)
        CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, &bad_opts[i], losses, 3), TL_STATUS_INVALID_ARGUMENT);
    tl_train_options cut = o;
    cut.size = offsetof(tl_train_options, lr) + 4;
    CHECK_STATUS(tl_cnn_train(cnn, init, x, y, ROWS, &cut, losses, 3), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "opts->size") != NULL);

    old_train_options old = {sizeof(old_train_options), 3, 16, 0.05, 0.9, 0.0, 4};
    tl_params *copy = NULL, *twin = NULL;
    double old_losses[3], new_losses[3];
    CHECK_OK(tl_params_clone(init, &copy));
    CHECK_OK(tl_params_clone(init, &twin));
    CHECK_OK(tl_cnn_train(cnn, copy, x, y, ROWS, (const tl_train_options *)&old, old_losses, 3));
    tl_train_options same = tl_train_options_default();
    same.epochs = 3;
    same.batch = 16;
    same.seed = 4;
    CHECK_OK(tl_cnn_train(cnn, twin, x, y, ROWS, &same, new_losses, 3));
    for (int e = 0; e < 3; e++) CHECK(old_losses[e] == new_losses[e]);
    tl_params_destroy(copy);
    tl_params_destroy(twin);

    /* Activations: NULLs, a module out of range, out_len other than rows x width. */
    float out[CLASSES * 2];
    CHECK_STATUS(tl_cnn_activations(NULL, init, x, 2, 2, out, 2 * CLASSES), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_activations(cnn, NULL, x, 2, 2, out, 2 * CLASSES), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_activations(cnn, init, NULL, 2, 2, out, 2 * CLASSES), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_activations(cnn, init, x, 2, 2, NULL, 2 * CLASSES), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_cnn_activations(cnn, init, x, 2, 3, out, 2 * CLASSES), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_cnn_activations(cnn, init, x, 2, 2, out, 2 * CLASSES - 1), TL_STATUS_SHAPE_MISMATCH);
    CHECK_STATUS(tl_cnn_activations(cnn, init, x, 0, 2, out, 0), TL_STATUS_DEGENERATE_INPUT);
}

int main(void) {
    make_images();
    tl_cnn *cnn = NULL;
    CHECK_OK(tl_cnn_create(SPEC, &cnn));
    shape_and_modules(cnn);
    tl_params *init = NULL, *trained = NULL;
    CHECK_OK(tl_cnn_init(cnn, 1, &init));
    CHECK(tl_params_module_count(init) == tl_cnn_module_count(cnn));
    train_and_evaluate(cnn, init, &trained);
    analyses(cnn, init, trained);
    activations(cnn, trained);
    mlp_training();
    error_paths(cnn, init);
    tl_params_destroy(trained);
    tl_params_destroy(init);
    tl_cnn_destroy(cnn);
    printf("cnn: all checks passed\n");
    return 0;
}
