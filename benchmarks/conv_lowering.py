"""conv2d through im2col (GEMMs; col as columns or as rows) against the direct window sum.

    python benchmarks/conv_lowering.py [--model benchmarks/models/cnn.nn] [--rounds 5] [--batch 64]

Builds the model once per form of `nndsl.calculus.ops.CONV_FORM` and alternates blocks
of 10 Adam steps of the modules in one process (fp32, random data); prints the
build + first-step seconds and the median ms per step of each (docs/performance.md,
"Convolutions").
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "models" / "cnn.nn"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--forms", default="columns,rows,direct")
    ap.add_argument("--out-dir", default=None, help="where the two modules go (default: a temporary folder)")
    args = ap.parse_args(argv)
    import nndsl.calculus.ops as ops
    from nndsl.build import build_file
    from nndsl.loader import import_module

    out = Path(args.out_dir or tempfile.mkdtemp(prefix="nndsl_conv_"))
    runs = {}
    for form in args.forms.split(","):
        ops.CONV_FORM = form
        t0 = time.perf_counter()
        built = build_file(args.model, out / form, dtype="float32")
        module = import_module(built.path, f"conv_lowering_{form}")
        m = module.Model(seed=0)
        rng = np.random.default_rng(0)
        data = {}
        for name, (shape, classes, _) in module.DATA.items():
            data[name] = (rng.integers(0, classes, args.batch) if classes is not None
                          else rng.random((args.batch,) + tuple(shape), dtype=np.float32))
        m.step(**data)
        print(f"{form}: build + first step {time.perf_counter() - t0:.1f} s ({built.path})", flush=True)
        runs[form] = (m, data)
    ms = {k: [] for k in runs}
    for _ in range(args.rounds):
        for form, (m, data) in runs.items():
            t0 = time.perf_counter()
            for _ in range(10):
                m.step(**data)
            ms[form].append((time.perf_counter() - t0) * 100.0)
    for form, v in ms.items():
        print(f"{form}: median {np.median(v):.3f} ms/step  (rounds: {', '.join(f'{t:.2f}' for t in v)})")
    best = min(ms, key=lambda k: np.median(ms[k]))
    for form, v in ms.items():
        print(f"{form} / {best}: {np.median(v) / np.median(ms[best]):.2f}x")


if __name__ == "__main__":
    main()
