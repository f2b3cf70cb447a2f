/* Module criticality through the C ABI: the defaults and the reference mode, the checks of every
 * numeric option (a tolerance with 1 + tol == 1 must not bisect forever), the full reports on a
 * quadratic loss whose answer is known, infeasible modules in every mode, the bound's refusals and
 * reading, and callers built against older, smaller structs. */
#include <stddef.h>
#include "transferlens.h"
#include "check.h"

#define K 2000

static float live_w[K], init_w[K], final_w[K];

/* L(w) = ||w||^2 / (2K) of the host's live model. */
static int32_t quadratic(void *user, const struct tl_params *params, struct tl_metrics *out) {
    double s = 0;
    (void)user, (void)params;
    for (int i = 0; i < K; i++) s += (double)live_w[i] * live_w[i];
    out->loss = s / (2.0 * K);
    out->error = out->loss;
    out->accuracy = 1.0 - out->loss;
    return 0;
}

static uint64_t rng_state = 11;
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

/* The report of a caller built when tl_criticality_report ended after pac_bayes_term. */
typedef struct {
    size_t size;
    double value, per_parameter, pac_bayes_term;
    double sentinel;
} old_report;

/* An entry of that older report in an array. */
typedef struct {
    size_t size;
    double value, per_parameter, pac_bayes_term;
} old_entry;

static void defaults_and_reference(void) {
    tl_criticality_options d = tl_criticality_options_default();
    CHECK(d.size == sizeof d && d.refined == 1 && d.noise_relative == 1 && d.eps_relative == 2 && d.eps == 0.02);
    CHECK(d.sigma_floor == 1e-3 && d.confidence == 2.0 && d.repeats == 3 && d.samples == 10 && d.alphas == 11);
    tl_criticality_options r = tl_criticality_options_reference();
    CHECK(r.size == sizeof r && r.refined == 0 && r.noise_relative == 0 && r.noise_scale == 1.0);
    CHECK(r.eps_relative == 1 && r.eps == 0.01 && r.alphas == 11 && r.sigmas == 11 && r.samples == 10);
    CHECK(r.sigma_floor == 0.0 && r.confidence == 0.0 && r.repeats == 1);
}

static void quadratic_reports(tl_context *ctx) {
    double a = 0;
    for (int i = 0; i < K; i++) {
        init_w[i] = (float)normal();
        final_w[i] = 0.0f;
        live_w[i] = 0.0f;
        a += (double)init_w[i] * init_w[i];
    }
    a /= K;
    struct tl_params *init = wrap(ctx, init_w), *fin = wrap(ctx, final_w), *live = wrap(ctx, live_w);
    tl_evaluator *ev = NULL;
    CHECK_OK(tl_evaluator_from_callback(quadratic, NULL, &ev));
    tl_criticality_report rep;
    rep.size = sizeof rep;

    /* Every numeric option is checked before any work. */
    tl_criticality_options o = tl_criticality_options_default();
    o.tolerance = 1e-300; /* 1 + tol == 1: bisection would never end */
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "tolerance") != NULL);
    o = tl_criticality_options_default();
    o.samples = UINT32_MAX;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_reference();
    o.sigmas = UINT32_MAX;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_default();
    o.alpha_steps = 1000000;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_default();
    o.repeats = 0;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_default();
    o.sigma_floor = NAN;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_default();
    o.confidence = -1;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    o = tl_criticality_options_default();
    o.eps_relative = 3;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep), TL_STATUS_INVALID_ARGUMENT);
    rep.size = 0;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, NULL, &rep), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, NULL, NULL), TL_STATUS_NULL_ARGUMENT);

    /* The analytic answer: minimise alpha^2 K a / sigma^2 subject to
       (1 - alpha)^2 a / 2 + sigma^2 / 2 <= eps. Three repeats, the mean within eps. */
    double eps = 0.3, want = INFINITY;
    for (int i = 1; i <= 200000; i++) {
        double al = i / 200000.0, s2 = 2 * eps - (1 - al) * (1 - al) * a;
        if (s2 > 0 && s2 <= 1) want = fmin(want, al * al * K * a / s2);
    }
    o = tl_criticality_options_default();
    o.metric = TL_METRIC_LOSS;
    o.eps_relative = 0;
    o.eps = eps;
    o.noise_relative = 0;
    o.confidence = 0;
    o.tolerance = 1e-3;
    o.alpha_steps = 12;
    o.seed = 3;
    rep.size = sizeof rep;
    CHECK_OK(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &rep));
    CHECK(rep.size == sizeof rep && rep.feasible == 1 && rep.repeats == 3 && rep.numel == K);
    CHECK_CLOSE(rep.value / want, 1.0, 0.05);
    CHECK(rep.spread > 0 && rep.spread < 0.05 * want);
    CHECK(rep.per_parameter == rep.value / K);
    CHECK_CLOSE(rep.pac_bayes_term, K * log1p(rep.value / K), 1e-12);
    CHECK(rep.expected <= eps && rep.expected_se > 0);
    CHECK_CLOSE(rep.rewound_metric, a / 2, 1e-6);
    CHECK_CLOSE(rep.rewind_area, a / 6 + a * 0.01 / 12, 1e-6);
    /* The old function gives the same value. */
    tl_criticality c;
    CHECK_OK(tl_module_criticality(ctx, ev, init, fin, NULL, 0, live, 0, &o, &c));
    CHECK(c.value == rep.value && c.alpha == rep.alpha && c.sigma == rep.sigma);

    /* A caller built against an older report: only its bytes are written. */
    old_report old;
    old.size = offsetof(old_report, sentinel);
    old.sentinel = -7;
    CHECK_OK(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, (tl_criticality_report *)&old));
    CHECK(old.size == offsetof(old_report, sentinel) && old.value == rep.value && old.sentinel == -7);
    /* A caller built against older options: the fields it does not know take their defaults, so
       garbage there is never read. */
    tl_criticality_options shorter = o;
    shorter.size = offsetof(tl_criticality_options, sigma_floor);
    shorter.sigma_floor = NAN;
    shorter.confidence = NAN;
    shorter.repeats = 0;
    CHECK_OK(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &shorter, &rep));
    CHECK(rep.repeats == 3); /* the default */
    /* A size that ends inside a field is no version of the struct: refused, naming it. */
    tl_criticality_options cut = o;
    cut.size = offsetof(tl_criticality_options, eps) + 4;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &cut, &rep),
                 TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "opts->size") != NULL);
    tl_criticality_report cut_report;
    cut_report.size = offsetof(tl_criticality_report, per_parameter) + 3;
    CHECK_STATUS(tl_module_criticality_report(ctx, ev, init, fin, NULL, 0, live, 0, &o, &cut_report),
                 TL_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(tl_last_error_message(), "out->size") != NULL);

    /* The network report and the bound. */
    tl_network_report net;
    net.size = sizeof net;
    rep.size = sizeof rep;
    CHECK_OK(tl_network_criticality_report(ctx, ev, init, fin, NULL, 0, live, &o, &rep, 1, &net));
    CHECK(net.size == sizeof net && net.total == rep.value && net.pac_bayes_kl == rep.pac_bayes_term);
    CHECK(net.ranking_stable == 1 && net.ranking_agreement == 1.0 && net.infeasible_modules == 0);
    CHECK(net.total_spread == rep.spread);
    tl_bound_report b;
    b.size = sizeof b;
    CHECK_OK(tl_pac_bayes_report(&net, 1000, 0.05, 0.1, 500, &b));
    CHECK_CLOSE(b.bound, net.joint_expected + sqrt((0.25 * net.pac_bayes_kl + log(1000 / 0.05)) / 999.0), 1e-12);
    CHECK(b.vacuous == (b.bound > 1.0) && b.has_held_out == 1);
    CHECK_CLOSE(b.held_out, 0.1 + sqrt(log(1 / 0.05) / 1000.0), 1e-15);
    CHECK_OK(tl_pac_bayes_report(&net, 1000, 0.05, 0, 0, &b));
    CHECK(b.has_held_out == 0 && b.held_out == 0);
    CHECK_STATUS(tl_pac_bayes_report(&net, 1000, 0.05, 1.5, 10, &b), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_pac_bayes_report(&net, 1, 0.05, 0, 0, &b), TL_STATUS_INVALID_ARGUMENT);
    tl_network_report nan_net = net;
    nan_net.joint_expected = NAN;
    CHECK_STATUS(tl_pac_bayes_report(&nan_net, 1000, 0.05, 0, 0, &b), TL_STATUS_INVALID_ARGUMENT);

    /* tl_pac_bayes_bound refuses what would make it NaN instead of returning OK with NaN. */
    double bound = 0;
    CHECK_OK(tl_pac_bayes_bound(&c, 1, rep.expected, 1000, 0.05, &bound));
    CHECK(isfinite(bound));
    CHECK_STATUS(tl_pac_bayes_bound(&c, 1, NAN, 1000, 0.05, &bound), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_pac_bayes_bound(&c, 1, 0.1, 1000, NAN, &bound), TL_STATUS_INVALID_ARGUMENT);
    tl_criticality bad = c;
    bad.value = NAN;
    CHECK_STATUS(tl_pac_bayes_bound(&bad, 1, 0.1, 1000, 0.05, &bound), TL_STATUS_INVALID_ARGUMENT);
    bad = c;
    bad.value = -1;
    CHECK_STATUS(tl_pac_bayes_bound(&bad, 1, 0.1, 1000, 0.05, &bound), TL_STATUS_INVALID_ARGUMENT);
    bad = c;
    bad.numel = 0;
    CHECK_STATUS(tl_pac_bayes_bound(&bad, 1, 0.1, 1000, 0.05, &bound), TL_STATUS_INVALID_ARGUMENT);

    /* Only sigma below the floor keeps the loss within eps: +infinity and infeasible in both
       searches, the bound +infinity and vacuous. */
    for (uint32_t refined = 0; refined <= 1; refined++) {
        o = tl_criticality_options_default();
        o.metric = TL_METRIC_LOSS;
        o.eps_relative = 0;
        o.eps = 1e-8;
        o.noise_relative = 0;
        o.refined = refined;
        o.samples = 2;
        CHECK_OK(tl_network_criticality_report(ctx, ev, init, fin, NULL, 0, live, &o, &rep, 1, &net));
        CHECK(isinf(rep.value) && rep.value > 0 && rep.feasible == 0 && isinf(rep.per_parameter));
        CHECK(isinf(net.total) && net.infeasible_modules == 1 && isinf(net.pac_bayes_kl));
        CHECK_OK(tl_pac_bayes_report(&net, 1000, 0.05, 0, 0, &b));
        CHECK(isinf(b.bound) && b.vacuous == 1);
    }

    tl_evaluator_destroy(ev);
    tl_params_destroy(init);
    tl_params_destroy(fin);
    tl_params_destroy(live);
}

/* Two modules, entries of an older, smaller report: written at the caller's stride. */
static void network_of_the_builtin_mlp(tl_context *ctx) {
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
    tl_criticality_options o = tl_criticality_options_default();
    o.samples = 3;
    o.alpha_steps = 0;
    tl_criticality_report full[2];
    tl_network_report net;
    full[0].size = sizeof full[0];
    net.size = sizeof net;
    CHECK_OK(tl_network_criticality_report(ctx, ev, init, fin, NULL, 0, live, &o, full, 2, &net));
    CHECK(full[1].size == sizeof full[1] && full[0].repeats == 3 && full[1].numel == 6 * 3 + 3);
    CHECK(net.total == full[0].value + full[1].value);
    CHECK(net.eps == net.final_metric + 0.02);
    CHECK(net.ranking_agreement >= 0 && net.ranking_agreement <= 1);
    CHECK(net.ranking_stable == (net.ranking_agreement == 1.0));
    /* The older entries: the first four fields; a third entry past the two stays untouched. */
    old_entry old[3];
    old[0].size = sizeof old[0];
    old[2].size = 99;
    old[2].value = -7;
    CHECK_OK(tl_network_criticality_report(ctx, ev, init, fin, NULL, 0, live, &o, (tl_criticality_report *)old, 2, &net));
    for (int i = 0; i < 2; i++) {
        CHECK(old[i].size == sizeof old[i] && old[i].per_parameter == full[i].per_parameter);
        CHECK(old[i].value == full[i].value || (isinf(old[i].value) && isinf(full[i].value)));
    }
    CHECK(old[2].size == 99 && old[2].value == -7);
    CHECK_STATUS(tl_network_criticality_report(ctx, ev, init, fin, NULL, 0, live, &o, full, 3, &net),
                 TL_STATUS_SHAPE_MISMATCH);
    tl_evaluator_destroy(ev);
    tl_params_destroy(init);
    tl_params_destroy(fin);
    tl_params_destroy(live);
}

int main(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    defaults_and_reference();
    quadratic_reports(ctx);
    network_of_the_builtin_mlp(ctx);
    tl_context_destroy(ctx);
    puts("criticality: ok");
    return 0;
}
