"""The `nndsl` command line: check, grad, build, train.

Exit codes: 0 success, 1 a bad model (diagnostics printed), 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys

from .diagnostics import CompileError, UsageError, render_all


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse exits 2 itself; keep the message short
        self.print_usage(sys.stderr)
        print(f"nndsl: error: {message}", file=sys.stderr)
        raise SystemExit(2)


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
    b.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument("--ptx", metavar="DIR",
                   help="with --target cuda: compile every kernel for sm_90 and write DIR/KERNEL.FUNC.ptx")
    b.add_argument("--timings", action="store_true",
                   help="report the time of each stage, numba's compilation of the kernels included")

    t = sub.add_parser("train", help="build and train on a bundled data set or an .npz file")
    t.add_argument("file")
    t.add_argument("--data", required=True, help="digits|iris|breast_cancer|diabetes|wine|mnist or FILE.npz")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--out", help="directory for the module, weights and pictures")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        print("nndsl: interrupted", file=sys.stderr)
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
    """Distinct kernels per kind, how many numba compiled now (the rest came from its cache),
    and numba's seconds per kind."""
    by_kind = {name: kind for kind, names in result.kernels.items() for name in names}
    lines = [f"  {sum(map(len, result.kernels.values()))} distinct kernels, "
             f"{sum(1 for k in result.compiled if k in by_kind)} compiled now (others from numba's cache):"]
    for kind, names in result.kernels.items():
        done = [result.compiled[n] for n in names if n in result.compiled]
        lines.append(f"    {kind:<10} {len(names):3d} kernels, {len(done):3d} compiled {sum(done) * 1000:8.1f} ms")
    other = {k: v for k, v in result.compiled.items() if k not in by_kind}
    lines.append(f"    {'entry':<10} {sum(other.values()) * 1000:29.1f} ms  ({', '.join(sorted(other)) or 'cached'})")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    from .runtime.train import train_command
    return train_command(args)


_COMMANDS = {"check": _cmd_check, "grad": _cmd_grad, "build": _cmd_build, "train": _cmd_train}
