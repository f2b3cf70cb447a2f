/* Tiny assertion helpers for the C tests: each failure prints the file, line, expression, status
 * name and the library's message, then exits 1. */
#ifndef TL_TEST_CHECK_H
#define TL_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

#define CHECK_STATUS(call, expected)                                                       \
    do {                                                                                   \
        tl_status got_ = (call);                                                           \
        if (got_ != (expected)) {                                                          \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (message: %s)\n", __FILE__, \
                    __LINE__, #call, tl_status_name(got_), tl_status_name(expected),        \
                    tl_last_error_message());                                              \
            exit(1);                                                                       \
        }                                                                                  \
        if ((expected) != TL_STATUS_OK && tl_last_error_message()[0] == '\0') {            \
            fprintf(stderr, "%s:%d: %s failed without a message\n", __FILE__, __LINE__,     \
                    #call);                                                                \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, TL_STATUS_OK)

#define CHECK_CLOSE(got, want, rel)                                                          \
    do {                                                                                     \
        double g_ = (got), w_ = (want);                                                      \
        if (!(fabs(g_ - w_) <= (rel) * fmax(1.0, fabs(w_)))) {                               \
            fprintf(stderr, "%s:%d: %s = %.17g, expected %.17g\n", __FILE__, __LINE__, #got, \
                    g_, w_);                                                                 \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

#endif
