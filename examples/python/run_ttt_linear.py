"""Runs a TTT-Linear layer compiled ahead of time by tttc, from Python with ctypes + numpy.

    tttc compile examples/ttt_linear.ttt --inputs examples/data/ttt_linear_sample.safetensors \
        -o build/libttt_linear.so
    python3 examples/python/run_ttt_linear.py build/libttt_linear.so \
        examples/data/ttt_linear_sample.safetensors

Needs numpy and safetensors (pip install numpy safetensors). The argument order is the one the
generated header build/ttt_linear.h documents: every input (data, shape), every output (data,
shape), then an error buffer.
"""
import ctypes
import sys

import numpy as np
from safetensors.numpy import load_file

INPUTS = ["XQ", "XK", "XV", "token_eta", "ttt_lr_eta", "W1", "b1", "ln_weight", "ln_bias"]


def main():
    lib = ctypes.CDLL(sys.argv[1])
    t = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in load_file(sys.argv[2]).items()}
    B, H, L, f = t["XQ"].shape
    outputs = {
        "Z": np.zeros((B, H, L, f), np.float32),
        "W1_last": np.zeros((B, H, f, f), np.float32),
        "b1_last": np.zeros((B, H, 1, f), np.float32),
    }
    args = []
    keep = []
    for arr in [t[n] for n in INPUTS] + list(outputs.values()):
        shape = (ctypes.c_int64 * arr.ndim)(*arr.shape)
        keep.append(shape)
        args += [arr.ctypes.data_as(ctypes.c_void_p), shape]
    error = ctypes.create_string_buffer(256)
    rc = lib.ttt_linear_run(*args, error, ctypes.c_size_t(len(error)))
    if rc != 0:
        raise SystemExit(f"ttt_linear_run failed: {error.value.decode()}")
    print("Z[0, 0, 0, :4] =", outputs["Z"][0, 0, 0, :4])
    return outputs


if __name__ == "__main__":
    main()
