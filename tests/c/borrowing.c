/* Zero-copy weights of a session library (tttc_session_new_borrowing_buffers), checked against
 * the copying constructor (tttc_session_new_from_buffers). Built and run by tests/aot.rs:
 *
 *   borrowing DIR
 *
 * DIR holds w0.bin, w1.bin, ...: each weight of the header's order as raw tttc_real values.
 * Three sessions over three copies of the weights: one copying, one borrowing aligned buffers,
 * one borrowing buffers one byte off alignment (which the library copies). Prints one line
 * per check, "NAME 1" when it holds and "NAME 0" when not:
 *
 *   created                  every session was created
 *   same_outputs             a 3-token prompt gives the copying session's outputs bit for bit
 *   borrowed_reads_in_place  after the caller zeroes its buffers (which the API forbids: done
 *                            here only to observe where the session reads), the borrowing
 *                            session's next outputs change: it reads the caller's memory
 *   unaligned_is_copied      ... while the session over unaligned buffers still gives the
 *                            copying session's outputs: it took a copy
 */
#include "ttt_lm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bytes of DIR/w<i>.bin in a new buffer, `offset` bytes into its allocation (the
 * allocation's start is returned in *base for free). */
static char* load(const char* dir, int i, size_t offset, long* bytes, char** base) {
    char path[4096];
    snprintf(path, sizeof path, "%s/w%d.bin", dir, i);
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    *base = malloc((size_t)*bytes + offset + 1);
    char* data = *base + offset;
    size_t got = fread(data, 1, (size_t)*bytes, f);
    fclose(f);
    return got == (size_t)*bytes ? data : NULL;
}

/* Feeds n tokens of `ids`; the outputs go to new buffers in out[] (NULL entries on error). */
static int feed(tttc_session* s, const tttc_real* ids, int64_t n, tttc_real* out[], int64_t lens[]) {
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) {
        lens[i] = n * tttc_output_per_token[i];
        out[i] = calloc((size_t)lens[i], sizeof(tttc_real));
    }
    const tttc_real* in[1] = {ids};
    int64_t in_lens[1] = {n};
    return tttc_session_feed(s, n, in, in_lens, out, lens);
}

static int same(tttc_real* a[], tttc_real* b[], const int64_t lens[]) {
    for (int i = 0; i < TTTC_N_OUTPUTS; i++)
        if (memcmp(a[i], b[i], sizeof(tttc_real) * (size_t)lens[i]) != 0) return 0;
    return 1;
}

static void release(tttc_real* out[]) {
    for (int i = 0; i < TTTC_N_OUTPUTS; i++) free(out[i]);
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    /* [0] copied, [1] borrowed (aligned), [2] borrowed (one byte off: copied by the library). */
    const size_t offsets[3] = {0, 0, 1};
    char* bases[3][TTTC_N_WEIGHTS];
    char* data[3][TTTC_N_WEIGHTS];
    const tttc_real* w[3][TTTC_N_WEIGHTS];
    int64_t lens[TTTC_N_WEIGHTS];
    long sizes[TTTC_N_WEIGHTS];
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < TTTC_N_WEIGHTS; i++) {
            data[c][i] = load(argv[1], i, offsets[c], &sizes[i], &bases[c][i]);
            if (!data[c][i]) {
                fprintf(stderr, "cannot read %s/w%d.bin\n", argv[1], i);
                return 1;
            }
            w[c][i] = (const tttc_real*)data[c][i];
            lens[i] = sizes[i] / (long)sizeof(tttc_real);
        }
    }
    int code[3] = {-1, -1, -1};
    tttc_session* s[3] = {
        tttc_session_new_from_buffers(w[0], lens, &code[0]),
        tttc_session_new_borrowing_buffers(w[1], lens, &code[1]),
        tttc_session_new_borrowing_buffers(w[2], lens, &code[2]),
    };
    int created = s[0] && s[1] && s[2];
    printf("created %d\n", created);
    if (!created) {
        fprintf(stderr, "codes %d %d %d: %s\n", code[0], code[1], code[2], tttc_last_error());
        return 1;
    }

    const tttc_real prompt[3] = {5, 90, 33};
    tttc_real* out[3][TTTC_N_OUTPUTS];
    int64_t out_lens[TTTC_N_OUTPUTS];
    int ok = 1;
    for (int c = 0; c < 3; c++) ok &= feed(s[c], prompt, 3, out[c], out_lens) == TTTC_OK;
    printf("same_outputs %d\n", ok && same(out[0], out[1], out_lens) && same(out[0], out[2], out_lens));
    for (int c = 0; c < 3; c++) release(out[c]);

    for (int c = 1; c < 3; c++)
        for (int i = 0; i < TTTC_N_WEIGHTS; i++) memset(data[c][i], 0, (size_t)sizes[i]);
    const tttc_real next[1] = {2};
    ok = 1;
    for (int c = 0; c < 3; c++) ok &= feed(s[c], next, 1, out[c], out_lens) == TTTC_OK;
    printf("borrowed_reads_in_place %d\n", ok && !same(out[0], out[1], out_lens));
    printf("unaligned_is_copied %d\n", ok && same(out[0], out[2], out_lens));
    for (int c = 0; c < 3; c++) {
        release(out[c]);
        tttc_session_free(s[c]);
        for (int i = 0; i < TTTC_N_WEIGHTS; i++) free(bases[c][i]);
    }
    return 0;
}
