/* A host that used the library and then forks (a pre-fork server, Python multiprocessing, a
 * DataLoader worker): the child's next CKA must finish with the parent's value, from its main
 * thread, from a new thread, and in a grandchild. alarm() ends a hung child with SIGALRM, which
 * the parent reports, so this test fails rather than hangs. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "transferlens.h"
#include "check.h"

/* Large enough that the column statistics and the products run on several threads. */
enum { N = 16384, P = 48, Q = 24 };
static float x[N * P], y[N * Q];
static double expected;

/* Serial and parallel products sum in other orders: equal up to f32 rounding. */
static int agrees(double got) { return fabs(got - expected) <= 1e-5; }

static double cka_once(void) {
    tl_context *ctx = NULL;
    CHECK_OK(tl_context_create(TL_BACKEND_CPU, 0, &ctx));
    tl_matrix mx = {x, TL_DTYPE_F32, N, P, 0, -1}, my = {y, TL_DTYPE_F32, N, Q, 0, -1};
    double got = -1;
    CHECK_OK(tl_cka_linear(ctx, &mx, &my, TL_CKA_DEBIASED, &got));
    tl_context_destroy(ctx);
    return got;
}

static void *thread_body(void *result) {
    *(double *)result = cka_once();
    return NULL;
}

/* Waits for `pid` and fails unless it exited with 0. */
static void expect_clean_exit(pid_t pid, const char *who) {
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "fork: the %s was killed by signal %d (%s)\n", who, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? "it hung" : "it crashed");
        exit(1);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* What a forked process does: CKA on its main thread, then on a thread of its own. */
static int child_work(void) {
    alarm(60);
    if (!agrees(cka_once())) return 2;
    pthread_t t;
    double from_thread = -1;
    if (pthread_create(&t, NULL, thread_body, &from_thread) != 0) return 3;
    if (pthread_join(t, NULL) != 0) return 4;
    return agrees(from_thread) ? 0 : 5;
}

int main(void) {
    uint64_t state = 7;
    for (size_t i = 0; i < (size_t)N * P; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)(state >> 40) / 16777216.0f - 0.5f;
    }
    for (size_t r = 0; r < N; r++)
        for (size_t j = 0; j < Q; j++) y[r * Q + j] = x[r * P + j] - 0.5f * x[r * P + j + 1] + 0.2f * x[r * P + (j * 7) % P];
    /* The parent's pool runs before the fork. */
    expected = cka_once();
    CHECK(expected > 0 && expected < 1);

    if (getenv("TL_UNDER_VALGRIND") != NULL) {
        /* A forked child lacks its parent's threads, and their stacks held the only references to
         * the pool's memory: valgrind reports that as definite leaks in every child. The forks are
         * checked by the native run. */
        printf("fork: the forks run natively only (under valgrind every child reports the parent's threads' memory as lost)\n");
        return 0;
    }
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        int rc = child_work();
        if (rc == 0) {
            /* A child of the child: forked after the child computed. */
            pid_t grandchild = fork();
            if (grandchild < 0) _exit(6);
            if (grandchild == 0) _exit(child_work());
            int status = 0;
            if (waitpid(grandchild, &status, 0) != grandchild) _exit(7);
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 8;
        }
        _exit(rc);
    }
    expect_clean_exit(child, "forked child (or its own child)");
    /* The parent still computes on its pool. */
    CHECK(agrees(cka_once()));
    printf("fork: ok (child, a thread of the child and a grandchild agree: CKA = %.15f)\n", expected);
    return 0;
}
