"""nndsl parameters <-> a PyTorch `state_dict`, through a plain-data table.

Two parts:

* `to_torch(params, table)` and `from_torch(state_dict, table)` (and `TorchWeightsError`)
  depend on numpy and the table only: they live in the runtime (`nndsl/runtime/
  torch_weights.py`), which a generated module carries, so `Model.state_dict()` and
  `Model.load_torch(sd)` work without nndsl installed.
* `torch_table(model_ir)` makes the table from a checked model (it reads the IR's
  attributes and imports nothing either). The table is lists, dicts, strings, ints and
  floats only, so it is written into a generated module as a literal (`TORCH_TABLE`).

The table (`"format": 1`):

    {"format": 1,
     "model": "lstm_digits",
     "entries": [ENTRY, ...],      # one per state_dict key, in state_dict order
     "modules": [MODULE, ...]}     # the torch.nn modules that hold them (informative)

    ENTRY = {"key":    "h.weight_ih_l0",        # the state_dict key
             "shape":  [128, 8],                # the torch tensor's shape
             "mode":   "copy" | "add",
             "parts":  ["h.W_i", "h.W_f", "h.W_c", "h.W_o"],   # nndsl parameters, in order
             "part_shapes": [[32, 8], [32, 8], [32, 8], [32, 8]],
             "perm":   None or [1, 0, ...],     # np.transpose of each part before stacking
             "axis":   0,                       # the parts are concatenated along this axis
             "zero":   [[64, 96], ...]}         # "add" only: index ranges along `axis` that
                                                # must be 0 when read from torch

    "copy": the torch tensor is the concatenation of the (transposed) parts; to_torch
            builds it, from_torch splits it back.
    "skip": a torch buffer nndsl does not keep (a batchnorm's `num_batches_tracked`):
            to_torch writes zeros of the entry's "dtype", from_torch reads and drops it.
    "add":  a tensor nndsl has no separate parameter for, whose slices add to the parts
            (a recurrence's `bias_hh`: torch adds it to `bias_ih` for every gate but the
            GRU's candidate): to_torch writes zeros; from_torch adds its slices to the
            parts after every "copy" entry, and refuses non-zero values in `zero` (the
            GRU's b_hn sits inside r ⊙ (U_h h + b_hn), which nndsl's GRU does not have).

    MODULE = {"name": "h", "type": "LSTM", "kwargs": {"input_size": 8, "hidden_size": 32,
              "batch_first": True}, "note": "..."}        # type "Parameter": no torch layer
"""
from __future__ import annotations

import numpy as np

from ..registry import registrar
from ..runtime.torch_weights import TABLE_FORMAT, TorchWeightsError, from_torch, to_torch  # noqa: F401  (the API)


# ------------------------------------------------------------------ the table
# op -> function(node, param_shapes) -> (entries, modules). One function per kind of layer
# PyTorch has; a layer kind that is not here keeps its parameters under their nndsl names
# (type "Parameter"). A part may also name a running statistic (`ModelIR.stats`): the
# runtime passes parameters and statistics together.
TORCH_LAYOUTS: dict = {}


torch_layout = registrar(TORCH_LAYOUTS)       # @torch_layout(*ops)


def _entry(key, parts, shapes, mode="copy", axis=0, perm=None, zero=None, why=None, dtype=None):
    shown = [[s[i] for i in perm] if perm is not None else list(s) for s in shapes]
    shape = list(shown[0])
    if len(parts) > 1:
        shape[axis] = sum(s[axis] for s in shown)
    e = {"key": key, "shape": [int(s) for s in shape], "mode": mode, "parts": list(parts),
         "part_shapes": [[int(d) for d in s] for s in shapes], "perm": perm, "axis": axis}
    if zero:
        e["zero"] = [[int(lo), int(hi)] for lo, hi in zero]
        e["why"] = why
    if dtype:
        e["dtype"] = dtype
    return e


def _prefix(node) -> str:
    """The torch module path of a node: its parameters' names without the last part
    (a network's shared layer `generator.h.W` -> `generator.h`, whichever call it is)."""
    first = next(iter(node.params.values()))
    return first.rsplit(".", 1)[0]


def _copies(node, shapes, keys) -> list:
    """One "copy" entry per torch key {torch name: our local name} the node has."""
    p = _prefix(node)
    return [_entry(f"{p}.{key}", [node.params[local]], [shapes[node.params[local]]])
            for key, local in keys.items() if local in node.params]


@torch_layout("dense")
def _linear(node, shapes):
    p = _prefix(node)
    entries = _copies(node, shapes, {"weight": "W", "bias": "b"})
    units, d = shapes[node.params["W"]]
    module = {"name": p, "type": "Linear",
              "kwargs": {"in_features": int(d), "out_features": int(units), "bias": "b" in node.params},
              "note": f"then act={node.attrs.get('act', 'identity')}"}
    return entries, [module]


@torch_layout("conv2d")
def _conv2d(node, shapes):
    p = _prefix(node)
    entries = _copies(node, shapes, {"weight": "W", "bias": "b"})
    f, c, k, _ = shapes[node.params["W"]]
    module = {"name": p, "type": "Conv2d",
              "kwargs": {"in_channels": int(c), "out_channels": int(f), "kernel_size": int(k),
                         "stride": int(node.attrs["stride"]), "padding": int(node.attrs["pad"]),
                         "bias": "b" in node.params},
              "note": f"then act={node.attrs.get('act', 'identity')}"}
    return entries, [module]


@torch_layout("embed")
def _embedding(node, shapes):
    p = _prefix(node)
    rows, dim = shapes[node.params["E"]]
    return (_copies(node, shapes, {"weight": "E"}),
            [{"name": p, "type": "Embedding", "kwargs": {"num_embeddings": int(rows), "embedding_dim": int(dim)},
              "note": "the input holds class indices (int64)"}])


def _gain_shift(node, shapes):
    return (_prefix(node), _copies(node, shapes, {"weight": "g", "bias": "b"}),
            int(shapes[node.params["g"]][0]))


@torch_layout("layernorm")
def _layernorm(node, shapes):
    p, entries, k = _gain_shift(node, shapes)
    return entries, [{"name": p, "type": "LayerNorm",
                      "kwargs": {"normalized_shape": k, "eps": float(node.attrs["eps"])},
                      "note": "over the last axis"}]


@torch_layout("batchnorm")
def _batchnorm(node, shapes):
    p, entries, k = _gain_shift(node, shapes)
    stats = node.attrs["stats"]
    for local in ("running_mean", "running_var"):
        entries.append(_entry(f"{p}.{local}", [stats[local]], [shapes[stats[local]]]))
    entries.append(_entry(f"{p}.num_batches_tracked", [], [[]], mode="skip", dtype="int64"))
    rank = len(node.shape)
    note = {1: "", 2: "a sequence (N, T, K): torch's BatchNorm1d wants (N, K, T), transpose around it",
            3: ""}[rank]
    return entries, [{"name": p, "type": "BatchNorm2d" if rank == 3 else "BatchNorm1d",
                      "kwargs": {"num_features": k, "eps": float(node.attrs["eps"]),
                                 "momentum": float(node.attrs["momentum"])}, "note": note}]


# torch's gate order of the stacked tensors, in our gate names (docs/architecture.md,
# "Parity with PyTorch"): LSTM i, f, g (= our c), o; GRU r, z, n (= our h)
TORCH_GATES = {"rnn": ("",), "lstm": ("_i", "_f", "_c", "_o"), "gru": ("_r", "_z", "_h")}


@torch_layout("rnn", "lstm", "gru")
def _recurrent(node, shapes):
    p = _prefix(node)
    gates = TORCH_GATES[node.op]
    H = int(node.attrs["hidden"])
    names = {k: [node.params[k + g] for g in gates] for k in ("W", "U", "b")}
    zero = why = None
    if node.op == "gru":       # b_hn: inside r ⊙ (U_h h + b_hn); ours has no such bias
        zero, why = [(2 * H, 3 * H)], "nndsl's GRU has no bias inside r ⊙ (U_h h), torch's b_hn"
    entries = [
        _entry(f"{p}.weight_ih_l0", names["W"], [shapes[n] for n in names["W"]]),
        _entry(f"{p}.weight_hh_l0", names["U"], [shapes[n] for n in names["U"]]),
        _entry(f"{p}.bias_ih_l0", names["b"], [shapes[n] for n in names["b"]]),
        _entry(f"{p}.bias_hh_l0", names["b"], [shapes[n] for n in names["b"]], mode="add",
               zero=zero, why=why),
    ]
    kwargs = {"input_size": int(shapes[names["W"][0]][1]), "hidden_size": H, "batch_first": True}
    note = f"return={node.attrs.get('return', 'all')}" + ("" if node.attrs.get("return") == "all"
                                                          else ": the output's last step")
    if node.op == "rnn":
        act = node.attrs.get("act", "tanh")
        if act in ("tanh", "relu"):
            kwargs["nonlinearity"] = act
        else:
            note += f"; act={act}: torch.nn.RNN has tanh and relu only"
    return entries, [{"name": p, "type": {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[node.op],
                      "kwargs": kwargs, "note": note}]


def torch_table(model_ir) -> dict:
    """The table of `to_torch`/`from_torch` for a checked model (format above)."""
    shapes = {p.name: tuple(int(s) for s in p.shape) for p in (*model_ir.params, *model_ir.stats)}
    entries, modules, covered = [], [], set()
    for node in model_ir.nodes:
        if not node.params or set(node.params.values()) <= covered:   # a network's second call
            continue
        layout = TORCH_LAYOUTS.get(node.op)
        if layout is not None:
            es, ms = layout(node, shapes)
            entries += es
            modules += ms
            covered |= set(node.params.values())
    for p in model_ir.params:          # user layers: under their own names, as nn.Parameters
        if p.name not in covered:
            entries.append(_entry(p.name, [p.name], [shapes[p.name]]))
            modules.append({"name": p.name, "type": "Parameter", "kwargs": {"shape": list(shapes[p.name])},
                            "note": "no torch layer: the nndsl parameter as it is"})
    return {"format": TABLE_FORMAT, "model": model_ir.name, "entries": entries, "modules": modules}
