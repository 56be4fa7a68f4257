/* Runs a TTT-Linear layer compiled ahead of time by tttc, from C.
 *
 *   tttc compile examples/ttt_linear.ttt --inputs examples/data/ttt_linear_sample.safetensors \
 *       -o build/libttt_linear.so
 *   cc -O2 -Ibuild examples/c/main.c -Lbuild -lttt_linear -Wl,-rpath,build -o build/ttt_linear_c
 *   build/ttt_linear_c DIR
 *
 * DIR holds one raw little-endian float32 file per input (XQ.f32, XK.f32, ...) in the shapes
 * the header documents; the program writes Z.f32, W1_last.f32 and b1_last.f32 there, and shows
 * that a wrong shape is refused with a message instead of being read out of bounds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ttt_linear.h"

/* The shapes the sample library is compiled for (see ttt_linear.h). */
enum { B = 1, H = 2, L = 64, F = 16, K = 16 };

static float* read_f32(const char* dir, const char* name, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE* f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    float* data = malloc(n * sizeof(float));
    if (!data || fread(data, sizeof(float), n, f) != n) { fprintf(stderr, "%s: short read\n", path); exit(1); }
    fclose(f);
    return data;
}

static void write_f32(const char* dir, const char* name, const float* data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, sizeof(float), n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    const char* dir = argv[1];
    const int64_t seq[] = {B, H, L, F}, eta[] = {K}, lr[] = {B, H, L}, w[] = {H, F, F},
                  b[] = {H, 1, F}, ln[] = {H, F}, wl[] = {B, H, F, F}, bl[] = {B, H, 1, F};
    float* xq = read_f32(dir, "XQ", B * H * L * F);
    float* xk = read_f32(dir, "XK", B * H * L * F);
    float* xv = read_f32(dir, "XV", B * H * L * F);
    float* te = read_f32(dir, "token_eta", K);
    float* le = read_f32(dir, "ttt_lr_eta", B * H * L);
    float* w1 = read_f32(dir, "W1", H * F * F);
    float* b1 = read_f32(dir, "b1", H * F);
    float* lw = read_f32(dir, "ln_weight", H * F);
    float* lb = read_f32(dir, "ln_bias", H * F);
    float* z = malloc(sizeof(float) * B * H * L * F);
    float* w1_last = malloc(sizeof(float) * B * H * F * F);
    float* b1_last = malloc(sizeof(float) * B * H * F);
    char error[256];

    /* A wrong shape is an error with a message, not an out-of-bounds read. */
    const int64_t wrong[] = {B, H, L / 2, F};
    int rc = ttt_linear_run(xq, wrong, xk, seq, xv, seq, te, eta, le, lr, w1, w, b1, b, lw, ln, lb, ln,
                            z, seq, w1_last, wl, b1_last, bl, error, sizeof error);
    printf("wrong shape: rc=%d (%s)\n", rc, error);
    if (rc == 0) return 1;

    rc = ttt_linear_run(xq, seq, xk, seq, xv, seq, te, eta, le, lr, w1, w, b1, b, lw, ln, lb, ln,
                        z, seq, w1_last, wl, b1_last, bl, error, sizeof error);
    if (rc != 0) { fprintf(stderr, "ttt_linear_run: %s\n", error); return 1; }
    write_f32(dir, "Z", z, B * H * L * F);
    write_f32(dir, "W1_last", w1_last, B * H * F * F);
    write_f32(dir, "b1_last", b1_last, B * H * F);
    printf("ok: Z[0..4] = %f %f %f %f\n", z[0], z[1], z[2], z[3]);
    float* buffers[] = {xq, xk, xv, te, le, w1, b1, lw, lb, z, w1_last, b1_last};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) free(buffers[i]);
    return 0;
}
