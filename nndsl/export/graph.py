"""A small ONNX graph builder: nodes, initializers, unique names, cached constants."""
from __future__ import annotations

import numpy as np


class OnnxGraph:
    def __init__(self, dtype: np.dtype):
        from onnx import TensorProto, helper, numpy_helper
        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.dtype = np.dtype(dtype)
        self.elem = TensorProto.DOUBLE if self.dtype == np.float64 else TensorProto.FLOAT
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self.used: set[str] = set()
        self.producer: dict[str, object] = {}     # tensor -> the node that writes it
        self.consumed: set[str] = set()
        self._consts: dict = {}
        self.scope = "graph"

    # -- names ----------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new tensor name: `scope/hint`, numbered when taken (node names have no '/')."""
        base = f"{self.scope}/{hint}"
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    # -- nodes ----------------------------------------------------------------
    def op(self, op_type: str, inputs, outputs: int = 1, **attrs):
        """Appends a node; returns its output name (a list when `outputs` > 1)."""
        names = [self.fresh(op_type) for _ in range(outputs)]
        node = self.helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type + ":node"), **attrs)
        self.nodes.append(node)
        self.consumed.update(i for i in inputs if i)
        for n in names:
            self.producer[n] = node
        return names if outputs > 1 else names[0]

    def rename(self, tensor: str, name: str) -> str:
        """Gives the tensor a chosen name (a node's), if a node of this graph wrote it, no node
        read it yet and the name is free; returns the tensor's name either way."""
        node = self.producer.get(tensor)
        if node is None or tensor in self.consumed or name in self.used:
            return tensor
        outs = list(node.output)
        outs[outs.index(tensor)] = name
        del node.output[:]
        node.output.extend(outs)
        del self.producer[tensor]
        self.producer[name] = node
        self.used.add(name)
        return name

    # -- constants ------------------------------------------------------------
    def initializer(self, array: np.ndarray, name: str) -> str:
        """A constant named `name` (numbered when taken); 0-d arrays stay 0-d."""
        base, k = name, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        self.initializers.append(self.numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def param(self, array: np.ndarray, name: str) -> str:
        """A float initializer of the graph's dtype, named `name` (cached by name)."""
        key = ("param", name)
        if key not in self._consts:
            self._consts[key] = self.initializer(np.asarray(array, self.dtype), name)
        return self._consts[key]

    def scalar(self, value: float) -> str:
        key = ("scalar", float(value))
        if key not in self._consts:
            self._consts[key] = self.initializer(np.array(value, self.dtype), f"const/{value!r}")
        return self._consts[key]

    def ints(self, values) -> str:
        values = tuple(int(v) for v in values)
        key = ("ints", values)
        if key not in self._consts:
            self._consts[key] = self.initializer(np.array(values, np.int64), f"const/i{list(values)}")
        return self._consts[key]

    def int_scalar(self, value: int) -> str:
        key = ("int", int(value))
        if key not in self._consts:
            self._consts[key] = self.initializer(np.array(int(value), np.int64), f"const/i{value}")
        return self._consts[key]

    # -- shape helpers --------------------------------------------------------
    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes)]) if axes else x

    def squeeze(self, x: str, axes) -> str:
        return self.op("Squeeze", [x, self.ints(axes)])

    def transpose(self, x: str, perm) -> str:
        perm = list(perm)
        return x if perm == sorted(perm) else self.op("Transpose", [x], perm=perm)

    # -- graph I/O ------------------------------------------------------------
    def value_info(self, name: str, elem, dims):
        return self.helper.make_tensor_value_info(name, elem, [d if isinstance(d, str) else int(d) for d in dims])

    def add_input(self, name: str, dims, elem=None) -> str:
        self.used.add(name)
        self.inputs.append(self.value_info(name, self.elem if elem is None else elem, dims))
        return name

    def add_output(self, name: str, dims) -> None:
        self.outputs.append(self.value_info(name, self.elem, dims))
