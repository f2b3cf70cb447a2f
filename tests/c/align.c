/* Permutation alignment through the C ABI: a spec inferred for the built-in MLP, a known
 * permutation applied and recovered by weight matching and by activation matching, the
 * layer-wise curve against the plain curve, the versioned options, and every error path. */
#include <stddef.h>
#include "transferlens.h"
#include "check.h"

#define IN 6
#define H1 10
#define H2 8
#define OUT 3
#define UNITS (H1 + H2)
#define ROWS 40

static uint64_t rng_state = 11;
static double uniform(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

static const uint64_t sizes[4] = {IN, H1, H2, OUT};

/* The known permutation: group fc1 reversed, group fc2 rotated by 3. */
static void known_perms(uint64_t *perms) {
    for (int i = 0; i < H1; i++) perms[i] = (uint64_t)(H1 - 1 - i);
    for (int i = 0; i < H2; i++) perms[H1 + i] = (uint64_t)((i + 3) % H2);
}

static double distance(tl_context *ctx, const tl_params *a, const tl_params *b) {
    double per_module[3], total = -1;
    CHECK_OK(tl_params_distance(ctx, a, b, per_module, &total));
    return total;
}

static void spec_and_weights(tl_context *ctx) {
    tl_params *a = NULL, *b = NULL, *aligned = NULL, *other = NULL;
    CHECK_OK(tl_mlp_init(sizes, 4, 1, &a));
    tl_perm_spec *spec = NULL;
    CHECK_OK(tl_perm_spec_infer(a, &spec));
    CHECK(tl_perm_spec_group_count(spec) == 2);
    CHECK(tl_perm_spec_units(spec) == UNITS);
    uint64_t size = 0;
    CHECK_OK(tl_perm_spec_group_size(spec, 1, &size));
    CHECK(size == H2);
    CHECK_OK(tl_perm_spec_check(spec, a));

    /* B = A permuted; weight matching finds the inverse, and applying it gives A back. */
    uint64_t hidden[UNITS], found[UNITS], passes = 0;
    int32_t converged = -1;
    known_perms(hidden);
    CHECK_OK(tl_align_apply(spec, a, hidden, UNITS, &b));
    CHECK(distance(ctx, a, b) > 0.1);
    CHECK_OK(tl_align_weights(spec, a, b, NULL, found, UNITS, &passes, &converged));
    CHECK(converged == 1 && passes >= 1);
    for (int i = 0; i < UNITS; i++) {
        int off = i < H1 ? 0 : H1;
        CHECK(hidden[off + found[i]] == (uint64_t)(i - off)); /* found is hidden's inverse */
    }
    CHECK_OK(tl_align_apply(spec, b, found, UNITS, &aligned));
    CHECK(distance(ctx, a, aligned) == 0.0);

    /* Two independent inits: alignment brings B closer to A; outputs may be NULL. */
    CHECK_OK(tl_mlp_init(sizes, 4, 2, &other));
    tl_align_options opts = tl_align_options_default();
    CHECK(opts.size == sizeof(tl_align_options) && opts.max_passes == 100 && opts.seed == 0);
    opts.seed = 5;
    CHECK_OK(tl_align_weights(spec, a, other, &opts, found, UNITS, NULL, NULL));
    tl_params *other_aligned = NULL;
    CHECK_OK(tl_align_apply(spec, other, found, UNITS, &other_aligned));
    CHECK(distance(ctx, a, other_aligned) < distance(ctx, a, other));
    tl_params_destroy(other_aligned);

    /* An older caller's struct (without max_passes) takes the default for the rest. */
    opts.size = offsetof(tl_align_options, max_passes);
    CHECK_OK(tl_align_weights(spec, a, b, &opts, found, UNITS, NULL, NULL));
    opts.size = offsetof(tl_align_options, seed) + 4; /* ends inside a field */
    CHECK_STATUS(tl_align_weights(spec, a, b, &opts, found, UNITS, NULL, NULL), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "ends inside a field") != NULL);
    opts = tl_align_options_default();
    opts.max_passes = 0;
    CHECK_STATUS(tl_align_weights(spec, a, b, &opts, found, UNITS, NULL, NULL), TL_STATUS_INVALID_ARGUMENT);

    /* Errors: NULLs, lengths, non-permutations, indices. */
    CHECK_STATUS(tl_align_weights(NULL, a, b, NULL, found, UNITS, NULL, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_weights(spec, NULL, b, NULL, found, UNITS, NULL, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_weights(spec, a, NULL, NULL, found, UNITS, NULL, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_weights(spec, a, b, NULL, NULL, UNITS, NULL, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_weights(spec, a, b, NULL, found, UNITS - 1, NULL, NULL), TL_STATUS_SHAPE_MISMATCH);
    CHECK(strstr(tl_last_error_message(), "tl_perm_spec_units") != NULL);
    tl_params *out = (tl_params *)(uintptr_t)1;
    CHECK_STATUS(tl_align_apply(spec, b, found, UNITS + 1, &out), TL_STATUS_SHAPE_MISMATCH);
    CHECK(out == NULL);
    CHECK_STATUS(tl_align_apply(spec, b, NULL, UNITS, &out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_apply(NULL, b, found, UNITS, &out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_apply(spec, NULL, found, UNITS, &out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_apply(spec, b, found, UNITS, NULL), TL_STATUS_NULL_ARGUMENT);
    uint64_t twice[UNITS];
    known_perms(twice);
    twice[1] = twice[0]; /* not a permutation */
    CHECK_STATUS(tl_align_apply(spec, b, twice, UNITS, &out), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "\"fc1\"") != NULL);
    twice[1] = UINT64_MAX;
    CHECK_STATUS(tl_align_apply(spec, b, twice, UNITS, &out), TL_STATUS_INVALID_ARGUMENT);
    CHECK(out == NULL);
    CHECK_STATUS(tl_perm_spec_group_size(spec, 2, &size), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_perm_spec_group_size(spec, 0, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_perm_spec_group_size(NULL, 0, &size), TL_STATUS_NULL_ARGUMENT);
    CHECK(tl_perm_spec_group_count(NULL) == 0 && tl_perm_spec_units(NULL) == 0);
    CHECK_STATUS(tl_perm_spec_check(spec, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_perm_spec_check(NULL, a), TL_STATUS_NULL_ARGUMENT);

    /* A set the spec does not fit: named by group and tensor. */
    float w[4] = {1, 2, 3, 4};
    uint64_t shape[1] = {4};
    tl_tensor t = {"fc1.weight", w, TL_DTYPE_F32, shape, 1, -1};
    tl_params *lone = NULL;
    CHECK_OK(tl_params_wrap(ctx, &t, 1, &lone));
    CHECK_STATUS(tl_perm_spec_check(spec, lone), TL_STATUS_SHAPE_MISMATCH);
    CHECK(strstr(tl_last_error_message(), "\"fc1.weight\"") != NULL);
    CHECK_STATUS(tl_align_weights(spec, a, lone, NULL, found, UNITS, NULL, NULL), TL_STATUS_SHAPE_MISMATCH);
    tl_perm_spec *none = (tl_perm_spec *)(uintptr_t)1;
    CHECK_STATUS(tl_perm_spec_infer(lone, &none), TL_STATUS_INVALID_ARGUMENT); /* not a dense chain */
    CHECK(none == NULL);
    CHECK_STATUS(tl_perm_spec_infer(NULL, &none), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_perm_spec_infer(a, NULL), TL_STATUS_NULL_ARGUMENT);

    tl_params_destroy(lone);
    tl_params_destroy(other);
    tl_params_destroy(aligned);
    tl_params_destroy(b);
    tl_params_destroy(a);
    tl_perm_spec_destroy(spec);
    tl_perm_spec_destroy(NULL);
}

static void json_specs(void) {
    tl_perm_spec *spec = NULL;
    CHECK_OK(tl_perm_spec_from_json(
        "{\"groups\": [{\"name\": \"h\", \"size\": 4, \"partition\": [2], "
        "\"axes\": [[\"l1.weight\", 0], [\"l2.weight\", 1]]}]}",
        &spec));
    CHECK(tl_perm_spec_units(spec) == 4);
    tl_perm_spec_destroy(spec);
    spec = (tl_perm_spec *)(uintptr_t)1;
    CHECK_STATUS(tl_perm_spec_from_json("{\"groups\": [", &spec), TL_STATUS_FORMAT);
    CHECK(spec == NULL);
    CHECK_STATUS(tl_perm_spec_from_json("{\"groups\": [], \"extra\": 1}", &spec), TL_STATUS_FORMAT);
    CHECK_STATUS(tl_perm_spec_from_json("{\"groups\": [{\"name\": \"h\", \"size\": 0, \"axes\": []}]}", &spec),
                 TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(
        tl_perm_spec_from_json("{\"groups\": [{\"name\": \"h\", \"size\": 6, \"partition\": [4], \"axes\": []}]}", &spec),
        TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_perm_spec_from_json(NULL, &spec), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_perm_spec_from_json("{\"groups\": []}", NULL), TL_STATUS_NULL_ARGUMENT);
}

static void activations(tl_context *ctx) {
    tl_params *a = NULL;
    CHECK_OK(tl_mlp_init(sizes, 4, 1, &a));
    tl_perm_spec *spec = NULL;
    CHECK_OK(tl_perm_spec_infer(a, &spec));
    /* A's activations random; B's the same columns in the known order, as a B made by
     * tl_align_apply(hidden) would give them: B's column i is A's column hidden[i]. */
    static float acts_a1[ROWS * H1], acts_a2[ROWS * H2], acts_b1[ROWS * H1], acts_b2[ROWS * H2];
    uint64_t hidden[UNITS], found[UNITS];
    known_perms(hidden);
    for (int r = 0; r < ROWS; r++) {
        for (int i = 0; i < H1; i++) acts_a1[r * H1 + i] = (float)normal();
        for (int i = 0; i < H2; i++) acts_a2[r * H2 + i] = (float)normal();
        for (int i = 0; i < H1; i++) acts_b1[r * H1 + i] = acts_a1[r * H1 + hidden[i]];
        for (int i = 0; i < H2; i++) acts_b2[r * H2 + i] = acts_a2[r * H2 + hidden[H1 + i]];
    }
    tl_matrix ma[2] = {{acts_a1, TL_DTYPE_F32, ROWS, H1, 0, -1}, {acts_a2, TL_DTYPE_F32, ROWS, H2, 0, -1}};
    tl_matrix mb[2] = {{acts_b1, TL_DTYPE_F32, ROWS, H1, 0, -1}, {acts_b2, TL_DTYPE_F32, ROWS, H2, 0, -1}};
    CHECK_OK(tl_align_activations(ctx, spec, ma, mb, 2, found, UNITS));
    for (int i = 0; i < UNITS; i++) {
        int off = i < H1 ? 0 : H1;
        CHECK(hidden[off + found[i]] == (uint64_t)(i - off));
    }

    /* Errors. */
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, mb, 1, found, UNITS), TL_STATUS_SHAPE_MISMATCH);
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, mb, 2, found, UNITS + 1), TL_STATUS_SHAPE_MISMATCH);
    CHECK_STATUS(tl_align_activations(NULL, spec, ma, mb, 2, found, UNITS), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_activations(ctx, NULL, ma, mb, 2, found, UNITS), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_activations(ctx, spec, NULL, mb, 2, found, UNITS), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, NULL, 2, found, UNITS), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, mb, 2, NULL, UNITS), TL_STATUS_NULL_ARGUMENT);
    tl_matrix swapped[2] = {mb[1], mb[0]}; /* wrong widths per group */
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, swapped, 2, found, UNITS), TL_STATUS_SHAPE_MISMATCH);
    CHECK(strstr(tl_last_error_message(), "\"fc1\"") != NULL);
    tl_matrix one_row[2] = {ma[0], ma[1]};
    one_row[0].rows = 1;
    one_row[1].rows = 1;
    CHECK_STATUS(tl_align_activations(ctx, spec, one_row, one_row, 2, found, UNITS), TL_STATUS_DEGENERATE_INPUT);
    tl_matrix fewer[2] = {mb[0], mb[1]};
    fewer[1].rows = ROWS - 1;
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, fewer, 2, found, UNITS), TL_STATUS_SHAPE_MISMATCH);
    acts_b2[5] = NAN;
    CHECK_STATUS(tl_align_activations(ctx, spec, ma, mb, 2, found, UNITS), TL_STATUS_NON_FINITE);
    CHECK(strstr(tl_last_error_message(), "\"fc2\"") != NULL);

    tl_perm_spec_destroy(spec);
    tl_params_destroy(a);
}

static void layerwise(tl_context *ctx) {
    static float x[ROWS * IN];
    static uint32_t y[ROWS];
    for (int i = 0; i < ROWS * IN; i++) x[i] = (float)normal();
    for (int r = 0; r < ROWS; r++) y[r] = (uint32_t)(r % OUT);
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_mlp(sizes, 4, x, y, ROWS, &ev));
    tl_params *a = NULL, *b = NULL, *live = NULL;
    CHECK_OK(tl_mlp_init(sizes, 4, 3, &a));
    CHECK_OK(tl_mlp_init(sizes, 4, 4, &b));
    CHECK_OK(tl_params_clone(a, &live));
    CHECK(tl_params_module_count(a) == 3);
    const double lambdas[4] = {0.0, 0.4, 0.7, 1.0};
    tl_metrics plain[4], all[4], one[4], at_a, at_b;
    CHECK_OK(tl_interpolation_curve(ctx, ev, a, b, live, lambdas, 4, -1, plain));
    CHECK_OK(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, 0, 3, all));
    for (int k = 0; k < 4; k++) CHECK(all[k].loss == plain[k].loss && all[k].error == plain[k].error);
    /* Only the last module moves: A at 0, a hybrid (neither A nor B) at 1. */
    CHECK_OK(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, 2, 1, one));
    CHECK_OK(tl_evaluate(ev, a, &at_a));
    CHECK_OK(tl_evaluate(ev, b, &at_b));
    CHECK(one[0].loss == at_a.loss);
    CHECK(one[3].loss != at_a.loss && one[3].loss != at_b.loss);

    /* Errors. */
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, 2, 2, one), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, 0, 0, one), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, SIZE_MAX, 2, one), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, a, lambdas, 4, 0, 1, one), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "live is a") != NULL);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 0, 0, 1, one), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, NULL, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, live, lambdas, 4, 0, 1, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(NULL, ev, a, b, live, lambdas, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, NULL, a, b, live, lambdas, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, NULL, b, live, lambdas, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, NULL, live, lambdas, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_layerwise_curve(ctx, ev, a, b, NULL, lambdas, 4, 0, 1, one), TL_STATUS_NULL_ARGUMENT);

    tl_params_destroy(live);
    tl_params_destroy(b);
    tl_params_destroy(a);
    tl_evaluator_destroy(ev);
}

int main(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    spec_and_weights(ctx);
    json_specs();
    activations(ctx);
    layerwise(ctx);
    tl_context_destroy(ctx);
    printf("align: ok\n");
    return 0;
}
