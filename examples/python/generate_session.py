"""Greedy generation through a session library compiled ahead of time by tttc, from Python with
ctypes + numpy (the session API of docs/backends.md; examples/c/generate.c does the same in C).

    tttc compile examples/ttt_lm.ttt --config tests/golden/model_mlp_M.config.json \
        --weights tests/golden/model_mlp_M.inputs.safetensors --session -o build/libttt_lm.so
    python3 examples/python/generate_session.py build/libttt_lm.so \
        tests/golden/model_mlp_M.inputs.safetensors 5,90,33,2 16

Prints the generated ids separated by spaces, as `tttc generate --prompt-ids` does. The library
is f32 (the default --precision); its per-token input is the token ids, `[1, n]`, and its
per-token outputs are written for every token fed; the logits are the output named `logits`,
whose length per token is the vocabulary. Needs numpy.
"""
import ctypes
import os
import sys

import numpy as np

F32P = ctypes.POINTER(ctypes.c_float)


class Library:
    """The session functions of one library, with their C signatures."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        lib.tttc_session_new.restype = ctypes.c_void_p
        lib.tttc_session_new.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        lib.tttc_session_feed.restype = ctypes.c_int
        lib.tttc_session_feed.argtypes = [
            ctypes.c_void_p, ctypes.c_int64,
            ctypes.POINTER(F32P), ctypes.POINTER(ctypes.c_int64),
            ctypes.POINTER(F32P), ctypes.POINTER(ctypes.c_int64),
        ]
        lib.tttc_session_free.argtypes = [ctypes.c_void_p]
        lib.tttc_last_error.restype = ctypes.c_char_p
        self.lib = lib

    def check(self, code, what):
        if code != 0:
            raise SystemExit(f"{what} failed (code {code}): {self.lib.tttc_last_error().decode()}")


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    lib = Library(sys.argv[1])
    # The outputs' names and sizes per token: from the header written beside the library.
    header = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "ttt_lm.h")
    text = open(header).read()
    per_token = [int(x) for x in text.split("tttc_output_per_token[TTTC_N_OUTPUTS] = {")[1]
                 .split("}")[0].split(",")]
    names = [x.strip().strip('"') for x in text.split("tttc_output_names[TTTC_N_OUTPUTS] = {")[1]
             .split("}")[0].split(",")]
    logits = names.index("logits")
    vocab = per_token[logits]

    error = ctypes.c_int(0)
    session = lib.lib.tttc_session_new(sys.argv[2].encode(), ctypes.byref(error))
    if not session:
        lib.check(error.value, "tttc_session_new")

    def feed(ids):
        n = len(ids)
        inp = np.asarray(ids, np.float32)
        outs = [np.empty(n * p, np.float32) for p in per_token]
        ins = (F32P * 1)(inp.ctypes.data_as(F32P))
        in_lens = (ctypes.c_int64 * 1)(n)
        out_ptrs = (F32P * len(outs))(*[o.ctypes.data_as(F32P) for o in outs])
        out_lens = (ctypes.c_int64 * len(outs))(*[o.size for o in outs])
        lib.check(lib.lib.tttc_session_feed(session, n, ins, in_lens, out_ptrs, out_lens),
                  "tttc_session_feed")
        row = outs[logits][(n - 1) * vocab:]
        return int(np.argmax(row))  # the lowest id on ties, as tttc generate picks

    prompt = [int(x) for x in sys.argv[3].split(",")]
    generated = [feed(prompt)]
    while len(generated) < int(sys.argv[4]):
        generated.append(feed([generated[-1]]))
    print(" ".join(map(str, generated)))
    lib.lib.tttc_session_free(session)


if __name__ == "__main__":
    main()
