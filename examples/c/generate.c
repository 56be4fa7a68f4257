/* Greedy generation through a session library (`tttc compile --session`):
 *
 *   tttc compile examples/ttt_lm.ttt --config CONFIG.json --target x86_64 --session \
 *       [--batch 1,4] -o libttt_lm.so
 *   cc -O2 -I. examples/c/generate.c -L. -lttt_lm -Wl,-rpath,. -o generate
 *   ./generate WEIGHTS.safetensors 1,2,3 32 [STATE]
 *   ./generate WEIGHTS.safetensors '1,2,3;7,8,9' 32        (a batch of two prompts)
 *
 * feeds the prompt as one chunk, then each picked token (the most likely; the lowest id on
 * ties, as `tttc generate` picks) as a chunk of one, and prints the generated ids separated by
 * spaces, as `tttc generate --prompt-ids` does. Several prompts of one length, separated by
 * ';', run side by side as one batch (the library must have been compiled for that batch
 * size); each row's ids are printed on a line of their own. With STATE, the session is saved
 * there after the prompt, freed, and a new session loads it and goes on (the same tokens come
 * out). The model's header is ttt_lm.h unless -DTTTC_MODEL_HEADER='"other.h"'. */
#ifndef TTTC_MODEL_HEADER
#define TTTC_MODEL_HEADER "ttt_lm.h"
#endif
#include TTTC_MODEL_HEADER

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char* what, int code) {
    fprintf(stderr, "%s failed (code %d): %s\n", what, code, tttc_last_error());
    return 1;
}

/* Feeds n tokens of each of `batch` rows (ids row-major [batch, n]) and writes the id picked
 * from each row's last token of `logits` to picked[row]. Returns 0, or 1 on error. */
static int feed(tttc_session* s, const tttc_real* ids, int64_t batch, int64_t n, int logits, long* picked) {
    tttc_real* out[TTTC_N_OUTPUTS];
    int64_t out_lens[TTTC_N_OUTPUTS];
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) {
        out_lens[i] = batch * n * tttc_output_per_token[i];
        out[i] = malloc(sizeof(tttc_real) * (size_t)out_lens[i]);
    }
    const tttc_real* in[1] = {ids};
    int64_t in_lens[1] = {batch * n};
    int code = tttc_session_feed(s, n, in, in_lens, out, out_lens);
    if (code == TTTC_OK) {
        int64_t vocab = tttc_output_per_token[logits];
        for (int64_t r = 0; r < batch; r++) {
            const tttc_real* row = out[logits] + (r * n + n - 1) * vocab;
            long best = 0;
            for (int64_t v = 1; v < vocab; v++)
                if (row[v] > row[best]) best = (long)v;
            picked[r] = best;
        }
    } else {
        fail("tttc_session_feed", code);
    }
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) free(out[i]);
    return code != TTTC_OK;
}

/* A new session over the weights file at `path` with `batch` rows (NULL on error). */
static tttc_session* open_session(const char* path, int64_t batch) {
    int code = 0;
    tttc_session* s = tttc_session_new(path, &code);
    if (!s) {
        fail("tttc_session_new", code);
        return NULL;
    }
    if ((code = tttc_session_set_batch(s, batch)) != TTTC_OK) {
        fail("tttc_session_set_batch", code);
        tttc_session_free(s);
        return NULL;
    }
    return s;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors ID,ID,...[;ID,ID,...] MAX_NEW_TOKENS [STATE]\n", argv[0]);
        return 2;
    }
    if (TTTC_N_INPUTS != 1) {
        fprintf(stderr, "the model needs exactly one per-token input (the token ids)\n");
        return 2;
    }
    int logits = -1;
    for (int i = 0; i < TTTC_N_OUTPUTS; i++)
        if (strcmp(tttc_output_names[i], "logits") == 0) logits = i;
    if (logits < 0) {
        fprintf(stderr, "the model has no output `logits`\n");
        return 2;
    }
    /* The prompts: rows separated by ';', each of the same length. */
    tttc_real* prompt = malloc(sizeof(tttc_real) * (strlen(argv[2]) + 1));
    int64_t count = 0, batch = 1, n = -1, in_row = 0;
    for (char* p = argv[2]; *p;) {
        prompt[count++] = (tttc_real)strtol(p, &p, 10);
        in_row++;
        if (*p == ',') p++;
        if (*p == ';' || !*p) {
            if (n >= 0 && in_row != n) {
                fprintf(stderr, "the prompts differ in length (%lld and %lld ids)\n", (long long)n, (long long)in_row);
                return 2;
            }
            n = in_row;
            in_row = 0;
            if (*p == ';') {
                p++;
                batch++;
            }
        }
    }
    long max_new = strtol(argv[3], 0, 10);
    long* next = malloc(sizeof(long) * (size_t)batch);
    long* tokens = malloc(sizeof(long) * (size_t)(batch * (max_new > 0 ? max_new : 1)));
    tttc_real* ids = malloc(sizeof(tttc_real) * (size_t)batch);

    int code = 0;
    tttc_session* s = open_session(argv[1], batch);
    if (!s) return 1;
    if (feed(s, prompt, batch, n, logits, next)) return 1;
    if (argc > 4) {
        if ((code = tttc_session_save(s, argv[4])) != TTTC_OK) return fail("tttc_session_save", code);
        tttc_session_free(s);
        if (!(s = open_session(argv[1], batch))) return 1;
        if ((code = tttc_session_load(s, argv[4])) != TTTC_OK) return fail("tttc_session_load", code);
    }
    for (long i = 0; i < max_new; i++) {
        for (int64_t r = 0; r < batch; r++) {
            tokens[r * max_new + i] = next[r];
            ids[r] = (tttc_real)next[r];
        }
        if (i + 1 == max_new) break;
        if (feed(s, ids, batch, 1, logits, next)) return 1;
    }
    for (int64_t r = 0; r < batch; r++) {
        for (long i = 0; i < max_new; i++) printf(i ? " %ld" : "%ld", tokens[r * max_new + i]);
        printf("\n");
    }
    tttc_session_free(s);
    free(prompt);
    free(next);
    free(tokens);
    free(ids);
    return 0;
}
