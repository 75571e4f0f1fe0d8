"""Where a generated module's step spends its time: the step with some sections removed.

    python benchmarks/ablate.py BUILT_MODULE.py "PATTERN" ["PATTERN" ...]

A section is a `# note` comment of the generated kernels and the lines under it; every
section whose note matches PATTERN (a regex) is replaced by `pass`, the module is
compiled again, and the variants' steps alternate (20 steps per block, 7 rounds) on
random data of batch 64. The results of a variant are wrong; its time is the step's
minus what the removed sections cost (docs/performance.md, "Convolutions").
"""
import importlib.util
import re
import sys
import time

import numpy as np

path = sys.argv[1]
text = open(path).read()

def strip(text, pattern):
    lines, out, k = text.split("\n"), [], 0
    while k < len(lines):
        m = re.match(r"^(\s*)# (.*)$", lines[k])
        if not m:
            out.append(lines[k]); k += 1; continue
        d = len(m.group(1)); head = []
        while k < len(lines) and re.match(r"^\s{%d}# " % d, lines[k]):
            head.append(lines[k]); k += 1
        body = []
        while k < len(lines):
            ln = lines[k]; ind = len(ln) - len(ln.lstrip())
            if ln.strip() and (ind < d or (ind == d and ln.lstrip().startswith("#"))
                               or (ind == d and ln.lstrip().startswith(("return", "if want_grad")))):
                break
            body.append(ln); k += 1
        if any(re.search(pattern, h) for h in head) and body:
            out.append(" " * d + "pass")
        else:
            out += head + (strip("\n".join(body), pattern).split("\n") if body else [])
    return "\n".join(out)

variants = [("full", None)] + [(p, p) for p in sys.argv[2:]]
mods = {}
for name, pat in variants:
    src = text if pat is None else strip(text, pat)
    fn = f"/tmp/abl_{len(mods)}.py"
    open(fn, "w").write(src.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location(f"abl{len(mods)}", fn)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    m = mod.Model(seed=0)
    rng = np.random.default_rng(0)
    data = {k: (rng.integers(0, c, 64) if c is not None else rng.random((64,) + tuple(s), dtype=np.float32))
            for k, (s, c, _) in mod.DATA.items()}
    m.step(**data)
    mods[name] = (m, data)
res = {k: [] for k in mods}
for _ in range(7):
    for k, (m, data) in mods.items():
        t = time.perf_counter()
        for _ in range(20):
            m.step(**data)
        res[k].append((time.perf_counter() - t) / 20 * 1e3)
base = np.median(res["full"])
for k, v in res.items():
    print(f"{k:45s} {np.median(v):.3f} ms  (saves {base - np.median(v):.3f})", flush=True)
