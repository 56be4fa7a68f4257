"""Runs a `tttc compile` shared library on a safetensors file of inputs in a loop, so that
`perf record` / `perf annotate` see the generated code with its symbols (JIT code has only a
perf map: no instructions to annotate). Shapes and argument order come from the generated
header.

    tttc compile examples/ttt_linear.ttt --inputs IN.safetensors -o /tmp/lib.so
    perf record -o /tmp/p.data python bench/aot_profile.py /tmp/lib.so /tmp/ttt_linear.h IN.safetensors 50
    perf annotate -i /tmp/p.data --stdio -s tttc.wbody.0
"""
import ctypes
import re
import sys
import time

import numpy as np
from safetensors.numpy import load_file


def main(lib_path, header, inputs_path, iters):
    text = open(header).read()
    name = re.search(r"int (\w+)_run\(", text).group(1)
    specs = re.findall(r"^ \*   (input|output) +(\w+) +(float|double) \[([^\]]*)\]", text, re.M)
    tensors = load_file(inputs_path)
    lib = ctypes.CDLL(lib_path)
    run = getattr(lib, name + "_run")
    args, keep = [], []
    for kind, tname, ty, dims in specs:
        shape = [int(d) for d in dims.split(",")] if dims.strip() else []
        dtype = np.float32 if ty == "float" else np.float64
        arr = (np.ascontiguousarray(tensors[tname], dtype=dtype) if kind == "input"
               else np.empty(shape, dtype))
        shp = np.array(shape, np.int64)
        keep += [arr, shp]
        args += [arr.ctypes.data_as(ctypes.c_void_p), shp.ctypes.data_as(ctypes.c_void_p)]
    err = ctypes.create_string_buffer(512)
    args += [err, ctypes.c_size_t(512)]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        rc = run(*args)
        times.append(time.perf_counter() - t0)
        if rc != 0:
            sys.exit(f"{name}: {err.value.decode()}")
    print(f"{name}: median {1e3 * float(np.median(times)):.2f} ms over {iters} runs")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
