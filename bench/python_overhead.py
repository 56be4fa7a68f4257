"""Call overhead of `tttc.Program` from Python (issue 17: <= 20 us median on a tiny program) and
a check that contiguous inputs are not copied.

    python/.venv/bin/python bench/python_overhead.py [--repeat 2000] [--backend llvm]

Prints medians, all measured in the same run, of: `prog(**arrays)` on a tiny program
(`y = x * 2 + 1` on x [2, 3]: the call is all overhead) with a numpy array and a torch tensor,
next to an empty Python call and numpy's `x * 2 + 1` on the same array; then the same program on
a 64 MiB input next to numpy's `x * 2 + 1` (one read, one write of 64 MiB) and a numpy copy of
the input. A copy of the input would add the copy's time to the program's.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tttc

TINY = """
main {
  input x: [N, D]
  output y = x * 2.0 + 1.0
}
"""


def median_us(fn, repeat):
    for _ in range(min(100, repeat)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def load(text, backend):
    d = Path(tempfile.mkdtemp())
    path = d / "p.ttt"
    path.write_text(text)
    return tttc.Program.load(path, backend=backend, precision="float32")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=2000)
    p.add_argument("--backend", default="llvm")
    args = p.parse_args()
    print(f"load average: {os.getloadavg()}; python {sys.version.split()[0]}; backend {args.backend}")

    prog = load(TINY, args.backend)
    x = np.ones((2, 3), np.float32)
    rows = [("empty Python call f(x=x)", median_us(lambda: (lambda **k: k)(x=x), args.repeat)),
            ("numpy x * 2 + 1", median_us(lambda: x * 2.0 + 1.0, args.repeat)),
            ("prog(x=ndarray) tiny", median_us(lambda: prog(x=x), args.repeat))]
    try:
        import torch

        xt = torch.ones((2, 3), dtype=torch.float32)
        rows.append(("prog(x=tensor) tiny", median_us(lambda: prog(x=xt), args.repeat)))
    except ImportError:
        pass

    big = np.ones((16, 1024 * 1024), np.float32)  # 64 MiB
    n = max(10, args.repeat // 100)
    rows.append(("prog(x=64 MiB ndarray)", median_us(lambda: prog(x=big), n)))
    rows.append(("numpy 64 MiB x * 2 + 1", median_us(lambda: big * 2.0 + 1.0, n)))
    rows.append(("numpy copy of 64 MiB", median_us(lambda: big.copy(), n)))

    for name, us in rows:
        print(f"{name:36s} {us:12.2f} us")


if __name__ == "__main__":
    main()
