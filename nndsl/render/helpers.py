"""Scalar helper functions that kernels call, written once for every target.

A loop body calls `_tanh(x)`, `_exp(x)`, `_sigmoid(x)`, `_softplus(x)` (the printer's names
for sympy's functions, `render/printer.py`) and a draw calls `_normal(key, c)`; a GEMM
kernel on the CPU calls `_blas_gemm` (a convolution's product `_gemm_blocks`). A renderer asks `helpers_text(target, dtype, used)` for
the definitions a kernel's text uses, with those they call, in order.

A helper has one text per variant: `cpu32` (numba on the CPU in float32: vectorisable
approximations, about 1–4 ulp, because libm's expf and tanhf are a call per element),
`exact` (the plain math, for the CPU in float64 and for CUDA), `any` (the same function on
every target, without fast-math: the counter-based draws, so that one seed gives the same
noise on the CPU and on the GPU) or `cpu` (the CPU's BLAS call). `exact` and `any` texts
have no decorator: each target adds its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..calculus import functions as fn

CPU_INLINE = '@njit(cache=True, inline="always")'
CPU_MATH = '@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")'
CUDA_DEVICE = "@cuda.jit(device=True, inline=True)"


@dataclass(frozen=True)
class Helper:
    texts: dict                                # variant -> the definition (with its decorator, but for `any`)
    needs: tuple = ()                          # helpers it calls
    imports: tuple = ()                        # import lines its texts need
    setup: str = ""                            # module-level lines the file needs before it


# the GEMM helpers' set-up: numba's BLAS wrapper finds scipy's BLAS
GEMM_SETUP = "ensure_blas()      # numba's BLAS wrapper finds scipy's BLAS"
BLOCKS_SETUP = """\
# OpenBLAS's small-matrix kernel takes products of up to 100³ multiply-adds (see `_gemm_blocks`)
GEMM_SMALL = 1_000_000
GEMM_SKINNY = 32"""


TARGET_HELPERS = {
    "_tanh": Helper(
        {
            "cpu32": """\
@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _tanh(x):
    # Rational approximation of tanh (as in Eigen and XLA), about 1 ulp in float32:
    # only multiplies, adds and a divide, so loops over it vectorise (libm's tanhf does not).
    c = F(7.90531110763549805)
    x = c if x > c else (-c if x < -c else x)
    x2 = x * x
    p = x2 * F(-2.76076847742355e-16) + F(2.00018790482477e-13)
    p = x2 * p + F(-8.60467152213735e-11)
    p = x2 * p + F(5.12229709037114e-08)
    p = x2 * p + F(1.48572235717979e-05)
    p = x2 * p + F(6.37261928875436e-04)
    p = x2 * p + F(4.89352455891786e-03)
    q = x2 * F(1.19825839466702e-06) + F(1.18534705686654e-04)
    q = x2 * q + F(2.26843463243900e-03)
    q = x2 * q + F(4.89352518554385e-03)
    return x * p / q
""",
            "exact": """\
def _tanh(x):
    return math.tanh(x)
"""
        },
        needs=()),
    "_sigmoid": Helper(
        {
            "cpu32": """\
@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _sigmoid(x):
    # σ(x) = (1 + tanh(x/2)) / 2: stable for any x, and vectorisable
    return F(0.5) + F(0.5) * _tanh(F(0.5) * x)
""",
            "exact": """\
def _sigmoid(x):
    # never exponentiates a large positive number
    if x >= 0:
        return F(1.0) / (F(1.0) + math.exp(-x))
    e = math.exp(x)
    return e / (F(1.0) + e)
"""
        },
        needs=('_tanh',)),
    "_pow2": Helper(
        {
            "cpu32": """\
@intrinsic
def _pow2(typingctx, k):
    \"\"\"2**k for an integral float32 k in [-126, 127]: k + 127 written into the exponent bits.\"\"\"
    def codegen(context, builder, signature, args):
        i32 = context.get_value_type(types.int32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), i32(127)), i32(23))
        return builder.bitcast(bits, context.get_value_type(types.float32))
    return types.float32(types.float32), codegen
""",
        },
        needs=(),
        imports=('from numba.core import types', 'from numba.extending import intrinsic')),
    "_exp": Helper(
        {
            "cpu32": """\
@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _exp(x):
    # e^x = 2^k · e^r, k = round(x / ln 2), |r| <= ln(2)/2, e^r by Cephes' expf polynomial:
    # about 2 ulp, and vectorisable (libm's expf is a call per element, 13x slower here).
    x = max(min(x, F(88.3762626647949)), F(-87.3365447504019))
    k = np.floor(x * F(1.44269504088896341) + F(0.5))
    r = x - k * F(0.693359375) + k * F(2.12194440e-4)
    p = F(1.9875691500e-4)
    p = p * r + F(1.3981999507e-3)
    p = p * r + F(8.3334519073e-3)
    p = p * r + F(4.1665795894e-2)
    p = p * r + F(1.6666665459e-1)
    p = p * r + F(5.0000001201e-1)
    return (p * r * r + r + F(1.0)) * _pow2(k)
""",
            "exact": """\
def _exp(x):
    return math.exp(x)
"""
        },
        needs=('_pow2',)),
    "_softplus": Helper(
        {
            "cpu32": """\
@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(u), u = e^-|x| in (0, 1]; log1p(u) = 2 atanh(s) with
    # s = u / (2 + u) in (0, 1/3], an odd series in s: about 4 ulp, and vectorisable.
    u = _exp(-abs(x))
    s = u / (F(2.0) + u)
    s2 = s * s
    p = F(1.0 / 15.0)
    p = p * s2 + F(1.0 / 13.0)
    p = p * s2 + F(1.0 / 11.0)
    p = p * s2 + F(1.0 / 9.0)
    p = p * s2 + F(1.0 / 7.0)
    p = p * s2 + F(1.0 / 5.0)
    p = p * s2 + F(1.0 / 3.0)
    return max(x, F(0.0)) + F(2.0) * s * (p * s2 + F(1.0))
""",
            "exact": """\
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): finite for any x
    return max(x, F(0.0)) + math.log1p(math.exp(-abs(x)))
"""
        },
        needs=('_exp',)),
    "_mix": Helper(
        {
            "any": """\
def _mix(x):
    # splitmix64's finaliser: a bijection of uint64 in which every input bit flips every
    # output bit with probability ~1/2; the counter-based generator of the draws
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
""",
        },
        needs=()),
    "_draw_key": Helper(
        {
            "any": """\
def _draw_key(seed, salt):
    # one stream per (step seed, draw)
    return _mix(_mix(np.uint64(seed)) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15))
""",
        },
        needs=('_mix',)),
    "_uniform": Helper(
        {
            "any": """\
def _uniform(key, c):
    # element c of the stream: 53 random bits as a float64 in [0, 1)
    bits = _mix(key + (np.uint64(c) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
    return np.float64(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)
""",
        },
        needs=('_mix',)),
    "_normal": Helper(
        {
            "any": """\
def _normal(key, c):
    # Box-Muller from the stream's elements 2c and 2c + 1 (1 - u lies in (0, 1]: log is finite)
    u = _uniform(key, 2 * c)
    v = _uniform(key, 2 * c + 1)
    return math.sqrt(-2.0 * math.log(1.0 - u)) * math.cos(6.283185307179586 * v)
""",
        },
        needs=('_uniform',)),
    "_gemm_blocks": Helper(
        {
            "cpu": """\
@njit(cache=True, inline="always")
def _gemm_blocks(a_t, b_t, m, n, k, a, oa, b, ob, c, oc, beta):
    \"\"\"c[oc:] (m×n) = op(a[oa:]) · op(b[ob:]) + beta · c, every matrix row-major and
    contiguous; `a_t`: a is stored as (k×m), `b_t`: b as (n×k). A convolution's product.

    A skinny product (a side of at most GEMM_SKINNY) bigger than GEMM_SMALL = m·n·k is
    cut along its longest side into blocks of at most GEMM_SMALL: OpenBLAS multiplies those
    with its small-matrix kernel (x86-64 with AVX-512, up to 100³), without packing the
    operands, and that is 2-5 times faster for a convolution's products (16×72 by 72×6272:
    0.28 ms whole, 0.14 ms in blocks of 784 columns; docs/performance.md, "Convolutions").
    A cut along k sums the blocks in order (rounding may differ from one call).\"\"\"
    lda = m if a_t else k
    ldb = k if b_t else n
    # one call site in one loop (numba compiles each kernel's copy: four call sites cost
    # ~0.1 s of compile per GEMM kernel); `side`: 0 whole, 1 columns of b and c, 2 the sum
    # (the first block sets c, the rest add), 3 rows of a and c
    side, total, step = 0, 1, 1
    if m * n * k > GEMM_SMALL and min(m, n, k) <= GEMM_SKINNY:
        if n >= k and n >= m:
            side, total, step = 1, n, max(1, GEMM_SMALL // (m * k))
        elif k >= m:
            side, total, step = 2, k, max(1, GEMM_SMALL // (m * n))
        else:
            side, total, step = 3, m, max(1, GEMM_SMALL // (n * k))
    for j in range(0, total, step):
        w = min(step, total - j)
        mm, nn, kk, ao, bo, co, bb = m, n, k, oa, ob, oc, beta
        if side == 1:
            nn, bo, co = w, ob + (j * ldb if b_t else j), oc + j
        elif side == 2:
            kk, ao, bo = w, oa + (j * lda if a_t else j), ob + (j if b_t else j * ldb)
            bb = beta if j == 0 else 1.0
        elif side == 3:
            mm, ao, co = w, oa + (j if a_t else j * lda), oc + j * n
        _blas_gemm(a_t, b_t, mm, nn, kk, a, ao, lda, b, bo, ldb, c, co, n, bb)
""",
        },
        needs=("_blas_gemm",), setup=BLOCKS_SETUP),
    "_thin_gemm": Helper(
        {
            "cpu": """\
@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _row_dots(rows, k, matrix, o_matrix, ld, vector, o_vector, c, oc, stride, beta):
    \"\"\"c[oc + i·stride] (+)= Σ_p matrix[o_matrix + i·ld + p] · vector[o_vector + p].\"\"\"
    for i in range(rows):
        acc, row = F(0.0), o_matrix + i * ld
        for p in range(k):
            acc += matrix[I(row + p)] * vector[I(o_vector + p)]
        if beta == 0:
            c[I(oc + i * stride)] = acc
        else:
            c[I(oc + i * stride)] += acc


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _thin_gemm(a_t, b_t, m, n, k, a, oa, lda, b, ob, ldb, c, oc, ldc, beta):
    \"\"\"`_blas_gemm` for a product with a side of 1 (see `thin` in render/numba_cpu.py): an
    outer product (k = 1), or dots along the stored rows of the matrix operand (n = 1, a not
    transposed; m = 1, b transposed). A BLAS call costs 1.5-2.5 µs whatever its size; these
    loops took 0.5 µs for the lecture MLP's 256×32. A side of 1 makes the other operand a
    contiguous vector, transposed or not.\"\"\"
    a, b, c = a.reshape(a.size), b.reshape(b.size), c.reshape(c.size)    # data arrays come whole
    if k == 1:                                      # c[i, j] = a[i] · b[j]
        for i in range(m):
            ai, row = a[I(oa + i)], oc + i * ldc
            for j in range(n):
                if beta == 0:
                    c[I(row + j)] = ai * b[I(ob + j)]
                else:
                    c[I(row + j)] += ai * b[I(ob + j)]
    elif n == 1:                                    # c[i] = Σ_p a[i, p] · b[p]
        _row_dots(m, k, a, oa, lda, b, ob, c, oc, ldc, beta)
    else:                                           # m = 1: c[j] = Σ_p a[p] · b[j, p]
        _row_dots(n, k, b, ob, ldb, a, oa, c, oc, 1, beta)
""",
        }),
    "_blas_gemm": Helper(
        {
            "cpu": """\
@intrinsic
def _blas_gemm(typingctx, a_t, b_t, m, n, k, a, oa, lda, b, ob, ldb, c, oc, ldc, beta):
    \"\"\"c[oc:] (m×n, rows ldc apart) = op(a[oa:]) · op(b[ob:]) + beta · c, row-major blocks
    whose rows are lda, ldb apart. One call of BLAS's gemm through numba's own wrapper
    (what np.dot calls), without np.dot's views and checks.\"\"\"
    def codegen(context, builder, signature, args):
        tys = signature.args
        intp = context.get_value_type(types.intp)
        void_p = ir.IntType(8).as_pointer()
        char = ir.IntType(8)

        def cast(i):
            return context.cast(builder, args[i], tys[i], types.intp)

        def data(i, offset):
            array = context.make_array(tys[i])(context, builder, args[i])
            return builder.bitcast(builder.gep(array.data, [cast(offset)]), void_p)

        def slot(value):
            ptr = cgutils.alloca_once(builder, context.get_value_type(tys[11].dtype))
            builder.store(value, ptr)
            return builder.bitcast(ptr, void_p)

        m, n, k = cast(2), cast(3), cast(4)
        one = ir.Constant(intp, 1)
        a_t = builder.icmp_signed("!=", cast(0), ir.Constant(intp, 0))
        b_t = builder.icmp_signed("!=", cast(1), ir.Constant(intp, 0))
        # BLAS is column-major: a row-major (r×s) block is its (s×r) transpose there, so
        # row-major c = op(a)·op(b) is column-major cᵀ = op(b)ᵀ·op(a)ᵀ
        trans, notrans = ir.Constant(char, ord("t")), ir.Constant(char, ord("n"))
        ld = lambda x: builder.select(builder.icmp_signed(">", x, one), x, one)    # noqa: E731
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, void_p, void_p, intp,
                                                void_p, intp, void_p, void_p, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        kind = ir.Constant(char, ord("s" if tys[11].dtype == types.float32 else "d"))
        dtype = context.get_value_type(tys[11].dtype)
        builder.call(fn, [kind,
                          builder.select(b_t, trans, notrans), builder.select(a_t, trans, notrans),
                          n, m, k, slot(ir.Constant(dtype, 1.0)),
                          data(8, 9), ld(cast(10)),
                          data(5, 6), ld(cast(7)),
                          slot(context.cast(builder, args[14], tys[14], tys[11].dtype)),
                          data(11, 12), ld(cast(13))])
        return context.get_dummy_value()

    return types.none(a_t, b_t, m, n, k, a, oa, lda, b, ob, ldb, c, oc, ldc, beta), codegen
""",
        },
        needs=(),
        imports=('from llvmlite import ir', 'from numba.core import cgutils, types', 'from numba.extending import intrinsic', 'from numba.np.linalg import ensure_blas'),
        setup=GEMM_SETUP),
}


def _all() -> dict:
    """These helpers, and those the calculus's primitives declare (`functions.PRIMITIVE_HELPERS`)."""
    return {**{name: Helper({"any": text}) for name, text in fn.PRIMITIVE_HELPERS.items()}, **TARGET_HELPERS}


def variant(name: str, target: str, dtype: str) -> str | None:
    """The text of helper `name` for a target and dtype (None: the target has none)."""
    texts = _all()[name].texts
    bits = "32" if dtype == "float32" else "64"
    for key in (target + bits, target):
        if key in texts:
            return texts[key].rstrip()
    for key, cpu in (("exact", CPU_MATH), ("any", CPU_INLINE)):
        if key in texts:
            return (cpu if target == "cpu" else CUDA_DEVICE) + "\n" + texts[key].rstrip()
    return None


def used(text: str, target: str, dtype: str) -> list[str]:
    """The helpers `text` calls, with those they call, in definition order."""
    helpers = _all()
    names = {h for h in helpers if f"{h}(" in text}
    while True:
        more = names | {d for h in names for d in helpers[h].needs}
        if more == names:
            break
        names = more
    return [h for h in helpers if h in names and variant(h, target, dtype) is not None]


def helpers_text(target: str, dtype: str, names) -> tuple[list[str], str]:
    """(import lines, definitions) of the helpers `names` (from `used`) for a target."""
    helpers, imports = _all(), []
    for h in names:
        imports += [line for line in helpers[h].imports if line not in imports]
    parts = [part for h in names for part in (helpers[h].setup, variant(h, target, dtype)) if part]
    return imports, "\n\n\n".join(parts)
