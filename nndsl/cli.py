"""The `nndsl` command line: check, grad, build, train, export.

Exit codes: 0 success, 1 a bad model (diagnostics printed), 2 bad usage.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from .diagnostics import CompileError, UsageError, render_all
from .render import TARGETS


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse exits 2 itself; keep the message short
        self.print_usage(sys.stderr)
        print(f"nndsl: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _threads(text: str):
    """`auto` or a positive integer."""
    return "auto" if text == "auto" else _at_least(1)(text)


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum, with a one-line message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _number(ok, what: str):
    """An argparse type: a number for which `ok(value)` holds ("must be WHAT" otherwise)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_fraction = _number(lambda v: 0 <= v < 1, "at least 0 and below 1")
_positive_float = _number(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def _arg_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nndsl", description="Compile .nn network definitions to Numba code.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("check", help="parse and check a model; print a summary")
    c.add_argument("file")

    g = sub.add_parser("grad", help="print the derived gradient formulas")
    g.add_argument("file")
    g.add_argument("--param", help="only this parameter (e.g. h.W)")
    g.add_argument("--latex", action="store_true", help="LaTeX instead of plain text")

    b = sub.add_parser("build", help="write DIR/NAME.py, a standalone Numba module")
    b.add_argument("file")
    b.add_argument("-o", "--out", default=".", help="output directory (default: .)")
    b.add_argument("--target", choices=list(TARGETS), default="cpu")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument("--ptx", metavar="DIR",
                   help="with --target cuda: compile every kernel for sm_90 and write DIR/KERNEL.FUNC.ptx")
    b.add_argument("--timings", action="store_true",
                   help="report the time of each stage, numba's compilation of the kernels included")

    t = sub.add_parser("train", help="build and train on a bundled data set or an .npz file")
    t.add_argument("file")
    t.add_argument("--data", required=True,
                   help="digits|iris|breast_cancer|diabetes|wine|mnist (nndsl[data]), names (first names "
                        "letter by letter, nndsl[text]), sine (noisy sines), or FILE.npz (docs/data.md)")
    t.add_argument("--epochs", type=_at_least(1))
    t.add_argument("--batch-size", type=_at_least(1))
    t.add_argument("--lr", type=_positive_float, help="learning rate of every optimiser (default: the model's)")
    t.add_argument("--standardize", action="store_true",
                   help="standardise an .npz file's features (and real targets) with the training mean and std")
    t.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F",
                   help="hold out F of the training split for validation (default 0.1, seeded, stratified "
                        "by class): the per-epoch `val` loss and --patience watch it; 0: none. The test "
                        "split is evaluated once, at the end")
    t.add_argument("--patience", type=_at_least(1), metavar="K",
                   help="stop when the validation loss has not improved for K epochs, keeping the best "
                        "epoch's parameters")
    t.add_argument("--out", help="directory for the module, weights and pictures")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=_at_least(0), default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--target", choices=list(TARGETS), default="cpu",
                   help="train the CPU module (default) or the CUDA module on the GPU (nndsl[cuda])")
    t.add_argument("--tf32", action="store_true",
                   help="with --target cuda: float32 GEMMs on TF32 tensor cores (about 3 decimal digits "
                        "less in each product, as JAX's default); off by default")
    t.add_argument("--threads", type=_threads, default="auto", metavar="K|auto",
                   help="threads of a training step: auto (default: the fastest way on the cores free "
                        "now, measured on the steps themselves) or K (Model(threads=K); 1: the same bits "
                        "every run); with --workers the processes share the cores")
    # data-parallel training and checkpoints (docs/scaling.md)
    t.add_argument("--workers", type=_at_least(1), default=1,
                   help="train on K MPI processes (runs mpiexec -n K; needs the mpi extra)")
    t.add_argument("--checkpoint", metavar="DIR", help="write DIR/checkpoint.npz every --every batches")
    t.add_argument("--every", type=_at_least(0), default=0, metavar="K",
                   help="checkpoint every K batches (default: every epoch)")
    t.add_argument("--resume", metavar="DIR", help="continue from DIR/checkpoint.npz (same command otherwise)")

    e = sub.add_parser("export", help="write the trained inference graph as ONNX (docs/export.md)")
    e.add_argument("file")
    e.add_argument("--weights", metavar="W.npz", help="the parameters: a file written by Model.save")
    e.add_argument("-o", "--out", metavar="FILE.onnx", help="output file (default: NAME.onnx)")
    e.add_argument("--opset", default="17", help="ONNX opset, 17..21 (default: 17)")
    e.add_argument("--dtype", choices=["float32", "float64"],
                   help="the graph's float type (default: the weights')")
    e.add_argument("--lengths", action="store_true",
                   help="an int32 input X_lengths per free sequence length (forward's X_lengths=), "
                        "given to the recurrences as sequence_lens")
    return p


def main(argv=None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()          # a pipe closed early fails here, not in Python's exit-time flush
        return code
    except BrokenPipeError:
        # stdout closed early (`nndsl train ... | head -2`): stop quietly, like a shell tool
        # killed by SIGPIPE; point stdout at /dev/null so the exit-time flush cannot fail too
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _arg_parser().parse_args(argv)
    args.argv = argv                   # `train --workers K` runs the same command under mpiexec
    if args.version:
        from . import __version__
        print(f"nndsl {__version__}")
        return 0
    if not args.command:
        _arg_parser().print_help(sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"nndsl: error: {exc}", file=sys.stderr)
        return 2
    except CompileError as exc:
        source = getattr(exc, "source", None)
        if source is None:
            source = _source_of(args.file)
        print(render_all(exc.diagnostics, source, args.file), file=sys.stderr)
        n = len(exc.diagnostics)
        print(f"{n} error{'s' if n != 1 else ''} in {args.file}", file=sys.stderr)
        return 1
    except FloatingPointError as exc:    # training diverged (the data were checked before)
        print(f"nndsl: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print("nndsl: error: out of memory (see the estimate of `nndsl check`; try a smaller "
              "--batch-size)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:     # fit's message says where, and the checkpoint
        print(f"nndsl: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130


def _source_of(path: str) -> str:
    from .frontend import read_source
    try:
        return read_source(path)
    except UsageError:
        return ""


def _cmd_check(args) -> int:
    from .frontend import load_model
    from .frontend.summary import summarize
    model = load_model(args.file)
    print(summarize(model))
    return 0


def _cmd_grad(args) -> int:
    from .calculus.gradprint import format_gradients
    from .frontend import load_model
    model = load_model(args.file)
    print(format_gradients(model, param=args.param, latex=args.latex))
    return 0


def _cmd_build(args) -> int:
    from .build import build_file
    result = build_file(args.file, args.out, dtype=args.dtype, target=args.target,
                        compile=args.timings and args.target == "cpu", ptx=args.ptx)
    print(f"wrote {result.path}")
    if result.ptx:
        print(f"wrote {len(result.ptx)} PTX files (sm_90) to {args.ptx}")
    if args.timings:
        for stage, seconds in result.timings.items():
            print(f"  {stage:<12} {seconds * 1000:8.1f} ms")
        print(_kernel_report(result))
    return 0


def _kernel_report(result) -> str:
    """Distinct kernels per kind, how many numba compiled in this process (the others were
    compiled by the helper process or loaded from numba's cache), and its seconds per kind."""
    by_kind = {name: kind for kind, names in result.kernels.items() for name in names}
    lines = [f"  {sum(map(len, result.kernels.values()))} distinct kernels (the entry included), "
             f"{sum(1 for k in result.compiled if k in by_kind)} compiled in this process "
             "(the others by its helper process or from numba's cache):"]
    for kind, names in result.kernels.items():
        done = [result.compiled[n] for n in names if n in result.compiled]
        lines.append(f"    {kind:<10} {len(names):3d} kernels, {len(done):3d} compiled {sum(done) * 1000:8.1f} ms")
    other = {k: v for k, v in result.compiled.items() if k not in by_kind}
    if other:
        lines.append(f"    {'numba own':<10} {sum(other.values()) * 1000:29.1f} ms  (its helpers, once a process)")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    from .train.command import train_command
    return train_command(args)


def _cmd_export(args) -> int:
    from .export.onnx_export import OPSETS
    opset = int(args.opset) if args.opset.strip().isdigit() else None
    if opset not in OPSETS:
        raise UsageError(f"--opset {args.opset}: nndsl exports ONNX opsets {OPSETS.start}..{OPSETS.stop - 1}")
    if not args.weights:
        raise UsageError("export needs --weights W.npz, a file written by the module's Model.save")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError('export needs the onnx package: pip install -e ".[onnx]"') from None
    from .export import ExportError, export_onnx
    from .frontend import load_model
    model = load_model(args.file)
    out = args.out or f"{model.name}.onnx"
    try:
        export_onnx(model, args.weights, out, opset=opset, dtype=args.dtype, lengths=args.lengths)
    except ExportError as exc:          # a layer with no ONNX form, weights of another model: exit 1
        print(f"nndsl: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} (ONNX opset {opset}; outputs {', '.join(model.outputs)})")
    return 0


_COMMANDS = {"check": _cmd_check, "grad": _cmd_grad, "build": _cmd_build, "train": _cmd_train,
             "export": _cmd_export}
