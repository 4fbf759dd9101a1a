"""Shared pieces of the benchmarks: a small convolutional score network and timing helpers.

Benchmarks print ratios against a baseline measured in the same process and write JSON to
bench/results/. They are not tests.
"""

import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def conv_score_fn(sde, key, channels=(3, 32, 32, 3), scale=0.1):
    """A small random conv net (3x3 convs, swish) added to the N(0, I)-data score of `sde`,
    both scaled by the marginal std as trained score networks are.

    The analytic part keeps the ODE well behaved; the network part makes every evaluation cost
    what a (tiny) score network costs.
    """
    keys = jax.random.split(key, len(channels) - 1)
    weights = [
        jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(1.0 / (9 * cin))
        for k, cin, cout in zip(keys, channels[:-1], channels[1:])
    ]

    def net(x, t):
        h = x
        for i, w in enumerate(weights):
            h = jax.lax.conv_general_dilated(
                h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            if i < len(weights) - 1:
                h = jax.nn.swish(h + t[:, None, None, None])
        return h

    def score_fn(x, t):
        mean_coeff, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
        # Total std of p_t for N(0, I) data; the network sees x / sd and its output is divided
        # by sd, like a real score network (scale_by_sigma), so the flow stays well scaled.
        sd = jnp.sqrt(mean_coeff[:, 0] ** 2 + std**2)[:, None, None, None]
        return -x / sd**2 + scale * net(x / sd, t) / sd

    return score_fn


def median_time(fn, *args, repeats=5, warmup=1):
    """Median wall time of `fn(*args)` (blocking on the result) over `repeats` runs."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def interleaved(fns, repeats, warmup=1):
    """Wall times of every `fns[name]()` (blocking on the result), timed round robin after
    `warmup` runs of each: `({name: median}, {name: [times]})`."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in fns if r % 2 == 0 else list(fns)[::-1]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}, times


def environment():
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_result(name, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **payload}
    suffix = "" if jax.default_backend() == "cpu" else f"_{jax.default_backend()}"
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
