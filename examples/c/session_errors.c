/* Every error code of a session library's C API, one case per line ("case code message"),
 * and separate sessions on separate threads at once (case `threads`: 0 when two threads, each
 * with its own session, generate what one session generates alone):
 *
 *   ./session_errors GOOD.safetensors MISSING.safetensors WRONG_SHAPE.safetensors OTHER_STATE
 *
 * GOOD holds the model's weights, MISSING lacks one, WRONG_SHAPE has one of another shape,
 * OTHER_STATE is a session state saved by another program. tests/aot.rs checks the codes;
 * scripts/sanitize.sh runs it under AddressSanitizer. */
#ifndef TTTC_MODEL_HEADER
#define TTTC_MODEL_HEADER "ttt_lm.h"
#endif
#include TTTC_MODEL_HEADER

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* One line per case: the message's line breaks become spaces. */
static void report(const char* name, int code) {
    printf("%s %d ", name, code);
    for (const char* c = tttc_last_error(); *c; c++) putchar(*c == '\n' ? ' ' : *c);
    putchar('\n');
}

/* Feeds `n` tokens of id `id` with input length `in_len` (negative: the right one). */
static int feed(tttc_session* s, int64_t n, tttc_real id, int64_t in_len) {
    tttc_real* ids = malloc(sizeof(tttc_real) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < (n > 0 ? n : 1); i++) ids[i] = id;
    tttc_real* out[TTTC_N_OUTPUTS];
    int64_t lens[TTTC_N_OUTPUTS];
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) {
        lens[i] = (n > 0 ? n : 1) * tttc_output_per_token[i];
        out[i] = malloc(sizeof(tttc_real) * (size_t)lens[i]);
    }
    const tttc_real* in[1] = {ids};
    int64_t in_lens[1] = {in_len < 0 ? n : in_len};
    int code = tttc_session_feed(s, n, in, in_lens, out, lens);
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) free(out[i]);
    free(ids);
    return code;
}

/* Greedy generation of 8 tokens after a prompt of 5, on a session of its own. */
struct job { const char* weights; long ids[8]; int code; };

static void* generate(void* p) {
    struct job* j = p;
    j->code = TTTC_ERR_INTERNAL;
    tttc_session* s = tttc_session_new(j->weights, &j->code);
    if (!s) return 0;
    tttc_real ids[5] = {3, 1, 4, 1, 5};
    int64_t n = 5;
    for (int t = 0; t < 8; t++) {
        tttc_real* out[TTTC_N_OUTPUTS];
        int64_t lens[TTTC_N_OUTPUTS];
        for (int i = 0; i < TTTC_N_OUTPUTS; i++) {
            lens[i] = n * tttc_output_per_token[i];
            out[i] = malloc(sizeof(tttc_real) * (size_t)lens[i]);
        }
        const tttc_real* in[1] = {ids};
        int64_t in_lens[1] = {n};
        j->code = tttc_session_feed(s, n, in, in_lens, out, lens);
        /* The last output's last row: any per-token output decides the same for both. */
        int o = TTTC_N_OUTPUTS - 1;
        const tttc_real* row = out[o] + (n - 1) * tttc_output_per_token[o];
        long best = 0;
        for (int64_t v = 1; v < tttc_output_per_token[o]; v++)
            if (row[v] > row[best]) best = (long)v;
        for (int i = 0; i < TTTC_N_OUTPUTS; i++) free(out[i]);
        if (j->code) break;
        j->ids[t] = best;
        ids[0] = (tttc_real)(best % 90);
        n = 1;
    }
    tttc_session_free(s);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s GOOD MISSING WRONG_SHAPE OTHER_STATE\n", argv[0]);
        return 2;
    }
    int code = -1;
    tttc_session* s = tttc_session_new("/nonexistent/weights.safetensors", &code);
    report("new_no_file", s ? 0 : code);
    s = tttc_session_new(NULL, &code);
    report("new_null_path", s ? 0 : code);
    s = tttc_session_new(argv[2], &code);
    report("new_missing_tensor", s ? 0 : code);
    s = tttc_session_new(argv[3], &code);
    report("new_wrong_shape", s ? 0 : code);
    {
        tttc_real one = 0;
        const tttc_real* w[TTTC_N_WEIGHTS];
        int64_t lens[TTTC_N_WEIGHTS];
        for (int i = 0; i < TTTC_N_WEIGHTS; i++) { w[i] = &one; lens[i] = 1; }
        s = tttc_session_new_from_buffers(w, lens, &code);
        report("new_buffers_wrong_length", s ? 0 : code);
    }
    report("feed_null_session", feed(NULL, 1, 0, -1));

    s = tttc_session_new(argv[1], &code);
    report("new_good", s ? 0 : code);
    if (!s) return 1;
    report("set_batch_null_session", tttc_session_set_batch(NULL, 1));
    report("set_batch_not_compiled", tttc_session_set_batch(s, tttc_batch_sizes[TTTC_N_BATCH_SIZES - 1] + 1));
    report("set_batch_compiled", tttc_session_set_batch(s, tttc_batch_sizes[0]));
    report("feed_zero_tokens", feed(s, 0, 0, -1));
    report("feed_wrong_length", feed(s, 3, 0, 2));
    report("feed_id_out_of_range", feed(s, 2, 1.0e6f, -1));
    report("feed_good", feed(s, 3, 1, -1));
    report("set_batch_after_first_token", tttc_session_set_batch(s, tttc_batch_sizes[0]));
    report("feed_id_out_of_range_later", feed(s, 2, 97, -1));
    report("position", (int)tttc_session_position(s));
    report("load_other_program", tttc_session_load(s, argv[4]));
    report("load_no_file", tttc_session_load(s, "/nonexistent/state.safetensors"));
    report("save_unwritable", tttc_session_save(s, "/nonexistent/dir/state.safetensors"));
    report("feed_after_errors", feed(s, 1, 2, -1));
    tttc_session_free(s);
    tttc_session_free(NULL);

    struct job alone = {argv[1], {0}, 0}, a = {argv[1], {0}, 0}, b = {argv[1], {0}, 0};
    generate(&alone);
    pthread_t ta, tb;
    int started = pthread_create(&ta, 0, generate, &a) == 0;
    started &= pthread_create(&tb, 0, generate, &b) == 0;
    if (started) {
        pthread_join(ta, 0);
        pthread_join(tb, 0);
    }
    int same = started && alone.code == 0 && a.code == 0 && b.code == 0;
    for (int t = 0; t < 8; t++) same &= a.ids[t] == alone.ids[t] && b.ids[t] == alone.ids[t];
    printf("threads %d\n", same ? 0 : 1);
    return 0;
}
