/* bench/aot.sh's timing of a session library: load (dlopen + tttc_session_new), prefill of a
 * prompt, then greedy decode one token at a time.
 *
 *   cc -O2 -I DIR bench/aot_bench.c -ldl -o aot_bench
 *   ./aot_bench DIR/libttt_lm.so WEIGHTS.safetensors ID,ID,... NEW_TOKENS [BATCH]
 *
 * Prints the generated ids (as `tttc generate --prompt-ids`), then one line of numbers:
 * `load_s prefill_s decode_tokens_per_s median_step_ms` where the decode rate counts the steps
 * after the first, as `tttc generate` reports it. With BATCH (a size the library was compiled
 * for), BATCH copies of the prompt run side by side: the ids printed are the first row's and
 * the rate counts the tokens of every row. */
#ifndef TTTC_MODEL_HEADER
#define TTTC_MODEL_HEADER "ttt_lm.h"
#endif
#include TTTC_MODEL_HEADER

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

typedef tttc_session* (*new_fn)(const char*, int*);
typedef int (*feed_fn)(tttc_session*, int64_t, const tttc_real* const*, const int64_t*, tttc_real* const*, const int64_t*);
typedef const char* (*err_fn)(void);

typedef int (*set_batch_fn)(tttc_session*, int64_t);

static feed_fn feed_f;
static err_fn err_f;
static tttc_real* outs[TTTC_N_OUTPUTS];
static int logits = -1;
static int64_t batch = 1;

/* Feeds n tokens of every row (ids [batch, n]); returns the first row's pick. */
static long feed(tttc_session* s, const tttc_real* ids, int64_t n) {
    int64_t lens[TTTC_N_OUTPUTS];
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) lens[i] = batch * n * tttc_output_per_token[i];
    const tttc_real* in[1] = {ids};
    int64_t in_lens[1] = {batch * n};
    int code = feed_f(s, n, in, in_lens, outs, lens);
    if (code) {
        fprintf(stderr, "feed failed (%d): %s\n", code, err_f());
        exit(1);
    }
    int64_t vocab = tttc_output_per_token[logits];
    const tttc_real* row = outs[logits] + (n - 1) * vocab;
    long best = 0;
    for (int64_t v = 1; v < vocab; v++)
        if (row[v] > row[best]) best = (long)v;
    return best;
}

int main(int argc, char** argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s LIB WEIGHTS ID,ID,... NEW_TOKENS [BATCH]\n", argv[0]);
        return 2;
    }
    if (argc == 6) batch = strtol(argv[5], 0, 10);
    for (int i = 0; i < TTTC_N_OUTPUTS; i++)
        if (strcmp(tttc_output_names[i], "logits") == 0) logits = i;
    tttc_real* prompt = malloc(sizeof(tttc_real) * (strlen(argv[3]) + 1) * (size_t)batch);
    int64_t n = 0;
    for (char* p = argv[3]; *p;) {
        prompt[n++] = (tttc_real)strtol(p, &p, 10);
        if (*p == ',') p++;
    }
    for (int64_t r = 1; r < batch; r++) memcpy(prompt + r * n, prompt, sizeof(tttc_real) * (size_t)n);
    long steps = strtol(argv[4], 0, 10);
    for (int i = 0; i < TTTC_N_OUTPUTS; i++)
        outs[i] = malloc(sizeof(tttc_real) * (size_t)(batch * n * tttc_output_per_token[i]));
    tttc_real* ids = malloc(sizeof(tttc_real) * (size_t)batch);

    double t0 = now();
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    new_fn new_f = (new_fn)dlsym(lib, "tttc_session_new");
    feed_f = (feed_fn)dlsym(lib, "tttc_session_feed");
    err_f = (err_fn)dlsym(lib, "tttc_last_error");
    int code = 0;
    tttc_session* s = new_f(argv[2], &code);
    if (!s) {
        fprintf(stderr, "session_new failed (%d): %s\n", code, err_f());
        return 1;
    }
    if (batch != 1) {
        set_batch_fn set_batch_f = (set_batch_fn)dlsym(lib, "tttc_session_set_batch");
        if ((code = set_batch_f(s, batch))) {
            fprintf(stderr, "set_batch failed (%d): %s\n", code, err_f());
            return 1;
        }
    }
    double load = now() - t0;
    t0 = now();
    long next = feed(s, prompt, n);
    double prefill = now() - t0;
    double* step = malloc(sizeof(double) * (size_t)(steps > 0 ? steps : 1));
    double decode = 0;
    for (long i = 0; i < steps; i++) {
        printf(i ? " %ld" : "%ld", next);
        if (i + 1 == steps) break;
        for (int64_t r = 0; r < batch; r++) ids[r] = (tttc_real)next;
        t0 = now();
        next = feed(s, ids, 1);
        step[i] = now() - t0;
        if (i > 0) decode += step[i];
    }
    printf("\n");
    long timed = steps - 1;
    qsort(step, (size_t)(timed > 0 ? timed : 0), sizeof(double), cmp);
    printf("%.4f %.4f %.2f %.3f\n", load, prefill, timed > 1 ? (double)(batch * (timed - 1)) / decode : 0.0,
           timed > 0 ? 1e3 * step[timed / 2] : 0.0);
    return 0;
}
