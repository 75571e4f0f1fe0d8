"""What a generated module knows of its model, handed to the runtime in one object."""
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Step:
    """How one named loss is computed and trained."""
    value_plan: str          # the plan of `loss` and `grad` (its gradient covers every parameter)
    train_plan: str          # the plan of `step` (the gradient of the loss's `wrt` parameters only)
    data: tuple              # the inputs and targets the loss reads, in DATA order
    update: int              # the entry's optimiser-update arm (1, 2, ...)
    ranges: object           # (R, 3) int64 array: flat ranges of theta that `step` updates, whether they decay
    eval_plan: str = None    # the loss as `forward` computes it (running statistics); None: value_plan


@dataclass(frozen=True)
class ModelTables:
    """A model's tables and plan functions, as its generated module defines them.

    Sizes: a plan function takes the batch size and then the model's free sizes (`T`, ...)
    in `free_sizes` order; `size_args` makes that argument list."""
    name: str
    source_hash: str
    dtype: type                      # np.float32 | np.float64
    params: dict                     # name -> (offset in theta, shape, init, init argument, fan_in, fan_out)
    n_params: int
    data: dict                       # name -> (per-example shape, number of classes or None, is a target)
    free_sizes: tuple                # the free size names, in the order plan functions take them
    outputs: tuple                   # the declared outputs (what `forward` returns)
    nodes: dict                      # node -> (per-example shape, the nodes or inputs it reads)
    inputs: tuple
    forward_inputs: tuple            # the inputs the declared outputs depend on
    losses: tuple
    optimizers: dict                 # loss -> (kind, {argument: value})
    train: dict                      # the `train` statement's defaults
    steps: dict                      # loss -> Step
    plans: dict                      # plan name -> (fill(N, *sizes), rows before the gradient or None)
    workspace_size: Callable         # (N, *sizes) -> workspace elements
    value_at: Callable               # (N, *sizes) -> {loss: where its value sits in the workspace}
    output_views: Callable           # (ws, N, *sizes) -> the declared outputs' views
    node_views: Callable             # (ws, N, *sizes) -> {node: its view}
    masks: dict = field(default_factory=dict)    # step mask -> (free size, the input whose lengths make it)
    torch_table: dict = None                     # PyTorch names and layouts (runtime/torch_weights.py)
    metrics: tuple = ()                          # (metric, prediction node, target): what `evaluate` reports
    sequence: dict = None                        # a language model's input, logits and classes (`generate`)
    stats: tuple = ()                            # running statistics: entries of `params` that are model state
    lengths: dict = field(init=False)             # "x_lengths" -> its step mask

    def __post_init__(self):
        object.__setattr__(self, "lengths", {source + "_lengths": mask for mask, (_, source) in self.masks.items()})

    def size_args(self, n_rows, sizes) -> tuple:
        """The arguments of a plan function for a batch of `n_rows` with free sizes `sizes`."""
        return (n_rows, *(sizes.get(s, 1) for s in self.free_sizes))

    def parameter_count(self, name) -> int:
        size = 1
        for d in self.params[name][1]:
            size *= d
        return size
