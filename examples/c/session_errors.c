/* Every error code of a session library's C API, one case per line ("case code message"):
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
    report("feed_zero_tokens", feed(s, 0, 0, -1));
    report("feed_wrong_length", feed(s, 3, 0, 2));
    report("feed_id_out_of_range", feed(s, 2, 1.0e6f, -1));
    report("feed_good", feed(s, 3, 1, -1));
    report("position", (int)tttc_session_position(s));
    report("load_other_program", tttc_session_load(s, argv[4]));
    report("load_no_file", tttc_session_load(s, "/nonexistent/state.safetensors"));
    report("save_unwritable", tttc_session_save(s, "/nonexistent/dir/state.safetensors"));
    report("feed_after_errors", feed(s, 1, 2, -1));
    tttc_session_free(s);
    tttc_session_free(NULL);
    return 0;
}
