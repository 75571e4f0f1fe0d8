"""Taking a trained model elsewhere: ONNX export, PyTorch state_dicts (docs/export.md).

    import nndsl.export as nx
    nx.export_onnx("m.nn", "w.npz", "m.onnx")            # or weights=m, a live Model
    sd = nx.torch_state_dict("m.nn", "w.npz")            # {torch name: ndarray}
    params = nx.params_from_torch("m.nn", net.state_dict())   # {nndsl name: ndarray}

`model` arguments take a path to the `.nn` file or a checked `ModelIR`; `weights` a file
written by `Model.save` or a `Model` itself. Mistakes raise `ExportError` (one line) or
`nndsl.diagnostics.UsageError` / `CompileError` as the command line reports them.
"""
from __future__ import annotations

import os

from .errors import ExportError
from .torch_weights import TorchWeightsError, from_torch, to_torch, torch_table
from .weights import read_params

__all__ = ["ExportError", "TorchWeightsError", "export_onnx", "onnx_model", "read_params",
           "torch_state_dict", "params_from_torch", "torch_table", "to_torch", "from_torch"]


def _model(model):
    if isinstance(model, (str, os.PathLike)):
        from ..frontend import load_model
        return load_model(model)
    return model


def onnx_model(model, weights, opset: int = 17, dtype=None, lengths: bool = False):
    """The checked onnx.ModelProto of the model's inference graph (nothing written)."""
    from .onnx_export import onnx_model as build
    model = _model(model)
    return build(model, read_params(model, weights), opset=opset, dtype=dtype, lengths=lengths)


def export_onnx(model, weights, out, opset: int = 17, dtype=None, lengths: bool = False) -> str:
    """Writes the inference graph to `out` atomically (opset 17..21; dtype float32/float64,
    default the weights'; lengths=True adds an int32 `X_lengths` input per free sequence
    length, as `forward(X_lengths=)`). Returns the path."""
    from .onnx_export import write_atomically
    proto = onnx_model(model, weights, opset=opset, dtype=dtype, lengths=lengths)
    out = os.fspath(out)
    write_atomically(proto.SerializeToString(), out)
    return out


def torch_state_dict(model, weights, tensors: bool = False) -> dict:
    """The parameters under PyTorch's names and layouts (`torch_table`): numpy arrays, or
    torch tensors with tensors=True, for `net.load_state_dict(...)`."""
    model = _model(model)
    sd = to_torch(read_params(model, weights), torch_table(model))
    if tensors:
        import torch
        sd = {k: torch.from_numpy(v) for k, v in sd.items()}
    return sd


def params_from_torch(model, state_dict) -> dict:
    """{nndsl parameter: ndarray} from a PyTorch state_dict of the layout `torch_table` gives
    (a recurrence's bias_hh is added to its biases; a GRU's b_hn must be 0). Set them with
    `for k, v in params.items(): m.params[k][...] = v`."""
    model = _model(model)
    return from_torch(state_dict, torch_table(model))
