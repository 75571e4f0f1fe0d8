"""The generated module `NAME.py`, for any target: the model's tables and plan functions, then
the target's `class Model` (each renderer writes that part).

The module is what is the model's own. Everything that is the same for every model — the
`Model` API, `fit`, save/load, threads, data-parallel steps — is the runtime package
(`nndsl/runtime/`), which the build copies beside the kernels as `runtime_HASH/` and the
module imports from there.
"""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import jinja2
import sympy as sp

from ..plan.kernels import BUFFERS, Storage
from .printer import index_text

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"


def runtime_files() -> tuple[str, dict[str, str]]:
    """(the runtime package's name in a kernel folder, {file name: text}): every module of
    `nndsl/runtime/`, named by a hash of them all."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(RUNTIME_DIR.glob("*.py"))}
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in files.items()).encode()).hexdigest()[:12]
    return f"runtime_{digest}", files


def view_text(t, st: Storage) -> str:
    """The text of a tensor viewed in its buffer: `ws[a:b].reshape(shape)` (`.T` for one stored
    batch-last), or the data argument itself."""
    if st.base not in BUFFERS:
        return st.base
    lo = st.offset
    hi = sp.expand(lo + sp.prod(t.shape))
    dims = t.shape[::-1] if st.batch_last else t.shape
    shape = "(" + ", ".join(index_text([d]) for d in dims) + ("," if len(dims) == 1 else "") + ")"
    line = f"{st.base}[{index_text([lo])}:{index_text([hi])}].reshape({shape})"
    return line + ".T" if st.batch_last else line


def environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["pyshape"] = lambda s: "(" + ", ".join(repr(x) for x in s) + ("," if len(s) == 1 else "") + ")"
    env.filters["dict"] = lambda d: "{" + ", ".join(f"{k!r}: {v!r}" for k, v in d.items()) + "}"
    env.filters["pylist"] = lambda rows: repr([list(r) for r in rows])
    env.filters["tuple"] = lambda xs: repr(tuple(xs))
    env.filters["ints"] = lambda xs: ", ".join(index_text([x]) for x in xs)
    env.filters["int_text"] = lambda x: index_text([x])
    env.filters["steps"] = lambda b: (f"range({index_text([b.count])} - 1, -1, -1)" if b.reverse
                                      else f"range({index_text([b.count])})")
    return env


def context(spec, source_file: str, source_hash: str, target: str, version: str) -> dict:
    """What module.py.j2 renders, from a ModulePlan."""
    model = spec.model
    size_names = ["N"] + [s for s, _, _ in spec.free_sizes]
    train = model.train
    node_info = [dict(n, view=view_text(spec.tensors[n["ident"]], spec.storage[n["ident"]]))
                 for n in spec.node_info]
    return dict(
        version=version, source_file=source_file, dtype=spec.dtype, target=target, source_hash=source_hash,
        model=model, params=spec.params, n_params=spec.n_params, data=spec.data,
        free_size_names=repr(tuple(s for s, _, _ in spec.free_sizes)), ws_size=index_text([spec.ws_size]),
        losses=spec.losses, output_names=repr(list(model.outputs)),
        loss_names=repr([l.name for l in spec.losses]), data_names=[d["name"] for d in spec.data],
        forward_inputs=spec.forward_inputs, inputs=[d.name for d in model.inputs], node_info=node_info,
        size_args=", ".join(size_names), masks=spec.masks,
        output_views=[view_text(spec.tensors[o], spec.storage[o]) for o in spec.outputs],
        plans=list(spec.plans.plans.values()), width=spec.plans.width,
        forward_is_nodes=_same_rows(spec.plans.plans["forward"], spec.plans.plans["nodes"]),
        train=repr(dict(batch=train.batch, epochs=train.epochs, shuffle=train.shuffle,
                        clip_norm=train.clip_norm, seed=train.seed, d_steps=train.d_steps)),
    )


def _torch_table_text(table: dict) -> str:
    """The table's entries, one per line (its list of torch modules is documentation: left out)."""
    entries = "".join(f"\n    {e!r}," for e in table["entries"])
    return f"{{'format': {table['format']!r}, 'model': {table['model']!r}, 'entries': [{entries}\n]}}"


def _same_rows(a, b) -> bool:
    """Whether two plans run the same kernel calls (the node a row computes aside): the plan of
    the outputs is then the plan of every node, which runs all rows when no node is given."""
    def key(rows):
        return [(r.branch, tuple(r.ints)) if not hasattr(r, "items") else ("block", r.count, r.reverse, key(r.items))
                for r in rows]
    return a.n_forward == b.n_forward and key(a.rows) == key(b.rows)


def render_module(env, spec, renderer, target_context: dict, kernel_names: list[str], kernel_dir: str,
                  runtime: str, source_file: str, source_hash: str, target: str, version: str,
                  roles: dict) -> str:
    """NAME.py; `roles`: what the build knows of the data beyond the plan (the PyTorch table,
    the metrics, a language model's parts: frontend/roles.py, export/torch_weights.py)."""
    ctx = context(spec, source_file, source_hash, target, version)
    ctx.update(torch_table=_torch_table_text(roles["torch_table"]), metrics=roles["metrics"],
               sequence=roles["sequence"])
    block = renderer.module_block(spec, target_context, source_file)
    kernels = textwrap.fill(", ".join(repr(n) for n in kernel_names), 96, initial_indent="    ",
                            subsequent_indent="    ")
    block = (f"\n# The shared files of this module in KERNEL_DIR: its kernels, and the runtime package.\n"
             f"KERNELS = [\n{kernels}\n]\nRUNTIME = {runtime!r}\n" + block)
    return env.get_template("module.py.j2").render(
        **ctx, kernel_dir=kernel_dir, runtime=runtime, target_module=renderer.NAME, base_class=renderer.BASE_CLASS,
        target_block=block)
