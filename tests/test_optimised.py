"""The suite compiles at NUMBA_OPT=1 (tests/conftest.py); users run at numba's default -O3.
This test builds a few models afresh in a process at -O3 and checks that the optimised
kernels compute what the suite checked: loss, gradient and three Adam steps, float64."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, SMALL_LSTM, compile_source, random_data

# one model per family of kernels: GEMMs and fused loops, windows, a recurrence
MODELS = {
    "mlp": """model opt_mlp
input x[6]
target label: class(3)
h = dense(x, 8, act=tanh)
o = dense(h, 3)
loss cross_entropy(o, label)
optimizer adam(lr=0.01)
""",
    "cnn": """model opt_cnn
input img[1, 8, 8]
target label: class(3)
c = conv2d(img, 3, 3, pad=1, act=relu)
p = maxpool(c, 2)
o = dense(flatten(p), 3)
loss cross_entropy(o, label)
optimizer adam(lr=0.01)
""",
    "lstm": SMALL_LSTM,
}

CHILD = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import conftest
    conftest.BUILD = Path(tempfile.mkdtemp())        # nothing compiled at -O0 is reused
    out = {{}}
    for name, source in json.loads(sys.stdin.read()).items():
        module = conftest.compile_source(source)
        m = module.Model(seed=0)
        data = conftest.random_data(module, n=4, seed=1)
        loss, grad = m.grad(**data)
        steps = [float(m.step(**data)) for _ in range(3)]
        out[name] = {{"loss": loss, "grad": {{k: v.tolist() for k, v in grad.items()}}, "steps": steps,
                     "params": {{k: v.tolist() for k, v in m.params.items()}}}}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def optimised():
    env = dict(os.environ, NUMBA_OPT="3")
    out = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(ROOT / "tests"))],
                         input=json.dumps(MODELS), capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimised_kernels_compute_what_the_suite_checked(name, optimised):
    module = compile_source(MODELS[name])
    m = module.Model(seed=0)
    data = random_data(module, n=4, seed=1)
    loss, grad = m.grad(**data)
    steps = [float(m.step(**data)) for _ in range(3)]
    want = optimised[name]
    assert loss == pytest.approx(want["loss"], rel=1e-12)
    for k, g in grad.items():
        np.testing.assert_allclose(g, want["grad"][k], rtol=1e-10, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(steps, want["steps"], rtol=1e-10)
    for k, v in m.params.items():
        np.testing.assert_allclose(v, want["params"][k], rtol=1e-10, atol=1e-14, err_msg=k)
