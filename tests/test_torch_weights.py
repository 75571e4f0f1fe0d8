"""PyTorch weights both ways (nndsl/export/torch_weights.py) and reading saved weights
(nndsl/export/weights.py): the MLP, CNN, LSTM and GRU examples against the equivalent
torch.nn models in float64 (≤ 1e-10), the table of every example, and the errors."""
from __future__ import annotations

import ast
import json

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, compile_example

from nndsl.export import (ExportError, TorchWeightsError, from_torch, params_from_torch, read_params,  # noqa: E402
                          to_torch, torch_state_dict, torch_table)
from nndsl.frontend import load_model  # noqa: E402

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.nn"))


def randomised(module, seed: int = 0):
    m = module.Model(seed=0)
    rng = np.random.default_rng(seed)
    for v in m.params.values():
        v[...] = rng.normal(0.0, 0.5, v.shape)
    return m


# ------------------------------------------------------------ the equivalent torch models
def torch_net(name: str):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class MLP(nn.Module):                     # examples/digits_mlp.nn
        def __init__(self):
            super().__init__()
            self.h, self.o = nn.Linear(64, 128), nn.Linear(128, 10)

        def forward(self, x):
            return self.o(torch.relu(self.h(x)))

    class CNN(nn.Module):                     # examples/cnn.nn (dropout off: eval)
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 32, 3, padding=1)
            self.c2 = nn.Conv2d(32, 32, 3, padding=1)
            self.c3 = nn.Conv2d(32, 64, 3, padding=1)
            self.o = nn.Linear(256, 10)

        def forward(self, img):
            pool = nn.functional.max_pool2d
            x = pool(torch.relu(self.c2(torch.relu(self.c1(img)))), 2)
            x = pool(torch.relu(self.c3(x)), 2)
            return self.o(x.flatten(1))

    class Recurrent(nn.Module):               # examples/lstm.nn, gru.nn: return=last
        def __init__(self, cell):
            super().__init__()
            self.h, self.o = cell(8, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, seq):
            return self.o(self.h(seq)[0][:, -1])

    net = {"digits_mlp": MLP, "cnn": CNN, "lstm": lambda: Recurrent(nn.LSTM),
           "gru": lambda: Recurrent(nn.GRU)}[name]()
    return net.double().eval()


def example_input(name: str, n: int = 7):
    rng = np.random.default_rng(2)
    shape = {"digits_mlp": (n, 64), "cnn": (n, 1, 8, 8), "lstm": (n, 5, 8), "gru": (n, 5, 8)}[name]
    return rng.standard_normal(shape)


def forward_both(name, m, net):
    import torch
    x = example_input(name)
    module = compile_example(name)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    return m.forward(**{module.INPUTS[0]: x}), theirs


@pytest.mark.parametrize("name", ["digits_mlp", "cnn", "lstm", "gru"])
def test_nndsl_weights_run_in_the_torch_model(name, tmp_path):
    net = torch_net(name)
    m = randomised(compile_example(name))
    m.save(tmp_path / "w.npz")
    net.load_state_dict(torch_state_dict(EXAMPLES / f"{name}.nn", tmp_path / "w.npz", tensors=True))   # strict
    ours, theirs = forward_both(name, m, net)
    np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["digits_mlp", "cnn", "lstm", "gru"])
def test_torch_weights_run_in_the_nndsl_model(name):
    """torch's own initialisation, bias_hh included (added to our biases); a GRU's b_hn must
    be 0 (ours has no bias inside r ⊙ (U_h h)), and a non-zero one is refused."""
    import torch
    net = torch_net(name)
    if name == "gru":
        bad = net.state_dict()
        with pytest.raises(TorchWeightsError, match=r"h\.bias_hh_l0.*entries 64:96 must be 0"):
            params_from_torch(EXAMPLES / "gru.nn", bad)
        with torch.no_grad():
            net.h.bias_hh_l0[64:].zero_()
    m = compile_example(name).Model(seed=0)
    for k, v in params_from_torch(EXAMPLES / f"{name}.nn", net.state_dict()).items():
        m.params[k][...] = v
    ours, theirs = forward_both(name, m, net)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["digits_mlp", "cnn", "lstm", "gru"])
def test_the_module_itself_moves_weights_both_ways(name):
    """`m.state_dict()` is what torch loads strictly; `m.load_torch(sd)` the other way."""
    import torch
    net = torch_net(name)
    if name == "gru":
        with torch.no_grad():
            net.h.bias_hh_l0[64:].zero_()
    m = compile_example(name).Model(seed=0)
    m.load_torch(net.state_dict())
    ours, theirs = forward_both(name, m, net)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    m2 = randomised(compile_example(name))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in m2.state_dict().items()})      # strict
    ours, theirs = forward_both(name, m2, net)
    np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="missing"):      # the runtime copy's TorchWeightsError
        m.load_torch({})


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_the_table_of_every_example_round_trips(name):
    """to_torch then from_torch gives the parameters (and running statistics) back bit for
    bit; the table is JSON."""
    model = load_model(EXAMPLES / f"{name}.nn")
    table = torch_table(model)
    assert json.loads(json.dumps(table)) == table
    keys = [e["key"] for e in table["entries"]]
    assert len(set(keys)) == len(keys)
    rng = np.random.default_rng(0)
    params = {p.name: rng.standard_normal(p.shape) for p in (*model.params, *model.stats)}
    sd = to_torch(params, table)
    assert list(sd) == keys and all(sd[e["key"]].shape == tuple(e["shape"]) for e in table["entries"])
    back = from_torch(sd, table)
    assert set(back) == set(params)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v)


def test_table_names_and_gate_order():
    lstm = torch_table(load_model(EXAMPLES / "lstm.nn"))
    by_key = {e["key"]: e for e in lstm["entries"]}
    assert list(by_key) == ["h.weight_ih_l0", "h.weight_hh_l0", "h.bias_ih_l0", "h.bias_hh_l0", "o.weight", "o.bias"]
    assert by_key["h.weight_ih_l0"]["parts"] == ["h.W_i", "h.W_f", "h.W_c", "h.W_o"]      # torch i f g o
    assert by_key["h.bias_hh_l0"]["mode"] == "add" and by_key["h.weight_ih_l0"]["shape"] == [128, 8]
    gru = {e["key"]: e for e in torch_table(load_model(EXAMPLES / "gru.nn"))["entries"]}
    assert gru["h.weight_hh_l0"]["parts"] == ["h.U_r", "h.U_z", "h.U_h"]                   # torch r z n
    assert gru["h.bias_hh_l0"]["zero"] == [[64, 96]]
    gan = [e["key"] for e in torch_table(load_model(EXAMPLES / "gan.nn"))["entries"]]   # shared layers once
    assert gan == ["generator.h.weight", "generator.h.bias", "generator.out.weight", "generator.out.bias",
                   "discriminator.h.weight", "discriminator.h.bias", "discriminator.out.weight",
                   "discriminator.out.bias"]
    user = torch_table(load_model(EXAMPLES / "user_conv.nn"))
    assert [(e["key"], e["parts"]) for e in user["entries"][:2]] == [("o.weight", ["o.W"]), ("o.bias", ["o.b"])]
    assert {m["name"]: m["type"] for m in user["modules"]} == {"o": "Linear", "h.W": "Parameter", "h.b": "Parameter"}


def test_to_and_from_torch_need_numpy_only():
    """The conversion is the generated module's runtime's: numpy, nothing else."""
    tree = ast.parse((ROOT / "nndsl" / "runtime" / "torch_weights.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"numpy", "__future__"} and not any(
        isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree))


def test_state_dict_mistakes_are_one_line():
    table = torch_table(load_model(EXAMPLES / "lstm.nn"))
    sd = to_torch({p: np.zeros(s) for p, s in
                   ((p.name, p.shape) for p in load_model(EXAMPLES / "lstm.nn").params)}, table)
    cases = [
        ({k: v for k, v in sd.items() if k != "o.bias"}, "missing o.bias"),
        ({**sd, "extra.weight": np.zeros(2)}, "unexpected extra.weight"),
        ({**sd, "o.weight": np.zeros((10, 31))}, r"state_dict\['o.weight'\]: expected shape \(10, 32\), got \(10, 31\)"),
    ]
    for bad, message in cases:
        with pytest.raises(TorchWeightsError, match=message) as info:
            from_torch(bad, table)
        assert "\n" not in str(info.value)
    with pytest.raises(TorchWeightsError, match="missing h.U_c, h.U_f"):
        to_torch({"h.W_i": np.zeros((32, 8))}, table)


# ---------------------------------------------------------------- reading weights
def test_read_params_takes_theta_and_per_parameter_files(tmp_path):
    model = load_model(EXAMPLES / "lstm.nn")
    m = randomised(compile_example("lstm"))
    m.save(tmp_path / "theta.npz")                            # today's format: theta
    np.savez(tmp_path / "named.npz", __model__=np.array(model.name),
             **{f"param:{k}": v for k, v in m.params.items()})   # the coming one: param:NAME
    for path in ("theta.npz", "named.npz"):
        params = read_params(model, tmp_path / path)
        assert list(params) == [p.name for p in model.params]
        for k, v in m.params.items():
            np.testing.assert_array_equal(params[k], v)
    assert read_params(model, m)["o.W"].tolist() == m.params["o.W"].tolist()


def test_read_params_names_what_does_not_fit(tmp_path):
    model = load_model(EXAMPLES / "lstm.nn")
    good = {f"param:{p.name}": np.zeros(p.shape) for p in model.params}
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "param:o.b"}, "missing o.b"),
        "extra": ({**good, "param:o.c": np.zeros(3)}, "not in the model o.c"),
        "reshaped": ({**good, "param:o.W": np.zeros((32, 10))}, r"reshaped o.W \(32, 10\) \(the model's is \(10, 32\)\)"),
        "other": ({**good, "__model__": np.array("gru_digits")}, "weights of model 'gru_digits', not of 'lstm_digits'"),
        "theta": ({"theta": np.zeros(5), "__model__": np.array("lstm_digits")}, "`theta` holds 5 numbers"),
        "ints": ({**good, "param:o.b": np.zeros(10, np.int64)}, "o.b holds int64 numbers"),
    }
    for case, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{case}.npz", **arrays)
        with pytest.raises(ExportError, match=message) as info:
            read_params(model, tmp_path / f"{case}.npz")
        assert "\n" not in str(info.value)
