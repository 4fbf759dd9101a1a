"""On-device diffrax ODE sampling and likelihood vs the paper's host-side scipy approach.

The paper's code integrates the probability-flow ODE with `scipy.integrate.solve_ivp(RK45)` on
the host, calling the jitted drift (and divergence) once per function evaluation. Here the whole
solve is one XLA program (diffrax Dopri5 + PID controller). Same score, same tolerances
(rtol = atol = 1e-5), same start point; we report wall-time ratios, NFE of both, and how far
the results are apart. Writes bench/results/ode_vs_host.json.

    python bench/ode_vs_host.py [--batch 16] [--size 16] [--width 32]
"""

import argparse
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

import likelihood
import sampling
import sde_lib


def scipy_ode_sample(sde, score_fn, x0, eps, rtol, atol):
    """The original get_ode_sampler: host RK45 over the flattened batch (float64 in scipy)."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    shape = x0.shape
    drift = jax.jit(lambda x, t: rsde.sde(x, t)[0])

    def ode_func(t, y):
        x = jnp.asarray(y, jnp.float32).reshape(shape)
        return np.asarray(drift(x, jnp.full((shape[0],), t))).reshape(-1).astype(np.float64)

    sol = integrate.solve_ivp(
        ode_func, (sde.T, eps), np.asarray(x0).reshape(-1), rtol=rtol, atol=atol, method="RK45"
    )
    return sol.y[:, -1].reshape(shape), sol.nfev


def scipy_likelihood(sde, score_fn, x, e, eps, rtol, atol):
    """The original get_likelihood_fn: host RK45 over [x ; delta_logp], Hutchinson divergence."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    drift_fn = lambda x, t: rsde.sde(x, t)[0]
    div_fn = likelihood.get_div_fn(drift_fn)
    shape = x.shape
    b, d = shape[0], int(np.prod(shape[1:]))
    both = jax.jit(lambda x, t: (drift_fn(x, t), div_fn(x, t, e)))

    def ode_func(t, y):
        xs = jnp.asarray(y[:-b], jnp.float32).reshape(shape)
        drift, div = both(xs, jnp.full((b,), t))
        return np.concatenate([np.asarray(drift).reshape(-1), np.asarray(div)]).astype(np.float64)

    init = np.concatenate([np.asarray(x).reshape(-1), np.zeros(b)])
    sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    z = sol.y[:-b, -1].reshape(shape)
    delta = sol.y[-b:, -1]
    prior = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)))
    bpd = -(prior + delta) / np.log(2) / d + 8.0
    return bpd, z, sol.nfev


def timed(fn, repeats, warmup=True):
    """Median wall time; the warm-up call (compilation) is not timed."""
    out = fn() if warmup else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (args.batch, args.size, args.size, 3)
    rtol = atol = 1e-5
    rows = []
    for name, sde, eps in [
        ("vesde", sde_lib.VESDE(), 1e-5),
        ("vpsde", sde_lib.VPSDE(), 1e-3),
    ]:
        score_fn = _common.conv_score_fn(sde, jax.random.key(0), (3, args.width, args.width, 3))
        z = sde.prior_sampling(jax.random.key(1), shape)
        # Sampling: T -> eps.
        dev = sampling.get_ode_sampler(sde, score_fn, shape, rtol=rtol, atol=atol, eps=eps)
        (x_dev, nfe_dev), t_dev = timed(lambda d=dev, z=z: d(jax.random.key(0), z), args.repeats)
        # Host solves are timed once, without a full warm-up solve: the jitted drift compiles
        # on its first call, which costs about as much as one device-side compilation.
        (x_host, nfe_host), t_host = timed(
            lambda s=sde, f=score_fn, z=z, e=eps: scipy_ode_sample(s, f, z, e, rtol, atol),
            1,
            warmup=False,
        )
        diff = float(np.max(np.abs(np.asarray(x_dev) - x_host)))
        rows.append(
            dict(
                task="ode_sampling",
                sde=name,
                device_s=t_dev,
                host_s=t_host,
                speedup=t_host / t_dev,
                nfe_device=int(nfe_dev),
                nfe_host=int(nfe_host),
                max_abs_diff=diff,
                scale=float(np.max(np.abs(x_host))),
            )
        )
        # Likelihood: eps -> T on data-like inputs, same Rademacher probe.
        x = jnp.clip(jax.random.normal(jax.random.key(2), shape) * 0.5, -1, 1)
        e = jax.random.rademacher(jax.random.key(3), shape, jnp.float32)
        lik = likelihood.get_likelihood_fn(sde, score_fn, rtol=rtol, atol=atol, eps=1e-5)
        (bpd_dev, _, nfe_l_dev), t_l_dev = timed(
            lambda f=lik, x=x: f(jax.random.key(3), x), args.repeats
        )
        (bpd_host, _, nfe_l_host), t_l_host = timed(
            lambda s=sde, f=score_fn, x=x, e=e: scipy_likelihood(s, f, x, e, 1e-5, rtol, atol),
            1,
            warmup=False,
        )
        rows.append(
            dict(
                task="likelihood",
                sde=name,
                device_s=t_l_dev,
                host_s=t_l_host,
                speedup=t_l_host / t_l_dev,
                nfe_device=int(nfe_l_dev),
                nfe_host=int(nfe_l_host),
                max_abs_diff=float(np.max(np.abs(np.asarray(bpd_dev) - bpd_host))),
                scale=float(np.mean(bpd_host)),
            )
        )
    for r in rows:
        print(
            f"{r['task']:12s} {r['sde']:6s} device {r['device_s']:7.3f}s host {r['host_s']:7.3f}s "
            f"speedup x{r['speedup']:.2f}  nfe {r['nfe_device']}/{r['nfe_host']}  "
            f"max|diff| {r['max_abs_diff']:.2e} (scale {r['scale']:.3g})"
        )
    _common.write_result(
        "ode_vs_host", {"args": vars(args), "rtol": rtol, "atol": atol, "rows": rows}
    )


if __name__ == "__main__":
    main()
