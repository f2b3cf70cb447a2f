/* Parameter sets from C: every tl_params_* function, its results against double references
 * computed here, and its error paths. The safetensors fixtures are written by this program. */
#define _POSIX_C_SOURCE 200809L
#include "transferlens.h"
#include "check.h"

#include <stdint.h>
#include <unistd.h>

#define N_CONV 35 /* conv1.weight: F32 [5, 7] */
#define N_L1 9    /* layer1.0.conv1.weight: F64 [3, 3] */
#define N_L1B 6   /* layer1.0.bn1.weight: BF16 [6] */
#define N_FC 3    /* fc.bias: F32 [3] */

typedef struct {
    float conv[N_CONV];
    double l1[N_L1];
    uint16_t l1b[N_L1B]; /* bf16 bits */
    float fc[N_FC];
    int64_t count;
} model;

static uint64_t rng_state;
static double uniform(void) { /* SplitMix64 -> [-1, 1) */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

static uint16_t to_bf16(float f) { /* truncation: the test's values are exact in bf16 */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}
static double from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void fill(model *m, uint64_t seed) {
    int i;
    rng_state = seed;
    for (i = 0; i < N_CONV; i++) m->conv[i] = (float)uniform();
    for (i = 0; i < N_L1; i++) m->l1[i] = uniform();
    for (i = 0; i < N_L1B; i++) m->l1b[i] = to_bf16((float)(uniform() * 64.0) / 64.0f);
    for (i = 0; i < N_FC; i++) m->fc[i] = (float)uniform();
    m->count = 1234;
}

/* Writes the model as safetensors (file order: conv1, count, layer1 F64, layer1 BF16, fc). */
static void write_model(const char *path, const model *m, int drop_fc) {
    char header[1024];
    size_t o0 = 0, o1 = o0 + sizeof m->conv, o2 = o1 + 8, o3 = o2 + sizeof m->l1,
           o4 = o3 + sizeof m->l1b, o5 = o4 + sizeof m->fc;
    int n = snprintf(header, sizeof header,
                     "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"conv1.weight\":{\"dtype\":\"F32\",\"shape\":[5,7],\"data_offsets\":[%zu,%zu]},"
                     "\"bn1.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[%zu,%zu]},"
                     "\"layer1.0.conv1.weight\":{\"dtype\":\"F64\",\"shape\":[3,3],\"data_offsets\":[%zu,%zu]},"
                     "\"layer1.0.bn1.weight\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[%zu,%zu]}%s",
                     o0, o1, o1, o2, o2, o3, o3, o4, drop_fc ? "}" : ",");
    if (!drop_fc)
        n += snprintf(header + n, sizeof header - (size_t)n,
                      "\"fc.bias\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[%zu,%zu]}}", o4, o5);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    uint64_t len = (uint64_t)n;
    unsigned char le[8];
    int i;
    for (i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, (size_t)n, f);
    fwrite(m->conv, 1, sizeof m->conv, f);
    fwrite(&m->count, 1, 8, f);
    fwrite(m->l1, 1, sizeof m->l1, f);
    fwrite(m->l1b, 1, sizeof m->l1b, f);
    if (!drop_fc) fwrite(m->fc, 1, sizeof m->fc, f);
    CHECK(fclose(f) == 0);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (n) fwrite(data, 1, n, f);
    CHECK(fclose(f) == 0);
}

/* Squared-sum references per module (conv1, layer1, fc). */
static void reference(const model *a, const model *b, double dd[3], double aa[3], double bb[3], double ab[3]) {
    int i;
    for (i = 0; i < 3; i++) dd[i] = aa[i] = bb[i] = ab[i] = 0.0;
#define ACC(k, x, y)                          \
    do {                                      \
        double x_ = (x), y_ = (y);            \
        dd[k] += (x_ - y_) * (x_ - y_);       \
        aa[k] += x_ * x_;                     \
        bb[k] += y_ * y_;                     \
        ab[k] += x_ * y_;                     \
    } while (0)
    for (i = 0; i < N_CONV; i++) ACC(0, a->conv[i], b->conv[i]);
    for (i = 0; i < N_L1; i++) ACC(1, a->l1[i], b->l1[i]);
    for (i = 0; i < N_L1B; i++) ACC(1, from_bf16(a->l1b[i]), from_bf16(b->l1b[i]));
    for (i = 0; i < N_FC; i++) ACC(2, a->fc[i], b->fc[i]);
#undef ACC
}

static char dir[512];
static const char *path(const char *name) {
    static char buf[8][600];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tl-c-params-%ld", tmp ? tmp : "/tmp", (long)getpid());
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    model ma, mb;
    fill(&ma, 1);
    fill(&mb, 2);
    write_model(path("a.safetensors"), &ma, 0);
    write_model(path("b.safetensors"), &mb, 0);
    write_model(path("nofc.safetensors"), &mb, 1);

    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_params *a = NULL, *b = NULL, *out = NULL, *nofc = NULL;
    CHECK_OK(tl_params_load(ctx, path("a.safetensors"), &a));
    CHECK_OK(tl_params_load(ctx, path("b.safetensors"), &b));
    CHECK_OK(tl_params_load(ctx, path("nofc.safetensors"), &nofc));

    /* Modules: bn1 holds only an I64 and is left out. */
    CHECK(tl_params_module_count(a) == 3);
    CHECK(tl_params_tensor_count(a) == 5);
    const char *names[3] = {"conv1", "layer1", "fc"};
    char buf[64];
    size_t i;
    for (i = 0; i < 3; i++) {
        CHECK(tl_params_module_name(a, i, buf, sizeof buf) == strlen(names[i]) + 1);
        CHECK(strcmp(buf, names[i]) == 0);
    }
    CHECK(tl_params_module_name(a, 1, NULL, 0) == 7);
    CHECK(tl_params_module_name(a, 1, buf, 4) == 7 && strcmp(buf, "lay") == 0);
    CHECK(tl_params_module_name(a, 3, buf, sizeof buf) == 0);
    CHECK(tl_params_module_name(NULL, 0, buf, sizeof buf) == 0);
    CHECK(tl_params_module_count(NULL) == 0);
    CHECK(tl_params_tensor_count(NULL) == 0);
    size_t idx = 99;
    CHECK_OK(tl_params_find_module(a, "fc", &idx));
    CHECK(idx == 2);
    CHECK_STATUS(tl_params_find_module(a, "bn1", &idx), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_params_find_module(a, NULL, &idx), TL_STATUS_NULL_ARGUMENT);

    /* Distances, norms, compare against the references. */
    double dd[3], aa[3], bb[3], ab[3], d[3], total = -1, norms[3], norm_total;
    reference(&ma, &mb, dd, aa, bb, ab);
    CHECK_OK(tl_params_distance(ctx, a, b, d, &total));
    double sum = 0, sum_a = 0;
    for (i = 0; i < 3; i++) {
        CHECK_CLOSE(d[i], sqrt(dd[i]), 1e-12);
        sum += dd[i];
        sum_a += aa[i];
    }
    CHECK_CLOSE(total, sqrt(sum), 1e-12);
    CHECK_OK(tl_params_distance(ctx, a, b, d, NULL));
    CHECK_OK(tl_params_norms(ctx, a, norms, &norm_total));
    for (i = 0; i < 3; i++) CHECK_CLOSE(norms[i], sqrt(aa[i]), 1e-12);
    CHECK_CLOSE(norm_total, sqrt(sum_a), 1e-12);
    tl_module_geometry g[3], gt;
    CHECK_OK(tl_params_compare(ctx, a, b, g, &gt));
    for (i = 0; i < 3; i++) {
        CHECK_CLOSE(g[i].distance, sqrt(dd[i]), 1e-12);
        CHECK_CLOSE(g[i].norm_a, sqrt(aa[i]), 1e-12);
        CHECK_CLOSE(g[i].norm_b, sqrt(bb[i]), 1e-12);
        CHECK_CLOSE(g[i].relative, sqrt(dd[i] / aa[i]), 1e-12);
        CHECK_CLOSE(g[i].cosine, ab[i] / sqrt(aa[i] * bb[i]), 1e-12);
    }
    CHECK(g[0].numel == N_CONV && g[1].numel == N_L1 + N_L1B && g[2].numel == N_FC);
    CHECK(gt.numel == N_CONV + N_L1 + N_L1B + N_FC);
    CHECK_CLOSE(gt.distance, sqrt(sum), 1e-12);

    /* Interpolation into a clone; endpoints bit for bit. */
    CHECK_OK(tl_params_clone(a, &out));
    const double lambdas[4] = {-1.0, -0.5, 0.3, 2.0};
    int k;
    for (k = 0; k < 4; k++) {
        double l = lambdas[k];
        CHECK_OK(tl_params_interpolate(ctx, a, b, l, out));
        tl_dtype dt;
        const void *data;
        uint64_t n;
        CHECK_OK(tl_params_tensor_data(out, "conv1.weight", &dt, &data, &n));
        CHECK(dt == TL_DTYPE_F32 && n == N_CONV);
        for (i = 0; i < N_CONV; i++) {
            double want = (1 - l) * ma.conv[i] + l * mb.conv[i];
            CHECK(fabs(((const float *)data)[i] - want) <= 4e-7 * (fabs((1 - l) * ma.conv[i]) + fabs(l * mb.conv[i])) + 1e-30);
        }
        CHECK_OK(tl_params_tensor_data(out, "layer1.0.conv1.weight", &dt, &data, &n));
        CHECK(dt == TL_DTYPE_F64 && n == N_L1);
        for (i = 0; i < N_L1; i++) CHECK_CLOSE(((const double *)data)[i], (1 - l) * ma.l1[i] + l * mb.l1[i], 1e-15);
        CHECK_OK(tl_params_tensor_data(out, "layer1.0.bn1.weight", &dt, &data, &n));
        CHECK(dt == TL_DTYPE_BF16 && n == N_L1B);
        for (i = 0; i < N_L1B; i++) {
            double want = (1 - l) * from_bf16(ma.l1b[i]) + l * from_bf16(mb.l1b[i]);
            CHECK(fabs(from_bf16(((const uint16_t *)data)[i]) - want) <= fabs(want) / 256.0 + 1e-30);
        }
    }
    {
        tl_dtype dt;
        const void *data;
        uint64_t n;
        CHECK_OK(tl_params_interpolate(ctx, a, b, 0.0, out));
        CHECK_OK(tl_params_tensor_data(out, "conv1.weight", &dt, &data, &n));
        CHECK(memcmp(data, ma.conv, sizeof ma.conv) == 0);
        CHECK_OK(tl_params_interpolate(ctx, a, b, 1.0, out));
        CHECK_OK(tl_params_tensor_data(out, "layer1.0.bn1.weight", &dt, &data, &n));
        CHECK(memcmp(data, mb.l1b, sizeof mb.l1b) == 0);
        CHECK_STATUS(tl_params_tensor_data(out, "bn1.num_batches_tracked", &dt, &data, &n), TL_STATUS_UNSUPPORTED_DTYPE);
        CHECK_STATUS(tl_params_tensor_data(out, "nope", &dt, &data, &n), TL_STATUS_NOT_FOUND);
        CHECK_STATUS(tl_params_tensor_data(out, "fc.bias", NULL, &data, &n), TL_STATUS_NULL_ARGUMENT);
    }

    /* Save, reload: the same weights and metadata. */
    CHECK_OK(tl_params_interpolate(ctx, a, b, 0.3, out));
    CHECK_OK(tl_params_save(out, path("mid.safetensors")));
    tl_params *mid = NULL;
    CHECK_OK(tl_params_load(ctx, path("mid.safetensors"), &mid));
    CHECK_OK(tl_params_distance(ctx, out, mid, d, &total));
    CHECK(total == 0.0);
    tl_params_destroy(mid);

    /* Per-module interpolation and rewind. */
    CHECK_OK(tl_params_interpolate_module(ctx, a, b, 0.5, 1, out));
    {
        tl_dtype dt;
        const void *data;
        uint64_t n;
        CHECK_OK(tl_params_tensor_data(out, "conv1.weight", &dt, &data, &n));
        CHECK(memcmp(data, mb.conv, sizeof mb.conv) == 0); /* stays at b */
        CHECK_OK(tl_params_tensor_data(out, "layer1.0.conv1.weight", &dt, &data, &n));
        for (i = 0; i < N_L1; i++) CHECK_CLOSE(((const double *)data)[i], 0.5 * ma.l1[i] + 0.5 * mb.l1[i], 1e-15);
        CHECK_OK(tl_params_rewind(ctx, a, b, 2, 0.0, out));
        CHECK_OK(tl_params_tensor_data(out, "fc.bias", &dt, &data, &n));
        CHECK(memcmp(data, ma.fc, sizeof ma.fc) == 0); /* fc at its initial value */
        CHECK_OK(tl_params_tensor_data(out, "layer1.0.conv1.weight", &dt, &data, &n));
        CHECK(memcmp(data, mb.l1, sizeof mb.l1) == 0); /* the rest final */
    }
    CHECK_STATUS(tl_params_interpolate_module(ctx, a, b, 0.5, 3, out), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_params_rewind(ctx, a, b, 7, 0.5, out), TL_STATUS_NOT_FOUND);
    CHECK_STATUS(tl_params_rewind(ctx, a, b, 0, NAN, out), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_rewind(ctx, a, b, 0, 0.5, (tl_params *)b), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_rewind(NULL, a, b, 0, 0.5, out), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_interpolate_module(ctx, a, NULL, 0.5, 0, out), TL_STATUS_NULL_ARGUMENT);

    /* Wrap: the library writes straight into the caller's arrays. */
    {
        model live;
        memset(&live, 0, sizeof live);
        uint64_t s_conv[2] = {5, 7}, s_l1[2] = {3, 3}, s_l1b[1] = {6}, s_fc[1] = {3};
        tl_tensor views[4] = {
            {"conv1.weight", live.conv, TL_DTYPE_F32, s_conv, 2, -1},
            {"layer1.0.conv1.weight", live.l1, TL_DTYPE_F64, s_l1, 2, -1},
            {"layer1.0.bn1.weight", live.l1b, TL_DTYPE_BF16, s_l1b, 1, -1},
            {"fc.bias", live.fc, TL_DTYPE_F32, s_fc, 1, -1},
        };
        tl_params *w = NULL;
        CHECK_OK(tl_params_wrap(ctx, views, 4, &w));
        CHECK(tl_params_module_count(w) == 3);
        CHECK_OK(tl_params_interpolate(ctx, a, b, 1.0, w));
        CHECK(memcmp(live.conv, mb.conv, sizeof live.conv) == 0);
        CHECK(memcmp(live.l1b, mb.l1b, sizeof live.l1b) == 0);
        CHECK_OK(tl_params_interpolate(ctx, a, b, 0.25, w));
        for (i = 0; i < N_FC; i++)
            CHECK(fabs(live.fc[i] - (0.75 * ma.fc[i] + 0.25 * mb.fc[i])) <= 1e-6);
        /* The wrapped set reads as well as it writes. */
        CHECK_OK(tl_params_distance(ctx, w, out, d, &total));
        CHECK(total > 0.0);
        /* An out that is a or b, or an out missing a weight. */
        CHECK_STATUS(tl_params_interpolate(ctx, a, b, 0.5, a), TL_STATUS_INVALID_ARGUMENT);
        CHECK_STATUS(tl_params_interpolate(ctx, a, b, 0.5, nofc), TL_STATUS_SHAPE_MISMATCH);
        CHECK(strstr(tl_last_error_message(), "fc.bias") != NULL);
        CHECK_STATUS(tl_params_interpolate(ctx, a, b, INFINITY, w), TL_STATUS_INVALID_ARGUMENT);
        CHECK_STATUS(tl_params_interpolate(NULL, a, b, 0.5, w), TL_STATUS_NULL_ARGUMENT);
        tl_params_destroy(w);

        /* Bad views. */
        tl_params *bad = (tl_params *)&views; /* must be reset to NULL on failure */
        tl_tensor v = views[0];
        v.dtype = (tl_dtype)9;
        CHECK_STATUS(tl_params_wrap(ctx, &v, 1, &bad), TL_STATUS_UNSUPPORTED_DTYPE);
        CHECK(bad == NULL);
        v = views[0];
        v.data = (char *)live.conv + 1;
        CHECK_STATUS(tl_params_wrap(ctx, &v, 1, &bad), TL_STATUS_INVALID_ARGUMENT);
        v = views[0];
        v.data = NULL;
        CHECK_STATUS(tl_params_wrap(ctx, &v, 1, &bad), TL_STATUS_NULL_ARGUMENT);
        v = views[0];
        v.name = NULL;
        CHECK_STATUS(tl_params_wrap(ctx, &v, 1, &bad), TL_STATUS_NULL_ARGUMENT);
        v = views[0];
        v.shape = NULL;
        CHECK_STATUS(tl_params_wrap(ctx, &v, 1, &bad), TL_STATUS_NULL_ARGUMENT);
        tl_tensor twice[2] = {views[0], views[0]};
        twice[1].name = "conv2.weight";
        CHECK_STATUS(tl_params_wrap(ctx, twice, 2, &bad), TL_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(tl_last_error_message(), "overlap") != NULL);
        CHECK_STATUS(tl_params_wrap(ctx, NULL, 2, &bad), TL_STATUS_NULL_ARGUMENT);
        CHECK_STATUS(tl_params_wrap(ctx, views, 4, NULL), TL_STATUS_NULL_ARGUMENT);
        CHECK_STATUS(tl_params_wrap(NULL, views, 4, &bad), TL_STATUS_NULL_ARGUMENT);
        /* Zero tensors is a valid, empty set. */
        CHECK_OK(tl_params_wrap(ctx, NULL, 0, &bad));
        CHECK(tl_params_module_count(bad) == 0);
        tl_params_destroy(bad);
    }

    /* Grouping options. */
    CHECK_OK(tl_params_set_grouping(a, TL_MODULE_GROUPING_DEPTH, 2, NULL, 0, TL_UNMATCHED_OWN_GROUP));
    CHECK(tl_params_module_count(a) == 3);
    CHECK(tl_params_module_name(a, 1, buf, sizeof buf) && strcmp(buf, "layer1.0") == 0);
    CHECK_OK(tl_params_set_grouping(a, TL_MODULE_GROUPING_TENSOR, 0, NULL, 0, TL_UNMATCHED_OWN_GROUP));
    CHECK(tl_params_module_count(a) == 4);
    {
        double d4[4];
        CHECK_OK(tl_params_distance(ctx, a, b, d4, &total));
        CHECK_CLOSE(total, sqrt(sum), 1e-12);
    }
    const char *prefixes[2] = {"layer1", "layer1.0.bn1"};
    CHECK_OK(tl_params_set_grouping(a, TL_MODULE_GROUPING_PREFIXES, 0, prefixes, 2, TL_UNMATCHED_OWN_GROUP));
    CHECK(tl_params_module_count(a) == 4); /* conv1.weight, layer1, layer1.0.bn1, fc.bias */
    CHECK(tl_params_module_name(a, 2, buf, sizeof buf) && strcmp(buf, "layer1.0.bn1") == 0);
    CHECK_STATUS(tl_params_set_grouping(a, TL_MODULE_GROUPING_PREFIXES, 0, prefixes, 2, TL_UNMATCHED_ERROR), TL_STATUS_NOT_FOUND);
    CHECK(strstr(tl_last_error_message(), "conv1.weight") != NULL);
    CHECK(tl_params_module_count(a) == 4); /* unchanged */
    CHECK_STATUS(tl_params_set_grouping(a, TL_MODULE_GROUPING_DEPTH, 0, NULL, 0, TL_UNMATCHED_OWN_GROUP), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_set_grouping(a, (tl_module_grouping)9, 1, NULL, 0, TL_UNMATCHED_OWN_GROUP), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_set_grouping(a, TL_MODULE_GROUPING_PREFIXES, 0, prefixes, 2, (tl_unmatched)5), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_set_grouping(a, TL_MODULE_GROUPING_PREFIXES, 0, NULL, 2, TL_UNMATCHED_OWN_GROUP), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_set_grouping(a, TL_MODULE_GROUPING_PREFIXES, 0, prefixes, 0, TL_UNMATCHED_OWN_GROUP), TL_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(tl_params_set_grouping(NULL, TL_MODULE_GROUPING_FIRST, 0, NULL, 0, TL_UNMATCHED_OWN_GROUP), TL_STATUS_NULL_ARGUMENT);
    CHECK_OK(tl_params_set_grouping(a, TL_MODULE_GROUPING_FIRST, 0, NULL, 0, TL_UNMATCHED_OWN_GROUP));
    CHECK(tl_params_module_count(a) == 3);

    /* Mismatched sets, degenerate and NULL inputs. */
    CHECK_STATUS(tl_params_distance(ctx, a, nofc, d, &total), TL_STATUS_SHAPE_MISMATCH);
    CHECK(strstr(tl_last_error_message(), "fc.bias") != NULL);
    CHECK_STATUS(tl_params_distance(ctx, a, b, NULL, &total), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_distance(ctx, NULL, b, d, &total), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_distance(NULL, a, b, d, &total), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_norms(ctx, NULL, norms, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_norms(ctx, a, NULL, NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_compare(ctx, a, b, NULL, &gt), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_compare(ctx, a, nofc, g, &gt), TL_STATUS_SHAPE_MISMATCH);
    {
        model zero = ma;
        memset(zero.fc, 0, sizeof zero.fc);
        write_model(path("zero.safetensors"), &zero, 0);
        tl_params *z = NULL;
        CHECK_OK(tl_params_load(ctx, path("zero.safetensors"), &z));
        CHECK_STATUS(tl_params_compare(ctx, z, b, g, &gt), TL_STATUS_DEGENERATE_INPUT);
        CHECK(strstr(tl_last_error_message(), "fc") != NULL);
        tl_params_destroy(z);
    }
    {
        tl_params *c = (tl_params *)&ma;
        CHECK_STATUS(tl_params_clone(NULL, &c), TL_STATUS_NULL_ARGUMENT);
        CHECK(c == NULL);
    }
    CHECK_STATUS(tl_params_clone(a, NULL), TL_STATUS_NULL_ARGUMENT);

    /* Files: missing, a folder, empty, truncated, garbage header, save errors. */
    tl_params *f = NULL;
    CHECK_STATUS(tl_params_load(ctx, path("missing.safetensors"), &f), TL_STATUS_IO);
    CHECK(f == NULL && strstr(tl_last_error_message(), "missing.safetensors") != NULL);
    write_bytes(path("empty.safetensors"), "", 0);
    CHECK_STATUS(tl_params_load(ctx, path("empty.safetensors"), &f), TL_STATUS_FORMAT);
    {
        unsigned char trunc[64];
        FILE *fa = fopen(path("a.safetensors"), "rb");
        CHECK(fa != NULL && fread(trunc, 1, sizeof trunc, fa) == sizeof trunc);
        fclose(fa);
        write_bytes(path("trunc.safetensors"), trunc, sizeof trunc);
        CHECK_STATUS(tl_params_load(ctx, path("trunc.safetensors"), &f), TL_STATUS_FORMAT);
        CHECK(strstr(tl_last_error_message(), "truncated") != NULL);
        const char junk[] = "\x05\0\0\0\0\0\0\0{oops";
        write_bytes(path("junk.safetensors"), junk, sizeof junk - 1);
        CHECK_STATUS(tl_params_load(ctx, path("junk.safetensors"), &f), TL_STATUS_FORMAT);
    }
    CHECK_STATUS(tl_params_load(ctx, NULL, &f), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_load(NULL, path("a.safetensors"), &f), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_load(ctx, path("a.safetensors"), NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_save(a, path("no/such/dir/x.safetensors")), TL_STATUS_IO);
    CHECK_STATUS(tl_params_save(NULL, path("x.safetensors")), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_save(a, NULL), TL_STATUS_NULL_ARGUMENT);

    tl_params_destroy(out);
    tl_params_destroy(nofc);
    tl_params_destroy(b);
    tl_params_destroy(a);
    tl_params_destroy(NULL);
    tl_context_destroy(ctx);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    printf("params: ok\n");
    return 0;
}
