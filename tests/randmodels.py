"""Random valid `.nn` models, and invalid mutants of them (issue 26).

`generate(seed)` writes a small model the way users combine the constructs of
docs/language.md: a head of inputs, a few random constructs on the values made so far,
then losses (and targets) on some of them, an optimiser, sometimes `init` and `train`.
The same seed always gives the same text.

The generator is a set of tables, so that a new construct is one row:

- `HEADS`: the inputs a model starts from (vectors, images, sequences of a free or fixed
  length, several of them);
- `CONSTRUCTS`: `Construct(name, weight, fn)`; `fn(sketch)` adds statements built on the
  sketch's values (a random pick that fits) and returns False where nothing fits;
- `LOSSES`: the ways a model ends (built-in and user losses, weighted sums, named losses
  with `wrt`), each adding its targets;
- `OPTIMIZERS`, `INITS`: the optimisers and initialisers, with random hyperparameters.

Values are tracked with their per-example shapes, so every statement fits by
construction; a model the checker refuses is a finding (a generator bug or a valid
model refused). Nodes are sometimes left unused, as a user sketching a model does.

`mutate(text, seed)` breaks a model in one of `MUTATIONS` (a deleted token, an undefined
name, a zero or negative size, a wrong keyword, a shape mismatch, a duplicated name, ...).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

FREE = "T"                      # the free sequence length


@dataclass
class Val:
    """A value the model has made: a node or an input, with its per-example shape."""
    name: str
    shape: tuple
    learn: bool = False         # depends on a parameter
    params: bool = False        # has parameters itself (can be named in `wrt`)
    noisy: bool = False         # depends on a noise layer
    input: bool = False
    deps: frozenset = frozenset()   # the nodes with parameters (and networks) it depends on

    @property
    def kind(self) -> str:
        return {1: "vector", 2: "sequence", 3: "image"}.get(len(self.shape), "other")

    @property
    def fixed(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass
class Sketch:
    """A model being written: its statements in sections and the values it has made."""
    seed: int
    rng: random.Random
    decls: list = field(default_factory=list)       # input, target, const
    defs: list = field(default_factory=list)        # activation, loss, layer, network definitions
    body: list = field(default_factory=list)        # node statements
    tail: list = field(default_factory=list)        # loss, optimizer, init, train, output
    values: list = field(default_factory=list)
    used: set = field(default_factory=set)          # names something reads
    features: list = field(default_factory=list)    # the constructs used, for reports
    user_acts: list = field(default_factory=list)   # user activations defined
    count: int = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def add(self, name: str, text: str, shape: tuple, reads=(), **flags) -> Val:
        for r in reads:
            self.used.add(r.name)
        flags.setdefault("learn", any(r.learn for r in reads))
        flags.setdefault("noisy", any(r.noisy for r in reads))
        deps = frozenset().union(*[r.deps for r in reads]) | flags.pop("owner", frozenset())
        if flags.get("params"):
            deps |= {name}
        v = Val(name, tuple(shape), deps=deps, **flags)
        self.body.append(f"{name} = {text}")
        self.values.append(v)
        return v

    def pick(self, ok=lambda v: True, learn_bias=0.7) -> Val | None:
        """A value that fits, recent and learnable ones more often."""
        cands = [v for v in self.values if ok(v)]
        if not cands:
            return None
        weights = [(1 + i) * (3 if v.learn and self.rng.random() < learn_bias else 1)
                   for i, v in enumerate(cands)]
        return self.rng.choices(cands, weights)[0]

    def feature(self, name: str) -> None:
        if name not in self.features:
            self.features.append(name)

    def text(self) -> str:
        lines = [f"model m{self.seed}"] + self.decls + self.defs + self.body + self.tail
        return "\n".join(lines) + "\n"


def _size(rng, lo=1, hi=5, wide=0.04) -> int:
    """A small size; now and then one of 32 or more (batch-last storage, plan decision 6)."""
    return rng.randint(32, 36) if rng.random() < wide else rng.randint(lo, hi)


def _shape_text(shape) -> str:
    return ", ".join(str(d) for d in shape)


# ------------------------------------------------------------------ heads (inputs)
def _input(sk: Sketch, prefix: str, shape: tuple) -> Val:
    name = sk.fresh(prefix)
    sk.decls.append(f"input {name}[{_shape_text(shape)}]")
    v = Val(name, shape, input=True)
    sk.values.append(v)
    return v


def _vector_head(sk):
    _input(sk, "x", (_size(sk.rng, 1, 6),))


def _image_head(sk):
    r = sk.rng
    _input(sk, "img", (r.randint(1, 2), r.randint(3, 7), r.randint(3, 7)))     # non-square


def _sequence_head(sk):
    r = sk.rng
    length = FREE if r.random() < 0.75 else r.randint(2, 4)
    _input(sk, "s", (length, r.randint(1, 4)))


def _two_vectors(sk):
    _vector_head(sk)
    _vector_head(sk)


def _mixed(sk):
    sk.rng.choice([_image_head, _sequence_head])(sk)
    _vector_head(sk)


HEADS = [(_vector_head, 5), (_image_head, 3), (_sequence_head, 3), (_two_vectors, 2), (_mixed, 1)]


# ------------------------------------------------------------------ expressions
# Elementwise templates that stay finite and smooth enough for central differences
# (logs and roots of positive arguments, bounded exponentials); {0} is the operand.
UNARY = ["relu({0})", "tanh({0})", "sigmoid({0})", "softplus({0})", "elu({0})", "swish({0})",
         "abs({0})", "sin({0})", "cos({0})", "leaky_relu({0})", "leaky_relu({0}, alpha=0.2)",
         "exp(tanh({0}))", "exp(-0.5 * {0} ^ 2)", "log(1 + {0} ^ 2)", "sqrt(1 + {0} * {0})",
         "{0} ^ 2", "{0} ** 3 / 3", "-{0}", "0.5 * {0}", "2 * relu({0})", "({0} - 0.25)"]
BINARY = ["{0} + {1}", "{0} - {1}", "{0} * {1}", "{0} / (1 + {1} ^ 2)", "min({0}, {1})",
          "max({0}, {1})", "where({0} > {1}, {0}, {1} * 0.5)", "where({0} <= 0.3, {0} * {1}, {1})",
          "where({1} != 0, {0}, 2 * {0})", "(0.5 * {0} + {1}) * 2"]
NUMBERS = ["0.5", "2", "-0.3", "1.5", "3", "0.1"]


def _operand(sk: Sketch, like: Val) -> tuple[str, list]:
    """Something that broadcasts against `like`: itself, another value of its shape, a
    size-1 or last-axis value, a number, or an inline dense call."""
    r = sk.rng
    roll = r.random()
    if roll < 0.2:
        return r.choice(NUMBERS), []
    if roll < 0.3 and like.kind in ("vector", "sequence"):
        src = sk.pick(lambda v: v.kind == "vector" and v.fixed)
        if src is not None:                # an anonymous node inside the expression
            width = r.choice([1, like.shape[-1]])
            if like.kind == "sequence" and width != 1:
                width = like.shape[-1]
            sk.feature("inline-dense")
            return f"dense({src.name}, {width})", [Val("", (width,), learn=True, noisy=src.noisy,
                                                       deps=src.deps), src]
    if roll < 0.55:
        cands = [v for v in sk.values if len(v.shape) <= len(like.shape) and v.shape and
                 all(d in (1, e) for d, e in zip(v.shape[::-1], like.shape[::-1])) and
                 v.shape != like.shape]
        if cands:
            v = r.choice(cands)
            sk.feature("broadcast")
            return v.name, [v]
    same = [v for v in sk.values if v.shape == like.shape]
    v = r.choice(same) if same else like
    return v.name, [v]


def construct_expression(sk: Sketch) -> bool:
    base = sk.pick(lambda v: v.shape)
    if base is None:
        return False
    r = sk.rng
    text, reads = base.name, [base]
    for _ in range(r.randint(1, 3)):
        if text != base.name:
            text = f"({text})"                  # `log(1 + {0} ^ 2)` of `a * b` is log(1 + (a * b) ^ 2)
        if r.random() < 0.5:
            text = r.choice(UNARY + [f"{a}({{0}})" for a in sk.user_acts]).format(text)
            sk.feature("expression-function")
        else:
            other, more = _operand(sk, base)
            other = f"({other})" if other.startswith("-") else other
            pair = (text, other) if r.random() < 0.7 else (other, text)
            form = r.choice(BINARY)
            if "where" in form:
                sk.feature("where")
            elif "min" in form or "max" in form:
                sk.feature("min-max")
            else:
                sk.feature("arithmetic")
            text = form.format(*pair)
            reads += more
    if text == base.name:
        text = f"{text} * 1.5"
    name = sk.fresh("e")
    sk.add(name, text, base.shape, [v for v in reads if v.name])
    return True


def construct_broadcast(sk: Sketch) -> bool:
    """A value combined with a size-1 value or one of its last axis (numpy's broadcasting)."""
    base = sk.pick(lambda v: v.shape and isinstance(v.shape[-1], int))
    src = sk.pick(lambda v: v.kind == "vector" and v.fixed)
    if base is None or src is None:
        return False
    r = sk.rng
    width = r.choice([1, base.shape[-1]])
    if width == base.shape[-1] and base.kind == "vector":
        width = 1
    small = sk.add(sk.fresh("s"), f"dense({src.name}, {width})", (width,), [src], learn=True, params=True)
    form = r.choice(["{0} * {1} + {0}", "{0} - {1}", "({1} + 1) * tanh({0})", "max({0}, {1})",
                     "where({0} > {1}, {0}, {1})", "{1} / (1 + {0} ^ 2)"])
    sk.feature("broadcast")
    sk.add(sk.fresh("b"), form.format(base.name, small.name), base.shape, [base, small])
    return True


# ------------------------------------------------------------------ layers
ACTS = ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "swish", "softmax"]


def _act(sk: Sketch, allow_softmax=True) -> str:
    acts = ACTS + sk.user_acts if allow_softmax else [a for a in ACTS if a != "softmax"] + sk.user_acts
    return sk.rng.choice(acts)


def _layer_options(sk: Sketch, act: bool = True, bias: bool = True) -> str:
    r = sk.rng
    opts = []
    if act and r.random() < 0.7:
        opts.append(f"act={_act(sk)}")
    if bias and r.random() < 0.2:
        opts.append("bias=false")
    if r.random() < 0.15:
        opts.append("init=" + r.choice(["he", "xavier", "normal(0.5)", "uniform(0.3)"]))
    return "".join(", " + o for o in opts)


def construct_dense(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind in ("vector", "sequence") and isinstance(v.shape[-1], int))
    if src is None:
        return False
    units = _size(sk.rng, 1, 5)
    opts = _layer_options(sk)
    sk.feature("dense" if src.kind == "vector" else "dense-over-time")
    if "act=" in opts:
        sk.feature("act-" + opts.split("act=")[1].split(",")[0])
    if "bias=false" in opts:
        sk.feature("no-bias")
    sk.add(sk.fresh("h"), f"dense({src.name}, {units}{opts})", src.shape[:-1] + (units,), [src],
           learn=True, params=True)
    return True


def construct_concat(sk: Sketch) -> bool:
    a = sk.pick(lambda v: v.shape and isinstance(v.shape[-1], int))
    if a is None:
        return False
    others = [v for v in sk.values if len(v.shape) == len(a.shape) and v.shape[:-1] == a.shape[:-1]
              and isinstance(v.shape[-1], int)]
    parts = [a] + sk.rng.sample(others, min(len(others), sk.rng.randint(1, 2)))
    if len(parts) < 2:
        parts.append(a)                  # concat(a, a)
    sk.rng.shuffle(parts)
    width = sum(p.shape[-1] for p in parts)
    sk.feature("concat")
    sk.add(sk.fresh("c"), "concat(" + ", ".join(p.name for p in parts) + ")", a.shape[:-1] + (width,), parts)
    return True


def construct_flatten(sk: Sketch) -> bool:
    src = sk.pick(lambda v: len(v.shape) >= 2 and v.fixed)
    if src is None:
        return False
    size = 1
    for d in src.shape:
        size *= d
    sk.feature("flatten")
    sk.add(sk.fresh("f"), f"flatten({src.name})", (size,), [src])
    return True


def construct_conv(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind == "image")
    if src is None:
        return False
    r = sk.rng
    c, h, w = src.shape
    for _ in range(10):
        k, s, p = r.randint(1, 3), r.randint(1, 3), r.choice([0, 0, 1, 2])
        if k <= h + 2 * p and k <= w + 2 * p:
            break
    else:
        return False
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    filters = r.randint(1, 3)
    opts = (f", stride={s}" if s != 1 or r.random() < 0.3 else "") + (f", pad={p}" if p else "")
    opts += _layer_options(sk)
    sk.feature("conv2d")
    if "act=" in opts:
        sk.feature("act-" + opts.split("act=")[1].split(",")[0])
    sk.add(sk.fresh("cv"), f"conv2d({src.name}, {filters}, {k}{opts})", (filters, ho, wo), [src],
           learn=True, params=True)
    return True


def construct_pool(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind == "image" and min(v.shape[1:]) >= 2)
    if src is None:
        return False
    r = sk.rng
    c, h, w = src.shape
    size = r.randint(2, min(3, h, w))
    stride = r.choice([size, size, 1, 2])          # stride < size: overlapping windows
    kind = r.choice(["maxpool", "avgpool"])
    sk.feature(kind + ("-overlap" if stride < size else ""))
    text = f"{kind}({src.name}, {size}" + (f", stride={stride})" if stride != size else ")")
    sk.add(sk.fresh("p"), text, (c, (h - size) // stride + 1, (w - size) // stride + 1), [src])
    return True


def construct_recurrent(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind == "sequence" and isinstance(v.shape[1], int))
    if src is None:
        return False
    r = sk.rng
    kind = r.choice(["rnn", "lstm", "gru"])
    hidden = r.randint(1, 4)
    opts = ""
    if kind == "rnn" and r.random() < 0.7:
        act = _act(sk)
        opts += f", act={act}"
        sk.feature(f"rnn-act-{act}")
    last = r.random() < 0.4
    if last:
        opts += ", return=last"
    elif r.random() < 0.2:
        opts += ", return=all"
    sk.feature(kind + ("-stacked" if not src.input else "") + ("-last" if last else ""))
    shape = (hidden,) if last else (src.shape[0], hidden)
    sk.add(sk.fresh("r"), f"{kind}({src.name}, {hidden}{opts})", shape, [src], learn=True, params=True)
    return True


def construct_noise(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.shape)
    if src is None:
        return False
    r = sk.rng
    kind = r.choice(["dropout", "gaussian_noise", "mask_noise", "sample_normal"])
    if kind == "sample_normal":
        if not (src.kind in ("vector", "sequence") and isinstance(src.shape[-1], int)):
            return False
    sk.feature(kind)
    if kind == "sample_normal":
        width = r.randint(1, 3)
        mu, lv = sk.fresh("mu"), sk.fresh("lv")
        a = sk.add(mu, f"dense({src.name}, {width})", src.shape[:-1] + (width,), [src], learn=True, params=True)
        b = sk.add(lv, f"dense({src.name}, {width})", src.shape[:-1] + (width,), [src], learn=True, params=True)
        sample = ", sample=true" if r.random() < 0.3 else ""
        sk.add(sk.fresh("z"), f"sample_normal({mu}, {lv}{sample})", a.shape, [a, b], noisy=True)
        return True
    arg = r.choice(["0.1", "0.25", "0.5"])
    sk.add(sk.fresh("n"), f"{kind}({src.name}, {arg})", src.shape, [src], noisy=True)
    return True


def construct_user_activation(sk: Sketch) -> bool:
    r = sk.rng
    name = sk.fresh("act")
    body = r.choice(["a * sigmoid(2 * a)", "tanh(a) + 0.1 * a", "where(a > 0, a, 0.5 * a)",
                     "a / (1 + abs(a))", "log(1 + exp(a))", "max(a, 0.2 * a)", "a ^ 2 / 2 + sin(a)"])
    sk.defs.append(f"activation {name}(a) = {body}")
    sk.user_acts.append(name)
    sk.feature("user-activation")
    src = sk.pick(lambda v: v.shape)
    if src is not None and r.random() < 0.5:
        sk.add(sk.fresh("u"), f"{name}({src.name})", src.shape, [src])
    return True


def construct_user_layer(sk: Sketch) -> bool:
    r = sk.rng
    forms = []
    vectors = [v for v in sk.values if v.kind == "vector" and v.fixed]
    planes = [v for v in sk.values if v.kind == "sequence" and v.fixed and v.shape[1] >= 2]
    if vectors:
        forms += ["hidden", "scale", "bilinear"]
    if planes:
        forms.append("window")
    if not forms:
        return False
    form = r.choice(forms)
    name = sk.fresh("ul")
    if form == "hidden":
        x = r.choice(vectors)
        act = r.choice(["tanh", "relu", "sigmoid", ""])
        body = f"sum(d: W[k, d] * x[d])"
        sk.defs.append(f"layer {name}(x[d], units K) -> h[k:K] {{\n    param W[k, d] init=normal(0.4)\n"
                       f"    h[k] = {act}({body})\n}}" if act else
                       f"layer {name}(x[d], units K) -> h[k:K] {{\n    param W[k, d]\n    h[k] = {body}\n}}")
        units = r.randint(1, 4)
        sk.add(sk.fresh("q"), f"{name}({x.name}, {units})", (units,), [x], learn=True, params=True)
    elif form == "scale":
        x = r.choice(vectors)
        sk.defs.append(f"layer {name}(x[d]) -> out[d] {{\n    param g[d] init=uniform(1.0)\n"
                       f"    param b[d] init=zeros\n    out[d] = x[d] * g[d] + b[d]\n}}")
        sk.add(sk.fresh("q"), f"{name}({x.name})", x.shape, [x], learn=True, params=True)
    elif form == "bilinear":
        x, z = r.choice(vectors), r.choice(vectors)
        sk.defs.append(f"layer {name}(x[i], z[j], units K) -> out[k:K] {{\n    param W[k, i, j] init=xavier\n"
                       f"    param b[k] init=zeros\n    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]\n}}")
        units = r.randint(1, 3)
        sk.add(sk.fresh("q"), f"{name}({x.name}, {z.name}, {units})", (units,), [x, z], learn=True, params=True)
    else:                                  # a strided 1-D convolution: window index, affine reads
        x = r.choice(planes)
        channels, length = x.shape
        k = r.randint(1, min(3, length))
        s = r.randint(1, 2)
        out_len = (length - k) // s + 1
        filters = r.randint(1, 3)
        read = f"x[c, i*{s} + p]" if s != 1 else "x[c, i + p]"
        sk.defs.append(f"layer {name}(x[c, t], units F, units L, units K) -> out[f:F, i:L] {{\n"
                       f"    param W[f, c, p:K] init=xavier\n    out[f, i] = tanh(sum(c, p: W[f, c, p] * {read}))\n}}")
        sk.add(sk.fresh("q"), f"{name}({x.name}, {filters}, {out_len}, {k})", (filters, out_len), [x],
               learn=True, params=True)
    sk.feature(f"user-layer-{form}")
    return True


def construct_network(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind == "vector" and v.fixed)
    if src is None:
        return False
    r = sk.rng
    name = sk.fresh("net")
    width, out = r.randint(1, 4), r.randint(1, 3)
    sk.defs.append(f"network {name}(v) {{ a = dense(v, {width}, act={_act(sk, False)}); return dense(a, {out}) }}")
    sk.feature("network")
    twins = [v for v in sk.values if v.kind == "vector" and v.shape == src.shape]
    for v in [src] + ([r.choice(twins)] if r.random() < 0.6 else []):
        sk.add(sk.fresh("w"), f"{name}({v.name})", (out,), [v], learn=True, owner=frozenset({name}))
    return True


def construct_const(sk: Sketch) -> bool:
    src = sk.pick(lambda v: v.kind == "vector" and v.fixed)
    if src is None:
        return False
    name = sk.fresh("K")
    value = sk.rng.randint(1, 4)
    sk.decls.append(f"const {name} = {value}")
    sk.feature("const")
    sk.add(sk.fresh("h"), f"dense({src.name}, {name} + 1)", (value + 1,), [src], learn=True, params=True)
    return True


@dataclass(frozen=True)
class Construct:
    name: str
    weight: float
    fn: object


CONSTRUCTS = [
    Construct("dense", 6, construct_dense),
    Construct("expression", 5, construct_expression),
    Construct("broadcast", 1.5, construct_broadcast),
    Construct("concat", 1.5, construct_concat),
    Construct("flatten", 2, construct_flatten),
    Construct("conv2d", 3, construct_conv),
    Construct("pool", 2, construct_pool),
    Construct("recurrent", 3, construct_recurrent),
    Construct("noise", 1.5, construct_noise),
    Construct("user-activation", 1, construct_user_activation),
    Construct("user-layer", 1.5, construct_user_layer),
    Construct("network", 1, construct_network),
    Construct("const", 0.5, construct_const),
]


# ------------------------------------------------------------------ losses
def _target(sk: Sketch, shape) -> str:
    name = sk.fresh("y")
    sk.decls.append(f"target {name}[{_shape_text(shape)}]")
    return name


def _head(sk: Sketch, want: str = "any") -> Val:
    """A learnable value for a loss: an existing one, or a dense read-out of one."""
    r = sk.rng
    ok = {"any": lambda v: v.learn and v.shape,
          "logits": lambda v: v.learn and v.kind in ("vector", "sequence") and isinstance(v.shape[-1], int)
          and v.shape[-1] >= 2}[want]
    v = sk.pick(ok, learn_bias=1.0)
    if v is not None and r.random() < 0.6:
        return v
    src = _readable(sk)
    units = r.randint(2, 4) if want == "logits" else _size(r, 1, 3)
    return sk.add(sk.fresh("o"), f"dense({src.name}, {units})", src.shape[:-1] + (units,), [src],
                  learn=True, params=True)


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def term_squared(sk):
    o = _head(sk)
    if sk.rng.random() < 0.15:
        sk.used.add(o.name)
        return f"squared({o.name}, {sk.rng.choice(['0', '1'])})"
    sk.used.add(o.name)
    return f"squared({o.name}, {_target(sk, o.shape)})"


def term_bce(sk):
    o = _head(sk)
    sk.used.add(o.name)
    if sk.rng.random() < 0.2:
        return f"bce_logits({o.name}, {sk.rng.choice(['0', '1'])})"
    return f"bce_logits({o.name}, {_target(sk, o.shape)})"


def term_cross_entropy(sk):
    o = _head(sk, "logits")
    sk.used.add(o.name)
    name = sk.fresh("label")
    if o.kind == "sequence":
        sk.decls.append(f"target {name}[{o.shape[0]}]: class({o.shape[-1]})")
    else:
        sk.decls.append(f"target {name}: class({o.shape[-1]})")
    return f"cross_entropy({o.name}, {name})"


def _readable(sk) -> Val:
    """A vector or sequence to read out from (an image flattened first)."""
    src = sk.pick(lambda v: v.kind in ("vector", "sequence") and isinstance(v.shape[-1], int))
    if src is None:
        img = sk.pick(lambda v: v.fixed)
        src = sk.add(sk.fresh("f"), f"flatten({img.name})", (_prod(img.shape),), [img])
    return src


def _pair(sk) -> tuple[Val, Val]:
    src = _readable(sk)
    width = sk.rng.randint(1, 3)
    shape = src.shape[:-1] + (width,)
    mu = sk.add(sk.fresh("mu"), f"dense({src.name}, {width})", shape, [src], learn=True, params=True)
    lv = sk.add(sk.fresh("lv"), f"dense({src.name}, {width})", shape, [src], learn=True, params=True)
    sk.used |= {mu.name, lv.name}
    return mu, lv


def term_gaussian(sk):
    if sk.rng.random() < 0.5:
        mu, lv = _pair(sk)
        return f"gaussian_nll({mu.name}, {lv.name}, {_target(sk, mu.shape)})"
    o = _head(sk)
    sk.used.add(o.name)
    return f"gaussian_nll({o.name}, {_target(sk, o.shape)}, beta={sk.rng.choice(['0.5', '2.0', '4'])})"


def term_kl(sk):
    mu, lv = _pair(sk)
    return f"kl_normal({mu.name}, {lv.name})"


def term_user_loss(sk):
    name = sk.fresh("ls")
    body = sk.rng.choice([
        "where(abs(o - y) <= delta, 0.5 * (o - y)^2, delta * (abs(o - y) - 0.5 * delta))",
        "delta * log(1 + (o - y)^2)", "(o - y)^2 * (1 + delta * sigmoid(o))", "abs(o - y) + delta * o^2"])
    sk.defs.append(f"loss {name}(o, y, delta=1.0) = {body}")
    o = _head(sk)
    sk.used.add(o.name)
    delta = f", delta={sk.rng.choice(['0.3', '2.0'])}" if sk.rng.random() < 0.5 else ""
    sk.feature("user-loss")
    return f"{name}({o.name}, {_target(sk, o.shape)}{delta})"


TERMS = [(term_squared, 5), (term_bce, 2), (term_cross_entropy, 3), (term_gaussian, 1.5), (term_kl, 1),
         (term_user_loss, 1.5)]


def _term(sk) -> str:
    fn = sk.rng.choices([t for t, _ in TERMS], [w for _, w in TERMS])[0]
    sk.feature("loss-" + fn.__name__[5:])
    return fn(sk)


def _sum_of_terms(sk) -> str:
    r = sk.rng
    parts = [_term(sk)]
    if r.random() < 0.25:
        sk.feature("weighted-loss")
        parts.append(r.choice(["0.5 * ", "2 * ", ""]) + _term(sk))
    return " + ".join(parts)


def loss_single(sk):
    sk.tail.append(f"loss {_sum_of_terms(sk)}")
    return ["loss"]


def loss_named(sk):
    """Two named losses, each `wrt` some of the nodes (or networks) it depends on (a GAN's
    alternation in small)."""
    names = []
    for _ in range(2):
        text = _sum_of_terms(sk)
        words = set(re.findall(r"[A-Za-z_]\w*", text))
        deps = sorted(set().union(*[v.deps for v in sk.values if v.name in words]))
        owners = sk.rng.sample(deps, sk.rng.randint(1, len(deps)))
        name = sk.fresh("l")
        sk.tail.append(f"loss {name} = {text} wrt {', '.join(owners)}")
        names.append(name)
    sk.feature("named-losses")
    return names


LOSSES = [(loss_single, 6), (loss_named, 1)]


# ------------------------------------------------------------------ optimisers, init, train
OPTIMIZERS = ["sgd(lr=0.05)", "sgd(lr=0.01, momentum=0.9)", "sgd(lr=0.01, momentum=0.5, nesterov=true)",
              "adagrad(lr=0.05)", "rmsprop(lr=0.01, rho=0.8)", "adam()", "adam(lr=0.01, beta1=0.5)",
              "adagrad", "rmsprop"]
INITS = ["xavier", "he", "normal(0.3)", "uniform(0.5)", "zeros"]


def generate(seed: int) -> tuple[str, list[str]]:
    """A random valid model and the constructs it uses."""
    rng = random.Random(seed)
    sk = Sketch(seed, rng)
    head = rng.choices([h for h, _ in HEADS], [w for _, w in HEADS])[0]
    head(sk)
    for _ in range(rng.randint(1, 4)):
        kinds = {v.kind for v in sk.values}
        focus = ({"recurrent", "user-layer"} if "sequence" in kinds else set()) | \
            ({"conv2d", "pool"} if "image" in kinds else set())
        weights = [c.weight * (3 if c.name in focus else 1) for c in CONSTRUCTS]
        for _ in range(6):                       # a construct that fits
            c = rng.choices(CONSTRUCTS, weights)[0]
            if c.fn(sk):
                break
    finish = rng.choices([f for f, _ in LOSSES], [w for _, w in LOSSES])[0]
    losses = finish(sk)
    for name in losses:
        if rng.random() < 0.6:
            opt = rng.choice(OPTIMIZERS)
            sk.feature("optimizer-" + opt.split("(")[0])
            sk.tail.append(f"optimizer {name + ': ' if len(losses) > 1 else ''}{opt}")
    if rng.random() < 0.2:
        sk.tail.append("init " + rng.choice(INITS))
        sk.feature("init")
    if rng.random() < 0.25:
        opts = ["batch=8", "clip_norm=1.0", "epochs=2", "shuffle=false", "seed=3"]
        if len(losses) > 1:
            opts.append("d_steps=2")
        sk.tail.append("train " + " ".join(rng.sample(opts, rng.randint(1, 2))))
    if rng.random() < 0.2:
        nodes = [v.name for v in sk.values if not v.input]
        sk.tail.append("output " + ", ".join(rng.sample(nodes, min(len(nodes), rng.randint(1, 2)))))
    if any(v.name not in sk.used and not v.input for v in sk.values):
        sk.feature("unused-node")
    if rng.random() < 0.1:                     # an input that nothing reads (drawn last: the rest
        rng.choice([_vector_head, _image_head, _sequence_head])(sk)    # of a seed's model stays)
        sk.feature("unused-input")
    return sk.text(), sk.features


# ------------------------------------------------------------------ mutants
_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\*\*|[-+*/^()\[\],=<>:;{}]")


def _lines(text):
    return text.splitlines()


def _body_lines(lines):
    return [i for i, l in enumerate(lines) if i > 0 and l.strip() and not l.startswith(" ")]


def mut_delete_token(rng, lines):
    i = rng.choice(_body_lines(lines))
    toks = list(_TOKEN.finditer(lines[i]))
    t = rng.choice(toks)
    lines[i] = lines[i][:t.start()] + lines[i][t.end():]
    return "deleted token"


def mut_undefined_name(rng, lines):
    cands = [(i, m) for i in _body_lines(lines) for m in _NAME.finditer(lines[i])
             if "=" in lines[i] and m.start() > lines[i].index("=")]
    cands = [(i, m) for i, m in cands if re.fullmatch(r"[a-z]+\d+", m.group())]
    if not cands:
        return None
    i, m = rng.choice(cands)
    lines[i] = lines[i][:m.start()] + m.group() + "zz" + lines[i][m.end():]
    return "undefined name"


def mut_size(rng, lines):
    cands = [(i, m) for i in _body_lines(lines) for m in re.finditer(r"(?<=[\[(,] )\d+|(?<=\[)\d+", lines[i])]
    if not cands:
        return None
    i, m = rng.choice(cands)
    lines[i] = lines[i][:m.start()] + rng.choice(["0", "-1", "-3"]) + lines[i][m.end():]
    return "zero or negative size"


def mut_keyword(rng, lines):
    cands = [(i, m) for i in _body_lines(lines) for m in re.finditer(r"\b(act|bias|init|stride|pad|return|lr|"
                                                                      r"momentum|beta1|rho|alpha|sample)=", lines[i])]
    if not cands:
        return None
    i, m = rng.choice(cands)
    wrong = rng.choice(["actt", "biass", "strides", "padding", "retrun", "learning_rate", "units"])
    lines[i] = lines[i][:m.start()] + wrong + "=" + lines[i][m.end():]
    return "wrong keyword"


def mut_value(rng, lines):
    cands = [(i, m) for i in _body_lines(lines) for m in re.finditer(r"\b(act|return|init)=([a-z_]+)", lines[i])]
    if not cands:
        return None
    i, m = rng.choice(cands)
    lines[i] = lines[i][:m.start(2)] + rng.choice(["relux", "both", "glorot", "true", "3"]) + lines[i][m.end(2):]
    return "wrong keyword value"


def mut_shape(rng, lines):
    cands = [i for i, l in enumerate(lines) if l.startswith("target ") and "[" in l]
    if not cands:
        return None
    i = rng.choice(cands)
    lines[i] = re.sub(r"\[([^\]]*)\]", lambda m: "[" + m.group(1) + ", 2]", lines[i], count=1)
    return "shape mismatch"


def mut_duplicate(rng, lines):
    cands = [i for i in _body_lines(lines) if re.match(r"[a-z]+\d+ = ", lines[i])]
    if len(cands) < 2:
        return None
    i, j = sorted(rng.sample(cands, 2))
    lines[j] = lines[i].split(" = ")[0] + " = " + lines[j].split(" = ", 1)[1]
    return "duplicated name"


def mut_swap_lines(rng, lines):
    cands = [i for i in _body_lines(lines) if re.match(r"[a-z]+\d+ = ", lines[i])]
    if len(cands) < 2:
        return None
    i, j = rng.sample(cands, 2)
    lines[i], lines[j] = lines[j], lines[i]
    return "use before definition"


def mut_garbage(rng, lines):
    i = rng.choice(_body_lines(lines))
    pos = rng.randint(0, len(lines[i]))
    lines[i] = lines[i][:pos] + rng.choice(["$", "((", ")", ",,", "=", "@", "1x", "é", "[", "\t;"]) + lines[i][pos:]
    return "stray characters"


def mut_builtin_misuse(rng, lines):
    cands = [i for i in _body_lines(lines) if re.match(r"[a-z]+\d+ = ", lines[i])]
    if not cands:
        return None
    i = rng.choice(cands)
    name, rhs = lines[i].split(" = ", 1)
    lines[i] = f"{name} = " + rng.choice([f"softmax({rhs})", f"conv2d({rhs}, 2, 3)", f"lstm({rhs}, 2)",
                                          f"maxpool({rhs}, 9)", f"flatten(3)", f"cross_entropy({rhs}, 1)",
                                          f"dense({rhs}, 2.5)", f"concat({rhs})", f"where({rhs}, 1, 2)"])
    return "misused built-in"


MUTATIONS = [(mut_delete_token, 3), (mut_undefined_name, 2), (mut_size, 2), (mut_keyword, 2), (mut_value, 1),
             (mut_shape, 1.5), (mut_duplicate, 1.5), (mut_swap_lines, 1), (mut_garbage, 1.5),
             (mut_builtin_misuse, 1.5)]


def mutate(text: str, seed: int) -> tuple[str, str]:
    """One random mutation of a model's text, and what it did."""
    rng = random.Random(seed)
    for _ in range(20):
        lines = _lines(text)
        fn = rng.choices([m for m, _ in MUTATIONS], [w for _, w in MUTATIONS])[0]
        what = fn(rng, lines)
        if what is not None:
            new = "\n".join(lines) + "\n"
            if new != text:
                return new, what
    return text + "h999 = undefined_thing\n", "undefined name"
