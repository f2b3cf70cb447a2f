/* The C example of docs/c-api.md (tests/c_api.rs checks that the page quotes this file). */
#include <stdio.h>
#include <stdlib.h>
#include "transferlens.h"

#define FAIL(call)                                                        \
    do {                                                                  \
        if ((call) != TL_STATUS_OK) {                                     \
            fprintf(stderr, "transferlens: %s\n", tl_last_error_message()); \
            return 1;                                                     \
        }                                                                 \
    } while (0)

int main(void) {
    const char *spec =
        "{\"input\": [1, 4, 4], \"classes\": 2, \"layers\": ["
        "{\"type\": \"conv\", \"name\": \"conv1\", \"out\": 4, \"kernel\": 3, \"padding\": 1},"
        "{\"type\": \"groupnorm\", \"name\": \"gn1\", \"groups\": 2}, {\"type\": \"relu\"},"
        "{\"type\": \"global_avgpool\"}, {\"type\": \"dense\", \"name\": \"fc\", \"out\": 2}]}";
    /* 16 images of 1 x 4 x 4 (NCHW): class 1 is bright in the top half, class 0 in the bottom. */
    float x[16 * 16];
    uint32_t y[16];
    for (int r = 0; r < 16; r++) {
        y[r] = (uint32_t)(r % 2);
        for (int p = 0; p < 16; p++) x[r * 16 + p] = ((p < 8) == (y[r] == 1)) ? 1.0f : -1.0f;
    }

    tl_cnn *cnn = NULL;
    FAIL(tl_cnn_create(spec, &cnn));
    tl_params *weights = NULL;
    FAIL(tl_cnn_init(cnn, 42, &weights));

    tl_train_options opts = tl_train_options_default();
    opts.epochs = 5;
    opts.batch = 4;
    double losses[5];
    FAIL(tl_cnn_train(cnn, weights, x, y, 16, &opts, losses, 5));
    printf("training loss: %.3f -> %.3f\n", losses[0], losses[4]);

    tl_evaluator *ev = NULL;
    tl_metrics m;
    FAIL(tl_evaluator_cnn(cnn, x, y, 16, &ev));
    FAIL(tl_evaluate(ev, weights, &m));
    printf("loss %.3f, error %.3f\n", m.loss, m.error);

    uint64_t width = 0;
    FAIL(tl_cnn_module_width(cnn, 0, &width));
    float *acts = malloc(16 * width * sizeof *acts);
    FAIL(tl_cnn_activations(cnn, weights, x, 16, 0, acts, 16 * width));
    printf("module %s: %llu features per image\n", tl_cnn_module_name(cnn, 0), (unsigned long long)width);

    free(acts);
    tl_evaluator_destroy(ev);
    tl_params_destroy(weights);
    tl_cnn_destroy(cnn);
    return m.error < 0.5 ? 0 : 1;
}
