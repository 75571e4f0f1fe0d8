"""Optimiser updates as shared kernels: one per optimiser kind and dtype, hyperparameters as
arguments, so every model (and every named loss) with an Adam step uses one compiled update.

Each update first sums the squared gradient over its parameter ranges: a non-finite loss or
gradient leaves the parameters at their last finite values (it returns early), and
`clip_norm > 0` rescales the gradient to that norm.  The loops run over slices of one range
at a time: simple loops that LLVM vectorises.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

_HEAD = '''\
lr = F(lr)                                # keep the update loops in the parameters' precision
norm2 = F(0.0)
for r in range(ranges.shape[0]):
    dp = grad[ranges[r, 0]:ranges[r, 1]]
    for i in range(dp.size):
        norm2 += dp[i] * dp[i]
if not (np.isfinite(value) and np.isfinite(norm2)):
    return                                # leave the parameters at their last finite values
scale = F(1.0)
if clip_norm > 0.0 and math.sqrt(norm2) > clip_norm:
    scale = F(clip_norm / math.sqrt(norm2))
'''

# heavy-ball momentum; Nesterov's step looks ahead along the new velocity
_MOMENTUM = '''\
mu = F(momentum)
for r in range(ranges.shape[0]):
    lo, hi = ranges[r, 0], ranges[r, 1]
    p, dp, v = theta[lo:hi], grad[lo:hi], s1[lo:hi]
    for i in range(p.size):
        g = dp[i] * scale
        v[i] = mu * v[i] + g if t > 1 else g
        p[i] -= lr * {step}
'''

# kind: (hyperparameter names, body after _HEAD)
_BODIES = {
    "adam": (("beta1", "beta2", "eps"), '''\
b1, b2, e = F(beta1), F(beta2), F(eps)
step_size = F(lr / (1.0 - beta1 ** t))
inv_root_correction = F(1.0 / math.sqrt(1.0 - beta2 ** t))
for r in range(ranges.shape[0]):
    lo, hi = ranges[r, 0], ranges[r, 1]
    p, dp, m, v = theta[lo:hi], grad[lo:hi], s1[lo:hi], s2[lo:hi]
    for i in range(p.size):
        g = dp[i] * scale
        m[i] = b1 * m[i] + (F(1.0) - b1) * g
        v[i] = b2 * v[i] + (F(1.0) - b2) * g * g
        p[i] -= step_size * m[i] / (math.sqrt(v[i]) * inv_root_correction + e)
'''),
    "sgd": ((), '''\
for r in range(ranges.shape[0]):
    lo, hi = ranges[r, 0], ranges[r, 1]
    p, dp = theta[lo:hi], grad[lo:hi]
    for i in range(p.size):
        p[i] -= lr * (dp[i] * scale)
'''),
    "momentum": (("momentum",), _MOMENTUM.format(step="v[i]")),
    "nesterov": (("momentum",), _MOMENTUM.format(step="(g + mu * v[i])")),
    "adagrad": (("eps",), '''\
e = F(eps)
for r in range(ranges.shape[0]):
    lo, hi = ranges[r, 0], ranges[r, 1]
    p, dp, G = theta[lo:hi], grad[lo:hi], s1[lo:hi]
    for i in range(p.size):
        g = dp[i] * scale
        G[i] += g * g
        p[i] -= lr * g / (math.sqrt(G[i]) + e)
'''),
    "rmsprop": (("rho", "eps"), '''\
r_, e = F(rho), F(eps)
for r in range(ranges.shape[0]):
    lo, hi = ranges[r, 0], ranges[r, 1]
    p, dp, v = theta[lo:hi], grad[lo:hi], s1[lo:hi]
    for i in range(p.size):
        g = dp[i] * scale
        v[i] = r_ * v[i] + (F(1.0) - r_) * g * g
        p[i] -= lr * g / (math.sqrt(v[i]) + e)
'''),
}


@dataclass
class UpdateKernel:
    name: str
    kind: str
    params: list[str]
    body: list[str]
    args: list[str]              # the hyperparameter values, as argument texts

    @property
    def text(self) -> str:
        return "\n".join([f"def {self.name}({', '.join(self.params)}):"] + ["    " + line for line in self.body])


def update_kernel(optimizer, dtype: str) -> UpdateKernel:
    """The shared update kernel for an `ir.Optimizer`, and the hyperparameters to pass it."""
    kind = optimizer.kind
    if kind == "sgd" and optimizer.args.get("momentum", 0.0) > 0:
        kind = "nesterov" if optimizer.args.get("nesterov") else "momentum"
    names, body = _BODIES[kind]
    params = ["theta", "grad", "s1", "s2", "ranges", "value", "t", "lr", "clip_norm", *names]
    # returns nothing: the entry calls it through its address as a function of no result
    lines = (_HEAD + body).splitlines()
    digest = hashlib.sha256("\n".join([dtype, *params, *lines]).encode()).hexdigest()[:12]
    args = [repr(float(optimizer.args[n])) for n in names]
    return UpdateKernel(f"update_{kind}_{digest}", kind, params, lines, args)
