/* Exercises the C entry point of a TTT-Linear library compiled ahead of time by tttc with every
 * kind of bad call, for scripts/sanitize.sh, which builds it (and the library's C entry shim)
 * with -fsanitize=address,undefined:
 *
 *   tttc compile examples/ttt_linear.ttt --target x86_64 \
 *       --inputs examples/data/ttt_linear_sample.safetensors -o build/libttt_linear.so
 *   cc -Ibuild examples/c/abi_checks.c -Lbuild -lttt_linear -lpthread -o build/abi_checks
 *
 * - a valid call succeeds, writes finite outputs and clears the error message; a second call
 *   and two concurrent calls give the same bits;
 * - a wrong extent on any axis of any argument is refused (rc 2) with a message naming the
 *   tensor, before any output is written;
 * - the message is truncated to error_len (every length from 0 to 80, in a buffer of exactly
 *   that size) and always NUL-terminated; a NULL error buffer is allowed;
 * - a NULL data or shape pointer for any argument is refused (rc 2) with a message.
 *
 * Prints "abi checks: ok" and exits 0, or names the first failed expectation and exits 1.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ttt_linear.h"

/* The shapes the sample library is compiled for (see ttt_linear.h). */
enum { B = 1, H = 2, L = 64, F = 16, K = 16 };
enum { INPUTS = 9, OUTPUTS = 3, ARGS = INPUTS + OUTPUTS, MAX_RANK = 4 };

static const char* NAMES[ARGS] = {"XQ", "XK", "XV", "token_eta", "ttt_lr_eta", "W1", "b1",
                                  "ln_weight", "ln_bias", "Z", "W1_last", "b1_last"};
static const int RANKS[ARGS] = {4, 4, 4, 1, 3, 3, 3, 2, 2, 4, 4, 4};
static const int64_t SHAPES[ARGS][MAX_RANK] = {
    {B, H, L, F}, {B, H, L, F}, {B, H, L, F}, {K}, {B, H, L}, {H, F, F},
    {H, 1, F}, {H, F}, {H, F}, {B, H, L, F}, {B, H, F, F}, {B, H, 1, F}};

/* One call's arguments: a data pointer and a shape pointer per tensor. */
struct call {
    float* data[ARGS];
    const int64_t* shape[ARGS];
};

static size_t count(int i) {
    size_t n = 1;
    for (int a = 0; a < RANKS[i]; a++) n *= (size_t)SHAPES[i][a];
    return n;
}

static int run(const struct call* c, char* error, size_t error_len) {
    float* const* d = c->data;
    const int64_t* const* s = c->shape;
    return ttt_linear_run(d[0], s[0], d[1], s[1], d[2], s[2], d[3], s[3], d[4], s[4], d[5], s[5],
                          d[6], s[6], d[7], s[7], d[8], s[8], d[9], s[9], d[10], s[10], d[11],
                          s[11], error, error_len);
}

static int failures = 0;
#define EXPECT(cond, ...)                                     \
    do {                                                      \
        if (!(cond)) {                                        \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                     \
            fprintf(stderr, "\n");                            \
            failures++;                                       \
        }                                                     \
    } while (0)

/* A fresh valid call with deterministic inputs in [-0.5, 0.5) and NaN-filled outputs. */
static struct call valid_call(void) {
    struct call c;
    unsigned long long x = 12345;
    for (int i = 0; i < ARGS; i++) {
        size_t n = count(i);
        c.data[i] = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            c.data[i][j] = i < INPUTS ? (float)((x >> 40) / (double)(1ULL << 24) - 0.5) : NAN;
        }
        c.shape[i] = SHAPES[i];
    }
    /* Positive learning rates, as a trained layer has. */
    for (size_t j = 0; j < count(3); j++) c.data[3][j] = 1.0f / (float)(j + 1);
    for (size_t j = 0; j < count(4); j++) c.data[4][j] = 0.01f;
    return c;
}

static void free_call(struct call* c) {
    for (int i = 0; i < ARGS; i++) free(c->data[i]);
}

/* Whether every output of `c` still holds the NaN it was filled with. */
static int outputs_untouched(const struct call* c) {
    for (int i = INPUTS; i < ARGS; i++)
        for (size_t j = 0; j < count(i); j++)
            if (!isnan(c->data[i][j])) return 0;
    return 1;
}

static void reset_outputs(struct call* c) {
    for (int i = INPUTS; i < ARGS; i++)
        for (size_t j = 0; j < count(i); j++) c->data[i][j] = NAN;
}

static int same_outputs(const struct call* a, const struct call* b) {
    for (int i = INPUTS; i < ARGS; i++)
        if (memcmp(a->data[i], b->data[i], count(i) * sizeof(float)) != 0) return 0;
    return 1;
}

static void* concurrent_run(void* p) {
    char error[128];
    return (void*)(long)run((struct call*)p, error, sizeof error);
}

int main(void) {
    char error[256];

    /* A valid call, twice, and concurrently. */
    struct call good = valid_call();
    strcpy(error, "not cleared");
    int rc = run(&good, error, sizeof error);
    EXPECT(rc == 0, "valid call: rc=%d (%s)", rc, error);
    EXPECT(error[0] == 0, "valid call: error not cleared: %s", error);
    for (int i = INPUTS; i < ARGS; i++)
        for (size_t j = 0; j < count(i); j++)
            EXPECT(isfinite(good.data[i][j]), "valid call: %s[%zu] = %f", NAMES[i], j,
                   good.data[i][j]);
    struct call again = valid_call(), t1 = valid_call(), t2 = valid_call();
    EXPECT(run(&again, error, sizeof error) == 0, "second call: %s", error);
    EXPECT(same_outputs(&good, &again), "a second call gives other bits");
    pthread_t a, b;
    void *ra, *rb;
    pthread_create(&a, NULL, concurrent_run, &t1);
    pthread_create(&b, NULL, concurrent_run, &t2);
    pthread_join(a, &ra);
    pthread_join(b, &rb);
    EXPECT(ra == 0 && rb == 0, "concurrent calls failed");
    EXPECT(same_outputs(&good, &t1) && same_outputs(&good, &t2),
           "concurrent calls give other bits");
    free_call(&again);
    free_call(&t1);
    free_call(&t2);

    /* A wrong extent on every axis of every argument. */
    struct call c = valid_call();
    for (int i = 0; i < ARGS; i++) {
        for (int axis = 0; axis < RANKS[i]; axis++) {
            int64_t wrong[MAX_RANK];
            memcpy(wrong, SHAPES[i], sizeof wrong);
            wrong[axis] += axis % 2 ? 1 : -1;
            c.shape[i] = wrong;
            error[0] = 0;
            rc = run(&c, error, sizeof error);
            EXPECT(rc == 2, "%s axis %d wrong: rc=%d", NAMES[i], axis, rc);
            EXPECT(strncmp(error, NAMES[i], strlen(NAMES[i])) == 0,
                   "%s axis %d wrong: message `%s`", NAMES[i], axis, error);
            EXPECT(outputs_untouched(&c), "%s axis %d wrong: outputs written", NAMES[i], axis);
            c.shape[i] = SHAPES[i];
        }
    }

    /* Truncation: the message fits every buffer, in a heap block of exactly that size. */
    int64_t wrong_xq[MAX_RANK] = {B, H, L / 2, F};
    c.shape[0] = wrong_xq;
    for (size_t len = 0; len <= 80; len++) {
        char* small = len ? malloc(len) : NULL;
        if (small) memset(small, 'x', len);
        rc = run(&c, small, len);
        EXPECT(rc == 2, "error_len %zu: rc=%d", len, rc);
        if (small) {
            EXPECT(memchr(small, 0, len) != NULL, "error_len %zu: not NUL-terminated", len);
            free(small);
        }
    }
    rc = run(&c, NULL, 100);
    EXPECT(rc == 2, "NULL error buffer: rc=%d", rc);
    c.shape[0] = SHAPES[0];

    /* NULL pointers, one argument at a time. */
    for (int i = 0; i < ARGS; i++) {
        const int64_t* shape = c.shape[i];
        c.shape[i] = NULL;
        error[0] = 0;
        rc = run(&c, error, sizeof error);
        EXPECT(rc == 2 && strstr(error, NAMES[i]) != NULL, "NULL %s shape: rc=%d (%s)", NAMES[i],
               rc, error);
        c.shape[i] = shape;
        float* data = c.data[i];
        c.data[i] = NULL;
        error[0] = 0;
        rc = run(&c, error, sizeof error);
        EXPECT(rc == 2 && strstr(error, NAMES[i]) != NULL, "NULL %s data: rc=%d (%s)", NAMES[i],
               rc, error);
        c.data[i] = data;
    }
    EXPECT(outputs_untouched(&c), "a refused call wrote outputs");

    /* After all that, a valid call still works. */
    reset_outputs(&c);
    EXPECT(run(&c, error, sizeof error) == 0, "valid call after bad ones: %s", error);
    EXPECT(same_outputs(&good, &c), "valid call after bad ones gives other bits");
    free_call(&c);
    free_call(&good);

    if (failures) {
        fprintf(stderr, "abi checks: %d failed\n", failures);
        return 1;
    }
    printf("abi checks: ok\n");
    return 0;
}
