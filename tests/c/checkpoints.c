/* Checkpoints from C: tl_params_load_checkpoint reads a file, a folder holding
 * model.safetensors and a sharded checkpoint (by its folder and by its index) to the same
 * tensors, and refuses a broken index, naming what is wrong. */
#define _POSIX_C_SOURCE 200809L
#include "transferlens.h"
#include "check.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[512];
static const char *path(const char *name) {
    static char buf[8][600];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

typedef struct {
    const char *name;
    const float *data;
    int numel;
} tensor;

/* A safetensors file of F32 vectors, in the given order. */
static void write_tensors(const char *p, const tensor *ts, int n) {
    char header[1024];
    int len = snprintf(header, sizeof header, "{");
    int offset = 0, i;
    for (i = 0; i < n; i++) {
        int bytes = ts[i].numel * (int)sizeof(float);
        len += snprintf(header + len, sizeof header - (size_t)len,
                        "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%d,%d]}",
                        i ? "," : "", ts[i].name, ts[i].numel, offset, offset + bytes);
        offset += bytes;
    }
    len += snprintf(header + len, sizeof header - (size_t)len, "}");
    while (len % 8) header[len++] = ' ';
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    unsigned char le[8];
    for (i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)len >> (8 * i));
    CHECK(fwrite(le, 1, 8, f) == 8);
    CHECK(fwrite(header, 1, (size_t)len, f) == (size_t)len);
    for (i = 0; i < n; i++) CHECK(fwrite(ts[i].data, sizeof(float), (size_t)ts[i].numel, f) == (size_t)ts[i].numel);
    CHECK(fclose(f) == 0);
}

static void write_text(const char *p, const char *text) {
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
}

/* The set holds exactly the three tensors, with these values. */
static void check_set(const tl_params *p, const tensor *ts) {
    CHECK(tl_params_tensor_count(p) == 3);
    int i;
    for (i = 0; i < 3; i++) {
        tl_dtype dtype;
        const void *data = NULL;
        uint64_t numel = 0;
        CHECK_OK(tl_params_tensor_data(p, ts[i].name, &dtype, &data, &numel));
        CHECK(dtype == TL_DTYPE_F32 && numel == (uint64_t)ts[i].numel);
        CHECK(memcmp(data, ts[i].data, sizeof(float) * (size_t)numel) == 0);
    }
}

static const char *INDEX =
    "{\"metadata\":{\"total_size\":60},\"weight_map\":{\"encoder.weight\":\"model-00001-of-00002.safetensors\","
    "\"encoder.bias\":\"model-00001-of-00002.safetensors\",\"head.weight\":\"model-00002-of-00002.safetensors\"}}";

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tl-c-checkpoints-%ld", tmp ? tmp : "/tmp", (long)getpid());
    CHECK(mkdir(dir, 0700) == 0);
    float enc_w[7], enc_b[3], head_w[5];
    int i;
    for (i = 0; i < 7; i++) enc_w[i] = (float)i / 4.0f - 1.0f;
    for (i = 0; i < 3; i++) enc_b[i] = (float)(i + 1);
    for (i = 0; i < 5; i++) head_w[i] = -0.5f * (float)i;
    const tensor all[3] = {{"encoder.weight", enc_w, 7}, {"encoder.bias", enc_b, 3}, {"head.weight", head_w, 5}};
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));

    /* One file, then the same file as a folder's model.safetensors. */
    write_tensors(path("single.safetensors"), all, 3);
    tl_params *single = NULL, *folder = NULL;
    CHECK_OK(tl_params_load_checkpoint(ctx, path("single.safetensors"), &single));
    check_set(single, all);
    CHECK(mkdir(path("folder"), 0700) == 0);
    write_tensors(path("folder/model.safetensors"), all, 3);
    CHECK_OK(tl_params_load_checkpoint(ctx, path("folder"), &folder));
    check_set(folder, all);

    /* Two shards and their index: by the folder and by the index file, the same tensors, at
     * distance 0 from the single file in every module. */
    CHECK(mkdir(path("sharded"), 0700) == 0);
    write_tensors(path("sharded/model-00001-of-00002.safetensors"), all, 2);
    write_tensors(path("sharded/model-00002-of-00002.safetensors"), all + 2, 1);
    write_text(path("sharded/model.safetensors.index.json"), INDEX);
    tl_params *by_folder = NULL, *by_index = NULL;
    CHECK_OK(tl_params_load_checkpoint(ctx, path("sharded"), &by_folder));
    CHECK_OK(tl_params_load_checkpoint(ctx, path("sharded/model.safetensors.index.json"), &by_index));
    check_set(by_folder, all);
    check_set(by_index, all);
    double per_module[2] = {-1.0, -1.0}, total = -1.0;
    CHECK(tl_params_module_count(by_folder) == 2);
    CHECK_OK(tl_params_distance(ctx, single, by_folder, per_module, &total));
    CHECK(per_module[0] == 0.0 && per_module[1] == 0.0 && total == 0.0);

    /* Errors: each names what is wrong, and *out is NULL afterwards. */
    tl_params *none = (tl_params *)dir; /* any non-NULL value: the call must reset it */
    CHECK_STATUS(tl_params_load_checkpoint(ctx, NULL, &none), TL_STATUS_NULL_ARGUMENT);
    CHECK(none == NULL);
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("single.safetensors"), NULL), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("missing"), &none), TL_STATUS_IO);
    CHECK(strstr(tl_last_error_message(), "missing") != NULL);
    CHECK(mkdir(path("empty"), 0700) == 0);
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("empty"), &none), TL_STATUS_IO);
    CHECK(strstr(tl_last_error_message(), "model.safetensors") != NULL);
    /* The index puts head.weight in the first shard, which does not hold it. */
    write_text(path("sharded/model.safetensors.index.json"),
               "{\"weight_map\":{\"encoder.weight\":\"model-00001-of-00002.safetensors\","
               "\"encoder.bias\":\"model-00001-of-00002.safetensors\",\"head.weight\":\"model-00001-of-00002.safetensors\"}}");
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("sharded"), &none), TL_STATUS_FORMAT);
    CHECK(strstr(tl_last_error_message(), "head.weight") != NULL);
    /* A shard outside the index's folder. */
    write_text(path("sharded/model.safetensors.index.json"),
               "{\"weight_map\":{\"encoder.weight\":\"../single.safetensors\"}}");
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("sharded"), &none), TL_STATUS_FORMAT);
    CHECK(strstr(tl_last_error_message(), "../single.safetensors") != NULL);
    /* Not an index at all. */
    write_text(path("sharded/model.safetensors.index.json"), "[1, 2]");
    CHECK_STATUS(tl_params_load_checkpoint(ctx, path("sharded"), &none), TL_STATUS_FORMAT);
    CHECK(strstr(tl_last_error_message(), "weight_map") != NULL);
    CHECK(none == NULL);

    tl_params_destroy(single);
    tl_params_destroy(folder);
    tl_params_destroy(by_folder);
    tl_params_destroy(by_index);
    tl_context_destroy(ctx);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    printf("checkpoints: a file, a folder, a sharded checkpoint by folder and index; broken indexes\n");
    return 0;
}
