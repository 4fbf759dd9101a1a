"""PC sampler overhead: wall time / (NFE x time of one jitted score evaluation).

The PC loop runs on device (`lax.fori_loop`), so the ratio should be close to 1: everything
beyond the score evaluations (noise draws, norms, updates, loop control) is overhead.
Target: <= 1.10. Writes bench/results/sampler_overhead.json.

    python bench/sampler_overhead.py [--batch 16] [--size 16] [--steps 200]
"""

import argparse

import _common
import jax

import sampling
import sde_lib


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="channels of the conv net")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    shape = (args.batch, args.size, args.size, 3)
    rows = []
    for sde_name, sde in [
        ("vesde", sde_lib.VESDE(N=args.steps)),
        ("vpsde", sde_lib.VPSDE(N=args.steps)),
    ]:
        channels = (3, args.width, args.width, 3)
        score_fn = _common.conv_score_fn(sde, jax.random.key(0), channels=channels)
        x = jax.random.normal(jax.random.key(1), shape)
        t = jax.numpy.full((args.batch,), 0.5)
        one_eval, _ = _common.median_time(jax.jit(score_fn), x, t, repeats=50, warmup=3)
        for predictor, corrector in [
            ("reverse_diffusion", "langevin"),
            ("euler_maruyama", "none"),
            ("ancestral_sampling", "none"),
            ("none", "langevin"),
        ]:
            sampler = sampling.get_pc_sampler(sde, score_fn, shape, predictor, corrector)
            nfe = sampler(jax.random.key(0))[1]
            wall, _ = _common.median_time(
                lambda k, s=sampler: s(k)[0], jax.random.key(2), repeats=args.repeats
            )
            ratio = wall / (nfe * one_eval)
            overhead_us = (wall - nfe * one_eval) / sde.N * 1e6
            rows.append(
                dict(
                    sde=sde_name,
                    predictor=predictor,
                    corrector=corrector,
                    nfe=int(nfe),
                    wall_s=wall,
                    score_eval_s=one_eval,
                    ratio=ratio,
                    overhead_per_step_us=overhead_us,
                )
            )
            print(
                f"{sde_name:6s} {predictor:18s} {corrector:9s} nfe {nfe:5d} wall {wall:7.3f}s "
                f"score {one_eval * 1e3:6.3f}ms  ratio {ratio:.3f}  overhead/step {overhead_us:6.0f}us"
            )
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target <= 1.10)")
    _common.write_result(
        "sampler_overhead",
        {"args": vars(args), "rows": rows, "worst_ratio": worst, "target": 1.10},
    )


if __name__ == "__main__":
    main()
