"""Which stages are GEMMs, and their BLAS form.

A sum over one shared index of a product of two 2-D operands — forward `W·x` and both of
its adjoints, and a convolution through its im2col matrix — is one BLAS call. The plan
keeps it as a structured item (`BlasGemm`: operands in storage, their transposes, m, n, k),
which each renderer prints as its target's GEMM call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

from ..calculus.formulas import N, Stage, Tensor


@dataclass(frozen=True)
class _Product:
    """`out[I, J] = Σ_K left·right`: `left` holds the I- and K-blocks, `right` the K- and
    J-blocks (each a run of plain indices); `*_t`: indexed K-first / J-first."""
    left: object
    right: object
    I: tuple
    J: tuple
    K: tuple
    left_t: bool
    right_t: bool
    blocks: bool       # higher-rank operands, each 2-D after a reshape


def matrix_product(s: Stage, tensors: dict[str, Tensor]) -> Optional[_Product]:
    """`out[I, J] = Σ_K A[.,.]·B[.,.]` as one BLAS call, else None.

    With 2-D operands, I, J, K are single indices.  Higher-rank operands qualify when
    their indices fall into blocks: `out` is (I-block, J-block), A holds the I- and the
    K-block, B the K- and the J-block, each block a run of plain indices in the same
    order wherever it appears, so that every operand is a 2-D matrix after a reshape of
    its C-ordered storage.  That is how a convolution written through its im2col matrix
    is a GEMM: `zc[f,n,i,j] = Σ_{c,p,q} W[f,c,p,q]·col[c,p,q,n,i,j]` and both adjoints."""
    if s.kind != "formula" or s.reduce != "sum" or not s.reduce_vars or not s.plain:
        return None
    if len(s.accesses) != 2 or s.expr != s.accesses[0].symbol * s.accesses[1].symbol:
        return None
    if any(a.tensor == s.out or not all(isinstance(i, sp.Symbol) for i in a.index)
           or tensors[a.tensor].dtype != "float" for a in s.accesses):
        return None
    if len(s.index) == 2 and len(s.reduce_vars) == 1 and all(len(a.index) == 2 for a in s.accesses):
        (c,), (i, j) = s.reduce_vars, s.index
        left = next((a for a in s.accesses if set(a.index) == {i, c}), None)
        right = next((a for a in s.accesses if set(a.index) == {c, j} and a is not left), None)
        if left is None or right is None or i == j:
            return None
        return _Product(left, right, (i,), (j,), (c,), left.index != (i, c), right.index != (c, j), False)
    # (N, K) tensors may be stored batch-last (a transposed view that cannot be reshaped)
    if any(len(tensors[t].shape) == 2 and tensors[t].shape[0] == N for t in [s.out] + [a.tensor for a in s.accesses]):
        return None
    reduced = set(s.reduce_vars)
    out = tuple(s.index)
    for cut in range(1, len(out)):
        I, J = out[:cut], out[cut:]
        for left, right in (s.accesses, s.accesses[::-1]):
            a = _split(left.index, I, reduced)
            b = _split(right.index, J, reduced)
            if a is not None and b is not None and a[0] == b[0]:       # K in the same order in both
                return _Product(left, right, I, J, a[0], not a[1], b[1], True)
    return None


def is_gemm(s: Stage, tensors: dict[str, Tensor]) -> bool:
    return matrix_product(s, tensors) is not None


@dataclass(frozen=True)
class BlasGemm:
    """A GEMM as one BLAS call on storage: `out (m×n) [+]= op(a) · op(b)`, every operand a
    contiguous row-major block; `a_t`: `a` is stored as its transpose (k×m), `b_t` likewise
    (n×k), `out_t`: `out` is stored as (n×m)."""
    out: str
    a: str
    b: str
    a_t: bool
    b_t: bool
    out_t: bool
    m: object
    n: object
    k: object
    accumulate: bool

    def row_major(self) -> "BlasGemm":
        """The same product with `out` not transposed: a transposed output is computed as
        outᵀ = op(b)ᵀ·op(a)ᵀ, which BLAS (row-major here) writes in place."""
        if not self.out_t:
            return self
        return BlasGemm(self.out, self.b, self.a, not self.b_t, not self.a_t, False, self.n, self.m, self.k,
                        self.accumulate)


def blas_gemm(s: Stage, tensors: dict[str, Tensor], batch_last=frozenset()) -> Optional[BlasGemm]:
    """The GEMM a stage is (see `matrix_product`) as operands in storage, for a direct BLAS call:
    a batch-last 2-D tensor is stored as the transpose of its index order."""
    p = matrix_product(s, tensors)
    if p is None:
        return None
    sizes = dict(s.ranges)
    prod = lambda block: sp.prod([sizes[v] for v in block])    # noqa: E731
    stored = (lambda x: x in batch_last) if not p.blocks else (lambda x: False)    # noqa: E731
    return BlasGemm(s.out, p.left.tensor, p.right.tensor, p.left_t != stored(p.left.tensor),
                    p.right_t != stored(p.right.tensor), stored(s.out), prod(p.I), prod(p.J), prod(p.K),
                    s.accumulate)


def _split(index: tuple, outer: tuple, reduced: set):
    """(K, outer_first) when `index` is `outer + K` or `K + outer` with K the reduced
    indices (in `index`'s order), else None."""
    n = len(outer)
    if index[:n] == outer and set(index[n:]) == reduced and len(index) - n == len(reduced):
        return index[n:], True
    if index[len(index) - n:] == outer and set(index[:len(index) - n]) == reduced \
            and len(index) - n == len(reduced):
        return index[:len(index) - n], False
    return None


def argmax_then_max(item, nxt) -> bool:
    """`arg = argmax_w F; out = max_w F` over the same window and output index."""
    return (isinstance(item, Stage) and isinstance(nxt, Stage) and item.reduce == "argmax"
            and nxt.reduce == "max" and nxt.attrs.get("argmax") == item.out and nxt.expr.xreplace(
                {b.symbol: sp.Indexed(b.tensor, *b.index) for b in nxt.accesses})
            == item.expr.xreplace({b.symbol: sp.Indexed(b.tensor, *b.index) for b in item.accesses})
            and nxt.index == item.index and nxt.ranges == item.ranges and not nxt.accumulate)


