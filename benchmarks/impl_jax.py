"""JAX + optax Adam step: `python benchmarks/impl_jax.py --model lecture`.

The whole step (loss, gradient, Adam update) is one `jax.jit` function that donates the
parameter and optimiser-state buffers; it is compiled ahead of time (`lower().compile()`,
reported as `compile_s`). By default every step waits for its loss (`block_until_ready`),
as `m.step` of nndsl returns the loss as a float; `JAX_BENCH_SYNC=sample` waits only at
the end of each timed sample, which lets JAX's asynchronous dispatch overlap the Python
side of step k+1 with the computation of step k.
"""
from __future__ import annotations

import os
import time

from _common import LR, BETA1, BETA2, EPS, MODELS, make_data, parse_args, run_benchmark, unavailable, xavier_limits

IMPL = "jax"


def build(model: str, x_np, y_np):
    import jax
    import jax.numpy as jnp
    import optax

    spec = MODELS[model]
    if spec.get("kind") == "lstm":
        return build_lstm(model, x_np, y_np)
    sizes = spec["sizes"]
    act = jnp.tanh if spec["act"] == "tanh" else jax.nn.relu
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
    if spec.get("batchnorm"):
        return build_cnn_bn(model, x_np, y_np)
    if model == "cnn":
        params, forward = _cnn(jax, jnp, keys)
    else:
        params = [
            (jax.random.uniform(k, (a, b), jnp.float32, -lim, lim), jnp.zeros((b,), jnp.float32))
            for k, a, b, lim in zip(keys, sizes[:-1], sizes[1:], xavier_limits(sizes))
        ]

        def forward(params, x):
            h = x
            for W, b in params[:-1]:
                h = act(h @ W + b)
            W, b = params[-1]
            return h @ W + b
    opt = optax.adam(LR, b1=BETA1, b2=BETA2, eps=EPS)
    opt_state = opt.init(params)

    if spec["loss"] == "squared":
        def loss_fn(params, x, y):  # ½ Σ_k (o_k − y_k)², mean over the batch
            o = forward(params, x)
            return 0.5 * jnp.mean(jnp.sum((o - y) ** 2, axis=1))
    else:
        def loss_fn(params, x, y):
            o = forward(params, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, y))

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    y = y_np.astype("int32") if spec["loss"] == "cross_entropy" else y_np
    return _compiled_step(train_step, params, opt_state, x_np, y)


def _cnn(jax, jnp, keys):
    """The CNN of issue 10 in NCHW / OIHW, as PyTorch and nndsl store it."""
    f1, f2, out = MODELS["cnn"]["sizes"]
    c, h, w = MODELS["cnn"]["image"]
    shapes = [(f1, c, 3, 3), (f2, f1, 3, 3), (f2 * (h // 4) * (w // 4), out)]
    keys = jax.random.split(keys[0], len(shapes))
    params = [(0.1 * jax.random.normal(k, s, jnp.float32), jnp.zeros((s[0] if len(s) == 4 else s[1],), jnp.float32))
              for k, s in zip(keys, shapes)]

    def conv_relu_pool(x, W, b):
        y = jax.lax.conv_general_dilated(x, W, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        y = jax.nn.relu(y + b[None, :, None, None])
        return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def forward(params, x):
        (W1, b1), (W2, b2), (W3, b3) = params
        h = conv_relu_pool(conv_relu_pool(x, W1, b1), W2, b2)
        return h.reshape((h.shape[0], -1)) @ W3 + b3

    return params, forward


def build_cnn_bn(model: str, x_np, y_np):
    """The CNN with batchnorm in training mode: batch statistics per channel (biased variance
    for normalising), running mean and unbiased variance updated with momentum 0.1 as
    torch's BatchNorm2d, carried beside the optimiser state (donated like it)."""
    import jax
    import jax.numpy as jnp
    import optax

    spec = MODELS[model]
    f1, f2, out = spec["sizes"]
    c, h, w = spec["image"]
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = dict(W1=0.1 * jax.random.normal(k[0], (f1, c, 3, 3), jnp.float32),
                  g1=jnp.ones((f1,), jnp.float32), b1=jnp.zeros((f1,), jnp.float32),
                  W2=0.1 * jax.random.normal(k[1], (f2, f1, 3, 3), jnp.float32),
                  g2=jnp.ones((f2,), jnp.float32), b2=jnp.zeros((f2,), jnp.float32),
                  W3=0.1 * jax.random.normal(k[2], (f2 * (h // 4) * (w // 4), out), jnp.float32),
                  b3=jnp.zeros((out,), jnp.float32))
    stats = dict(m1=jnp.zeros((f1,), jnp.float32), v1=jnp.ones((f1,), jnp.float32),
                 m2=jnp.zeros((f2,), jnp.float32), v2=jnp.ones((f2,), jnp.float32))
    opt = optax.adam(LR, b1=BETA1, b2=BETA2, eps=EPS)

    def block(x, W, g, b, rm, rv):
        y = jax.lax.conv_general_dilated(x, W, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        mean = y.mean(axis=(0, 2, 3))
        var = y.var(axis=(0, 2, 3))
        count = y.shape[0] * y.shape[2] * y.shape[3]
        y = (y - mean[None, :, None, None]) * jax.lax.rsqrt(var + 1e-5)[None, :, None, None]
        y = jax.nn.relu(y * g[None, :, None, None] + b[None, :, None, None])
        y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        rm = 0.9 * rm + 0.1 * jax.lax.stop_gradient(mean)
        rv = 0.9 * rv + 0.1 * jax.lax.stop_gradient(var) * count / (count - 1)
        return y, rm, rv

    def loss_fn(p, st, x, y):
        a, m1, v1 = block(x, p["W1"], p["g1"], p["b1"], st["m1"], st["v1"])
        a, m2, v2 = block(a, p["W2"], p["g2"], p["b2"], st["m2"], st["v2"])
        o = a.reshape((a.shape[0], -1)) @ p["W3"] + p["b3"]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, y))
        return loss, dict(m1=m1, v1=v1, m2=m2, v2=v2)

    def train_step(p, carry, x, y):
        opt_state, st = carry
        (loss, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, st, x, y)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), (opt_state, st), loss

    return _compiled_step(train_step, params, (opt.init(params), stats), x_np, y_np.astype("int32"))


def build_lstm(model: str, x_np, y_np):
    """The LSTM as one `lax.scan` over steps (gates stacked: one matmul per step)."""
    import jax
    import jax.numpy as jnp
    import optax

    spec = MODELS[model]
    F, H = spec["features"], spec["hidden"]
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    lim = lambda a, b: (6.0 / (a + b)) ** 0.5          # noqa: E731
    params = dict(W=jax.random.uniform(k[0], (F, 4 * H), jnp.float32, -lim(F, H), lim(F, H)),
                  U=jax.random.uniform(k[1], (H, 4 * H), jnp.float32, -lim(H, H), lim(H, H)),
                  b=jnp.zeros((4 * H,), jnp.float32),
                  V=jax.random.uniform(k[2], (H, 1), jnp.float32, -lim(H, 1), lim(H, 1)),
                  c=jnp.zeros((1,), jnp.float32))
    opt = optax.adam(LR, b1=BETA1, b2=BETA2, eps=EPS)
    opt_state = opt.init(params)

    def loss_fn(p, x, y):
        xw = jnp.einsum("ntf,fg->tng", x, p["W"]) + p["b"]      # input projections, all steps

        def cell(carry, xw_t):
            h, c = carry
            z = xw_t + h @ p["U"]
            i, f, g, o = jnp.split(z, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        n = x.shape[0]
        (h, _), _ = jax.lax.scan(cell, (jnp.zeros((n, H)), jnp.zeros((n, H))), xw)
        o = h @ p["V"] + p["c"]
        return 0.5 * jnp.mean(jnp.sum((o - y) ** 2, axis=1))

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return _compiled_step(train_step, params, opt_state, x_np, y_np)


def _compiled_step(train_step, params, opt_state, x_np, y_np):
    """`train_step` compiled ahead for this batch (parameters and optimiser state donated):
    (step() → loss, compile seconds)."""
    import jax
    x, y = jax.device_put(x_np), jax.device_put(y_np)
    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = compiled(state[0], state[1], x, y)
        return loss

    return step, compile_s


def main(argv=None):
    args = parse_args(IMPL, argv)
    try:
        import jax
        import optax  # noqa: F401
    except ImportError as exc:
        unavailable(IMPL, args.model, f"jax/optax not importable: {exc}")
    x, y = make_data(args.model, args.data)

    def setup():
        compiled_step, compile_s = build(args.model, x, y)
        sync_mode = os.environ.get("JAX_BENCH_SYNC", "step")
        if sync_mode == "step":
            def each_step():
                return compiled_step().block_until_ready()
        elif sync_mode == "sample":
            each_step = compiled_step
        else:
            raise SystemExit(f"JAX_BENCH_SYNC must be 'step' or 'sample', not {sync_mode!r}")
        return each_step, {"compile_s": compile_s, "sync": lambda r: r.block_until_ready(),
                           "sync_mode": sync_mode, "backend": jax.default_backend()}

    run_benchmark(IMPL, args, setup, version=jax.__version__)


if __name__ == "__main__":
    main()
