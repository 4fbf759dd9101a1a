"""DDLS Langevin throughput: steps/s of the latent chain for a batch of latents (CIFAR-10 DCGAN).

Baseline measured in the same process: one jitted forward + backward of the energy,
`grad_z [||z||^2/2 - d(G(z))]`, on the same batch. A Langevin step is that plus the noise draw
and the update, so the ratio (time per chain step / time per gradient) should be close to 1.
Both chain drivers are timed: `lax.scan` on device and the host loop over a jitted step (the
default on CPU, where XLA runs convolution gradients inside loop bodies much slower).
Random initialisation is fine: the cost does not depend on the weights.
Writes bench/results/ddls_langevin.json.

    python bench/ddls_langevin.py [--batch 500] [--steps 20] [--config configs/ddls/cifar10_dcgan.py]
"""

import argparse
import importlib.util
import time

import _common
import jax
import numpy as np

from experiments import ddls as ddls_experiment
from experiments import gan as gan_lib
from samplers import ddls


def _load_config(path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(_common.ROOT / "configs/ddls/cifar10_dcgan.py"))
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20, help="Langevin steps per timed chain")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = _load_config(args.config)
    generator, discriminator, tx, _ = gan_lib.build(config)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    state = jax.jit(
        lambda k: gan_lib.init_state(generator, discriminator, tx, k, shape, config.model.z_dim)
    )(jax.random.key(0))
    logit_fn = ddls_experiment.get_logit_fn(generator, discriminator, state)
    z = jax.random.normal(jax.random.key(1), (args.batch, config.model.z_dim))

    grad_fn = jax.jit(ddls.get_energy_grad_fn(logit_fn))
    samplers = {
        name: ddls.get_ddls_sampler(logit_fn, step_size=0.01, n_steps=args.steps, host_loop=h)
        for name, h in (("scan", False), ("host_loop", True))
    }
    # Interleave baseline and chains, so that load from other processes hits both alike.
    times = {"grad": [], **{name: [] for name in samplers}}
    for r in range(args.repeats + 1):
        for name, fn in [("grad", lambda: grad_fn(z))] + [
            (n, lambda s=s: s(jax.random.key(2), z)[0]) for n, s in samplers.items()
        ]:
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            if r:  # the first round compiles
                times[name].append(time.perf_counter() - t0)
    one_grad = float(np.median(times["grad"]))
    rows = {}
    for name in samplers:
        per_step = float(np.median(times[name])) / args.steps
        rows[name] = {
            "steps_per_sec": 1 / per_step,
            "seconds_per_step": per_step,
            "latents_per_sec": args.batch / per_step,
            "ratio": per_step / one_grad,
        }
        print(
            f"{name:9s} batch {args.batch}: {1 / per_step:.2f} Langevin steps/s "
            f"({per_step * 1e3:.1f} ms/step); energy grad {one_grad * 1e3:.1f} ms; "
            f"ratio {per_step / one_grad:.3f} (target <= 1.10)"
        )
    _common.write_result(
        "ddls_langevin",
        {
            "args": vars(args),
            "ngf": config.model.ngf,
            "ndf": config.model.ndf,
            "image_size": config.data.image_size,
            "energy_grad_s": one_grad,
            "rows": rows,
            "target": 1.10,
        },
    )


if __name__ == "__main__":
    main()
