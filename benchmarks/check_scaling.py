"""How parse + check time grows with model size: deep dense stacks through
`nndsl.frontend.load_source`.

    python benchmarks/check_scaling.py [--sizes 100,200,300] [--width 16] [--repeat 3]

For each size N it generates a model of N dense layers (N-1 tanh hidden layers and a linear
output) and prints the best of `--repeat` timings of `load_source(text)`, seconds per layer,
and the growth against the smallest size (linear growth keeps `per layer` flat). The first
call, which also loads the grammar, is timed separately. No assertion: this is a measurement
to show checking stays fast, not a timed test.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def deep_dense_model(layers: int, width: int = 16) -> str:
    lines = [f"model deep{layers}", f"input x[{width}]", "target y[1]"]
    prev = "x"
    for i in range(1, layers):
        lines.append(f"h{i} = dense({prev}, {width}, act=tanh)")
        prev = f"h{i}"
    lines += [f"o = dense({prev}, 1)", "loss squared(o, y)", "optimizer adam(lr=1e-3)"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,200,300", help="comma list of layer counts")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    t0 = time.perf_counter()
    from nndsl.frontend import load_source
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_source(deep_dense_model(2, args.width), "<warm-up>")
    first_s = time.perf_counter() - t0
    print(f"import nndsl.frontend: {import_s:.3f} s; first load_source (2 layers, loads the grammar): "
          f"{first_s:.3f} s\n")
    print("| layers | lines | parse + check s (best of %d) | ms per layer | time / time(%d layers) |"
          % (args.repeat, sizes[0]))
    print("|---|---|---|---|---|")
    base = None
    for n in sizes:
        text = deep_dense_model(n, args.width)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            load_source(text, f"<deep{n}>")
            best = min(best, time.perf_counter() - t0)
        base = base or best
        print(f"| {n} | {text.count(chr(10))} | {best:.4f} | {best / n * 1e3:.3f} | "
              f"{best / base:.2f} (size ×{n / sizes[0]:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
