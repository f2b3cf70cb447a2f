/* Files from C: a loaded set is a snapshot of its file (rewriting or truncating the file after
 * tl_params_load changes nothing), tl_params_load_mapped reads the same values, paths that are
 * not regular files are refused at once, a non-finite interpolation is an error, and
 * tl_params_save keeps a symlink and the mode of the file it replaces. */
#define _POSIX_C_SOURCE 200809L
#include "transferlens.h"
#include "check.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define N 64

static char dir[512];
static const char *path(const char *name) {
    static char buf[8][600];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* One F32 tensor "w.weight" of N values; returns the header length. */
static size_t write_weights(const char *p, const float *w) {
    char header[128];
    int n = snprintf(header, sizeof header,
                     "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", N,
                     (int)(N * sizeof(float)));
    while ((8 + n) % 8) header[n++] = ' ';
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    unsigned char le[8];
    int i;
    for (i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)n >> (8 * i));
    CHECK(fwrite(le, 1, 8, f) == 8);
    CHECK(fwrite(header, 1, (size_t)n, f) == (size_t)n);
    CHECK(fwrite(w, sizeof(float), N, f) == N);
    CHECK(fclose(f) == 0);
    return (size_t)n;
}

/* The set's "w.weight" equals w, element for element. */
static void check_weights(const tl_params *p, const float *w) {
    tl_dtype dtype;
    const void *data = NULL;
    uint64_t numel = 0;
    CHECK_OK(tl_params_tensor_data(p, "w.weight", &dtype, &data, &numel));
    CHECK(dtype == TL_DTYPE_F32 && numel == N);
    CHECK(memcmp(data, w, sizeof(float) * N) == 0);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tl-c-files-%ld", tmp ? tmp : "/tmp", (long)getpid());
    CHECK(mkdir(dir, 0700) == 0);
    float w[N], other[N];
    int i;
    for (i = 0; i < N; i++) {
        w[i] = (float)(i + 1) / 8.0f;
        other[i] = -3.0f;
    }
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));

    /* A loaded set is a snapshot: rewrite the data in place, then truncate the file. */
    size_t header = write_weights(path("a.safetensors"), w);
    tl_params *a = NULL;
    CHECK_OK(tl_params_load(ctx, path("a.safetensors"), &a));
    check_weights(a, w);
    {
        FILE *f = fopen(path("a.safetensors"), "r+b");
        CHECK(f != NULL);
        CHECK(fseek(f, (long)(8 + header), SEEK_SET) == 0);
        CHECK(fwrite(other, sizeof(float), N, f) == N);
        CHECK(fclose(f) == 0);
    }
    check_weights(a, w);
    CHECK(truncate(path("a.safetensors"), 0) == 0);
    check_weights(a, w); /* a mapped set would stop the process with SIGBUS here */
    double norm = 0.0, want = 0.0;
    for (i = 0; i < N; i++) want += (double)w[i] * w[i];
    CHECK_OK(tl_params_norms(ctx, a, &norm, NULL));
    CHECK_CLOSE(norm, sqrt(want), 1e-12);

    /* The mapped load reads the same values while the file is left alone. */
    write_weights(path("a.safetensors"), w);
    tl_params *mapped = NULL;
    CHECK_OK(tl_params_load_mapped(ctx, path("a.safetensors"), &mapped));
    check_weights(mapped, w);
    tl_params_destroy(mapped);
    CHECK_STATUS(tl_params_load_mapped(ctx, NULL, &mapped), TL_STATUS_NULL_ARGUMENT);
    CHECK_STATUS(tl_params_load_mapped(ctx, path("missing.safetensors"), &mapped), TL_STATUS_IO);
    CHECK(mapped == NULL);

    /* Not regular files: a directory, a FIFO (opening it would wait for a writer), a device. */
    tl_params *none = NULL;
    CHECK(mkfifo(path("pipe.safetensors"), 0600) == 0);
    CHECK_STATUS(tl_params_load(ctx, dir, &none), TL_STATUS_IO);
    CHECK(strstr(tl_last_error_message(), "directory") != NULL);
    CHECK_STATUS(tl_params_load(ctx, path("pipe.safetensors"), &none), TL_STATUS_IO);
    CHECK(strstr(tl_last_error_message(), "FIFO") != NULL);
    CHECK_STATUS(tl_params_load(ctx, "/dev/zero", &none), TL_STATUS_IO);
    CHECK(strstr(tl_last_error_message(), "regular file") != NULL);
    CHECK_STATUS(tl_params_load_mapped(ctx, path("pipe.safetensors"), &none), TL_STATUS_IO);
    CHECK(none == NULL);

    /* A non-finite result is an error: lambda 1e308 overflows every weight (before: OK). */
    tl_params *out = NULL;
    CHECK_OK(tl_params_clone(a, &out));
    CHECK_STATUS(tl_params_interpolate(ctx, a, a, 1e308, out), TL_STATUS_NON_FINITE);
    CHECK(strstr(tl_last_error_message(), "w.weight") != NULL);
    CHECK_OK(tl_params_interpolate(ctx, a, a, 0.5, out));
    check_weights(out, w);
    tl_params_destroy(out);

    /* Saving through a symlink replaces the file it points to, keeping the link and the mode
     * (before: the link became a regular file of mode 0644). */
    write_weights(path("kept.safetensors"), other);
    CHECK(chmod(path("kept.safetensors"), 0600) == 0);
    CHECK(symlink("kept.safetensors", path("link.safetensors")) == 0);
    CHECK_OK(tl_params_save(a, path("link.safetensors")));
    {
        struct stat st;
        CHECK(lstat(path("link.safetensors"), &st) == 0 && S_ISLNK(st.st_mode));
        CHECK(stat(path("kept.safetensors"), &st) == 0 && (st.st_mode & 0777) == 0600);
        tl_params *back = NULL;
        CHECK_OK(tl_params_load(ctx, path("kept.safetensors"), &back));
        check_weights(back, w);
        tl_params_destroy(back);
    }

    tl_params_destroy(a);
    tl_context_destroy(ctx);
    {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    printf("files: snapshot loads, mapped load, non-regular paths, non-finite results, symlinks\n");
    return 0;
}
