/* Greedy generation through a session library (`tttc compile --session`):
 *
 *   tttc compile examples/ttt_lm.ttt --config CONFIG.json --target x86_64 --session -o libttt_lm.so
 *   cc -O2 -I. examples/c/generate.c -L. -lttt_lm -Wl,-rpath,. -o generate
 *   ./generate WEIGHTS.safetensors 1,2,3 32 [STATE]
 *
 * feeds the prompt as one chunk, then each picked token (the most likely; the lowest id on
 * ties, as `tttc generate` picks) as a chunk of one, and prints the generated ids separated by
 * spaces, as `tttc generate --prompt-ids` does. With STATE, the session is saved there after
 * the prompt, freed, and a new session loads it and goes on (the same tokens come out).
 * The model's header is ttt_lm.h unless -DTTTC_MODEL_HEADER='"other.h"'. */
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

/* Feeds n tokens and returns the id picked from the last token's row of `logits` (-1 on error). */
static long feed(tttc_session* s, const tttc_real* ids, int64_t n, int logits) {
    tttc_real* out[TTTC_N_OUTPUTS];
    int64_t out_lens[TTTC_N_OUTPUTS];
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) {
        out_lens[i] = n * tttc_output_per_token[i];
        out[i] = malloc(sizeof(tttc_real) * (size_t)out_lens[i]);
    }
    const tttc_real* in[1] = {ids};
    int64_t in_lens[1] = {n};
    int code = tttc_session_feed(s, n, in, in_lens, out, out_lens);
    long best = -1;
    if (code == TTTC_OK) {
        int64_t vocab = tttc_output_per_token[logits];
        const tttc_real* row = out[logits] + (n - 1) * vocab;
        best = 0;
        for (int64_t v = 1; v < vocab; v++)
            if (row[v] > row[best]) best = (long)v;
    } else {
        fail("tttc_session_feed", code);
    }
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) free(out[i]);
    return best;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors ID,ID,... MAX_NEW_TOKENS [STATE]\n", argv[0]);
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
    /* The prompt. */
    tttc_real* prompt = malloc(sizeof(tttc_real) * (strlen(argv[2]) + 1));
    int64_t n = 0;
    for (char* p = argv[2]; *p;) {
        prompt[n++] = (tttc_real)strtol(p, &p, 10);
        if (*p == ',') p++;
    }
    long max_new = strtol(argv[3], 0, 10);

    int code = 0;
    tttc_session* s = tttc_session_new(argv[1], &code);
    if (!s) return fail("tttc_session_new", code);
    long next = feed(s, prompt, n, logits);
    if (next < 0) return 1;
    if (argc > 4) {
        if ((code = tttc_session_save(s, argv[4])) != TTTC_OK) return fail("tttc_session_save", code);
        tttc_session_free(s);
        s = tttc_session_new(argv[1], &code);
        if (!s) return fail("tttc_session_new", code);
        if ((code = tttc_session_load(s, argv[4])) != TTTC_OK) return fail("tttc_session_load", code);
    }
    for (long i = 0; i < max_new; i++) {
        printf(i ? " %ld" : "%ld", next);
        if (i + 1 == max_new) break;
        tttc_real id = (tttc_real)next;
        next = feed(s, &id, 1, logits);
        if (next < 0) return 1;
    }
    printf("\n");
    tttc_session_free(s);
    free(prompt);
    return 0;
}
