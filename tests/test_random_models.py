"""The random-model differential tester (issue 26): random valid models across the language
(tests/randmodels.py), each built and checked against central differences, its own loss,
float32 and its own printout (tests/modelcheck.py), and a sample on the CUDA simulator;
and mutants of them, which `nndsl check` must answer with located one-line diagnostics.

The suite runs a fixed set of seeds. A longer hunt:

    python -m pytest tests/test_random_models.py --random-models 500 [--random-mutants 200]
                     [--random-seed 1000] [--random-cuda-every 25] [-n 2]

runs models with seeds 1000..1499 (mutants of models 1000..1199), the even seeds in float32
too, every 25th model also on the CUDA simulator. Each failure is reported with its seed and model text, and saved as
tests/.random_failures/KIND-mSEED.nn (`--random-save DIR` elsewhere): moved into
tests/regressions/ (once reduced to the minimal model) it becomes a test of
tests/test_edge_models.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from modelcheck import Finding, check_model, check_mutant
from randmodels import generate, mutate

ROOT = Path(__file__).resolve().parents[1]
SAVE = ROOT / "tests" / ".random_failures"

# The suite's run: a few tiny models that share most kernels with the other tests (seeds
# picked for their constructs and their cheap builds), one of them in float32 too, and
# mutants of the first models.
FIXED_MODELS = [4, 40, 53]
FIXED_FLOAT32 = {4}
FIXED_MUTANTS = list(range(40))
MUTANT_OFFSET = 10 ** 6          # mutants start from models of other seeds than the models'


def pytest_generate_tests(metafunc):
    opt = metafunc.config.getoption
    n, start = opt("--random-models"), opt("--random-seed")
    if "model_seed" in metafunc.fixturenames:
        seeds = FIXED_MODELS if n is None else list(range(start, start + n))
        metafunc.parametrize("model_seed", seeds, ids=[f"m{s}" for s in seeds])
    if "mutant_seed" in metafunc.fixturenames:
        k = opt("--random-mutants")
        if k is None:
            seeds = FIXED_MUTANTS if n is None else list(range(start, start + n // 4))
        else:
            seeds = list(range(start, start + k))
        metafunc.parametrize("mutant_seed", seeds, ids=[f"mutant{s}" for s in seeds])


def _save(request, kind: str, name: str, text: str, finding: Finding, how: str) -> Path:
    folder = Path(request.config.getoption("--random-save") or SAVE)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{name}.nn"
    header = [f"# random-model tester: {how}", f"# finding: [{finding.kind}]"]
    header += [f"#   {line}" for line in finding.message.splitlines()[:30]]
    path.write_text("\n".join(header) + "\n" + text)
    return path


def _hunting(request) -> bool:
    return request.config.getoption("--random-models") is not None


def test_random_model(model_seed, request):
    text, features = generate(model_seed)
    hunting = _hunting(request)
    every = request.config.getoption("--random-cuda-every")
    cuda = (model_seed % every == 0) if hunting and every else False
    if cuda:
        pytest.importorskip("numba_cuda")
    float32 = model_seed % 2 == 0 if hunting else model_seed in FIXED_FLOAT32     # half a hunt
    how = f"python -m pytest tests/test_random_models.py --random-models 1 --random-seed {model_seed}"
    try:
        check_model(text, f"m{model_seed}", float32=float32, cuda=cuda)
    except Finding as finding:
        path = _save(request, finding.kind, f"m{model_seed}", text, finding, how)
        pytest.fail(f"model seed {model_seed} ({', '.join(features)}), saved as {path}:\n{text}\n{finding}",
                    pytrace=False)


def test_mutant(mutant_seed, request):
    base, _ = generate(MUTANT_OFFSET + mutant_seed)
    text, what = mutate(base, mutant_seed)
    how = f"a mutant ({what}) of model {MUTANT_OFFSET + mutant_seed}: python -m pytest " \
          f"tests/test_random_models.py -k test_mutant --random-mutants 1 --random-seed {mutant_seed}"
    try:
        check_mutant(text, f"mutant{mutant_seed}")
    except Finding as finding:
        path = _save(request, finding.kind, f"mutant{mutant_seed}", text, finding, how)
        pytest.fail(f"mutant seed {mutant_seed} ({what}), saved as {path}:\n{text}\n{finding}", pytrace=False)


def test_the_generator_reaches_every_construct():
    """Over a thousand seeds (text only, no build) the generator uses every construct
    of its tables: a construct that no seed reaches is a construct the hunt never tests."""
    from randmodels import CONSTRUCTS
    seen = set()
    for seed in range(1000):
        seen |= set(generate(seed)[1])
    wanted = {"dense", "dense-over-time", "conv2d", "maxpool", "avgpool", "maxpool-overlap", "avgpool-overlap",
              "flatten", "concat", "where", "min-max", "arithmetic", "broadcast", "inline-dense", "expression-function",
              "dropout", "gaussian_noise", "mask_noise", "sample_normal", "user-activation", "user-loss",
              "user-layer-hidden", "user-layer-scale", "user-layer-bilinear", "user-layer-window", "network",
              "const", "named-losses", "weighted-loss", "unused-node", "unused-input", "no-bias", "init",
              *(f"act-{a}" for a in ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus",
                                     "swish", "softmax")),
              *(f"loss-{x}" for x in ("squared", "bce", "cross_entropy", "gaussian", "kl", "user_loss")),
              *(f"optimizer-{o}" for o in ("sgd", "adagrad", "rmsprop", "adam")),
              "rnn", "lstm", "gru", "rnn-last", "lstm-stacked", "gru-stacked", "rnn-act-softmax"}
    assert wanted <= seen, sorted(wanted - seen)
    assert len(CONSTRUCTS) >= 10


def test_generated_models_are_valid_and_mutants_differ():
    """The generator writes models the checker accepts (text only: cheap), and a mutant is
    another text."""
    from nndsl.diagnostics import CompileError, render_all
    from nndsl.frontend import load_source
    for seed in range(60):
        text, _ = generate(seed)
        try:
            load_source(text, f"m{seed}.nn")
        except CompileError as exc:
            pytest.fail(f"seed {seed}:\n{text}\n{render_all(exc.diagnostics, text, f'm{seed}.nn')}")
        assert mutate(text, seed)[0] != text
    assert os.environ.get("NUMBA_OPT") == "1"          # the suite's fast compile (conftest)
