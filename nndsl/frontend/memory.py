"""How much memory a training step needs, from the checked model alone (no code generated).

The generated module holds: `theta` and `grad` (one value per parameter each), two
optimiser-state vectors of the same length per named loss, and one workspace of
values per example times the batch. The workspace holds every node's value and
gradient plus each loss's intermediates, so it is estimated as 2 + 2 x (number of
losses) values per node value (against the kernel plan's exact workspace_size for
the examples: 0.7x to 1.7x; parameters usually dominate anyway).

`nndsl check` prints the estimate and warns past half of the machine's memory;
`nndsl build` and `nndsl train` refuse a model that exceeds the machine's memory,
naming its largest tensors, instead of dying in numpy's allocator.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod
from typing import Optional

from ..diagnostics import CompileError, Diagnostic
from . import ir

ITEMSIZE = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class MemoryEstimate:
    params: int               # values in theta
    state: int                # optimiser state values (and the gradient vector)
    per_example: int          # workspace values per example (free sizes counted as 1)
    largest: tuple[tuple[str, tuple, int], ...]    # (name, shape, values), biggest first

    def values(self, batch: int) -> int:
        return self.params + self.state + self.per_example * batch

    def bytes(self, batch: int, dtype: str = "float32") -> int:
        return self.values(batch) * ITEMSIZE[dtype]


def estimate(model: ir.ModelIR) -> MemoryEstimate:
    trainable = sum(prod(p.shape) for p in model.params)
    n_params = trainable + sum(prod(p.shape) for p in model.stats)     # running statistics too
    state = trainable * (1 + 2 * max(len(model.losses), 1))
    sizes = [(n.name, tuple(n.shape), _size(n.shape)) for n in model.nodes]
    per_example = (2 + 2 * max(len(model.losses), 1)) * sum(s for _, _, s in sizes)
    tensors = [(p.name, tuple(p.shape), prod(p.shape)) for p in model.params]
    tensors += [(f"{name} (per example)", shape, s) for name, shape, s in sizes]
    largest = tuple(sorted(tensors, key=lambda t: -t[2])[:3])
    return MemoryEstimate(n_params, state, per_example, largest)


def machine_memory() -> Optional[int]:
    """Physical memory in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def summary_lines(model: ir.ModelIR, batch: Optional[int] = None) -> list[str]:
    """`nndsl check`'s memory section (float32, the default dtype)."""
    est = estimate(model)
    batch = batch or model.train.batch
    total = est.bytes(batch)
    lines = [f"parameters {fmt_bytes(est.params * 4)}, optimiser state and gradient "
             f"{fmt_bytes(est.state * 4)}, workspace {fmt_bytes(est.per_example * 4)} per example "
             f"x batch {batch} = {fmt_bytes(est.per_example * 4 * batch)}",
             f"a training step needs about {fmt_bytes(total)} in float32 "
             f"({fmt_bytes(est.bytes(batch, 'float64'))} in float64)"]
    have = machine_memory()
    if have and total > have // 2:
        lines.append(f"warning: that is more than half of this machine's {fmt_bytes(have)}; "
                     f"largest: {_largest(est)}")
    return lines


def check_fits(model: ir.ModelIR, dtype: str = "float32", batch: Optional[int] = None) -> None:
    """CompileError when a training step would not fit in this machine's memory."""
    have = machine_memory()
    batch = batch or model.train.batch
    need = estimate(model).bytes(batch, dtype)
    if have is None or need <= have:
        return
    raise CompileError(Diagnostic(
        f"model `{model.name}` needs about {fmt_bytes(need)} for a training step "
        f"({dtype}, batch {batch}), more than this machine's {fmt_bytes(have)}", None,
        hint=f"largest tensors: {_largest(estimate(model))}; make them smaller"
             + (" (or the batch)" if dtype == "float32" else " (or the batch, or use --dtype float32)")))


def _largest(est: MemoryEstimate) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, shape))} ({fmt_bytes(v * 4)} in float32)"
                     for name, shape, v in est.largest)


def _size(shape) -> int:
    return prod(1 if isinstance(s, str) else int(s) for s in shape)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
