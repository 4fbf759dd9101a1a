"""Uniquely identifiable encoding (Song et al. 2021, Sec. 4.3): images -> latents -> images.

The probability-flow ODE is a bijection between data and latents that depends on the data
distribution only (through the score), not on a separate encoder. `encode` integrates it from
`eps` to T (`likelihood.get_likelihood_fn`, which also returns bits/dim), `decode` back from T to
`eps` (`sampling.get_ode_sampler(key, z=...)`), both with diffrax Dopri5 at the same rtol / atol,
so the round trip returns the images up to the solvers' tolerance.

    python -m experiments.encode --config CFG --workdir W [--num 8] [--pair 0,1] [--steps 9]

writes `<out>/` (default `W/encode/`):
  round_trip.png     row 1: the images, row 2: decode(encode(x)), row 3: |error| x 10
  interpolation.png  the strip x_a | decode(slerp(z_a, z_b, s)) for s in linspace(0, 1, steps) | x_b
  encode.npz         images, latents, reconstructions, interpolation (float32)
  encode.json        round-trip errors (model units and 8-bit levels), NFE, latent norms

Interpolation is spherical (`slerp`), the customary choice for Gaussian latents: in D
dimensions z ~ N(0, s^2 I) lies near the sphere of radius s sqrt(D), and a straight line between
two such latents passes well inside it (at the midpoint of two orthogonal ones, radius / sqrt(2)),
where the prior has almost no mass; slerp keeps the interpolants on the sphere. `--interpolation
linear` is offered for comparison.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax import Array
from ml_collections import config_flags

import datasets
import fileio
import likelihood
import sampling
import utils
from experiments import controllable
from models import utils as mutils
from training import score_model

# The likelihood's start time (paper App. D.2); the decoder integrates back to the same time.
ENCODE_EPS = 1e-5


def slerp(z0: Array, z1: Array, s: Array) -> Array:
    """Spherical interpolation of two latents `[...]` at fractions `s` `[K]` -> `[K, ...]`.

    `sin((1 - s) w) / sin(w) z0 + sin(s w) / sin(w) z1` with w the angle between z0 and z1
    (flattened); falls back to the linear path when they are (nearly) parallel.
    """
    a, b = z0.reshape(-1), z1.reshape(-1)
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    s = jnp.asarray(s, z0.dtype)[:, None]
    parallel = jnp.sin(omega) < 1e-6
    safe = jnp.where(parallel, 1.0, jnp.sin(omega))
    w0 = jnp.where(parallel, 1.0 - s, jnp.sin((1.0 - s) * omega) / safe)
    w1 = jnp.where(parallel, s, jnp.sin(s * omega) / safe)
    return (w0 * a + w1 * b).reshape((-1, *z0.shape))


def lerp(z0: Array, z1: Array, s: Array) -> Array:
    """Linear interpolation `(1 - s) z0 + s z1` at fractions `s` `[K]` -> `[K, ...]`."""
    s = jnp.asarray(s, z0.dtype).reshape((-1,) + (1,) * z0.ndim)
    return (1.0 - s) * z0 + s * z1


INTERPOLATIONS = {"slerp": slerp, "linear": lerp}


def get_codec(sde, score_fn, *, eps: float = ENCODE_EPS, rtol: float = 1e-5, atol: float = 1e-5):
    """`(encode, decode)` through the probability-flow ODE of `sde` and `score_fn`.

    `encode(key, x) -> (z, bpd, nfe)`: x(eps) = x to z = x(T) (Hutchinson divergence, one probe
    `key`; it only affects `bpd`). `decode(key, z) -> (x, nfe)`: back from T to eps, no denoising
    step, so `decode(encode(x)) = x` up to the tolerances. Both are jitted; any batch shape.
    """
    encode_fn = likelihood.get_likelihood_fn(sde, score_fn, rtol=rtol, atol=atol, eps=eps)

    def encode(key, x):
        bpd, z, nfe = encode_fn(key, x)
        return z, bpd, nfe

    def decode(key, z):
        sampler = sampling.get_ode_sampler(
            sde, score_fn, z.shape, rtol=rtol, atol=atol, eps=eps, denoise=False
        )
        return sampler(key, z=z)

    return encode, decode


def round_trip_errors(x: np.ndarray, x_rec: np.ndarray, inverse_scaler) -> dict:
    """Max / RMS error in model units, max error in 8-bit levels, and the share of bytes that
    change when both are rounded to the nearest 8-bit level."""
    x, x_rec = np.asarray(x, np.float64), np.asarray(x_rec, np.float64)
    levels = np.asarray(inverse_scaler(x)) * 255.0, np.asarray(inverse_scaler(x_rec)) * 255.0
    return {
        "max_abs": float(np.max(np.abs(x_rec - x))),
        "rms": float(np.sqrt(np.mean((x_rec - x) ** 2))),
        "max_8bit_levels": float(np.max(np.abs(levels[1] - levels[0]))),
        "rounded_bytes_changed": float(np.mean(np.round(levels[0]) != np.round(levels[1]))),
    }


def _strip(rows: list[np.ndarray], ncol: int) -> np.ndarray:
    """One grid row per entry of `rows` (each `[n, H, W, C]` in [0, 1])."""
    return utils.image_grid(np.concatenate([utils.to_uint8(r) for r in rows]), nrow=ncol)


def run(config, workdir: str, *, num: int = 8, pair: tuple[int, int] = (0, 1), steps: int = 9,
        interpolation: str = "slerp", split: str = "test", image_folder: str | None = None,
        rtol: float = 1e-5, atol: float = 1e-5, eps: float = ENCODE_EPS,
        out_dir: str | None = None) -> dict:  # fmt: skip
    """Encodes `num` images, decodes them, interpolates between images `pair`; writes `out_dir`.

    Returns:
      The summary written to `encode.json`.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Unknown interpolation {interpolation!r}; valid: {sorted(INTERPOLATIONS)}"
        )
    if len(pair) != 2 or not all(0 <= i < num for i in pair):
        raise ValueError(f"--pair must be two image indices in 0..{num - 1}, got {pair}")
    if steps < 2:
        raise ValueError(f"--steps must be >= 2, got {steps}")
    utils.quiet_library_logs()
    out_dir = out_dir or fileio.join(workdir, "encode")
    sde, _ = score_model.sde_from_config(config)
    model = mutils.get_model(config)
    params, step = score_model.restore_score_params(config, workdir, model)
    params = jax.device_put(params, jax.local_devices()[0])
    # The flow is a continuous-time object: query the model as such (as likelihood / ODE do).
    score_fn = mutils.get_score_fn(sde, model, params, train=False, continuous=True)
    scaler, inverse_scaler = (
        datasets.get_data_scaler(config),
        datasets.get_data_inverse_scaler(config),
    )
    images = controllable.load_images(config, image_folder=image_folder, split=split, num=num)
    x = jnp.asarray(scaler(images))
    encode, decode = get_codec(sde, score_fn, eps=eps, rtol=rtol, atol=atol)
    key = jax.random.fold_in(jax.random.key(config.seed), 13)
    enc_key, dec_key = jax.random.split(key)
    # Images -> latents.
    z, bpd, nfe_enc = encode(enc_key, x)
    # Latents of the interpolation path between two of the images.
    s = jnp.linspace(0.0, 1.0, steps)
    z_path = INTERPOLATIONS[interpolation](z[pair[0]], z[pair[1]], s)
    # Latents -> images, the reconstructions and the path in one solve.
    decoded, nfe_dec = decode(dec_key, jnp.concatenate([z, z_path]))
    x_rec, x_path = decoded[:num], decoded[num:]
    errors = round_trip_errors(x, x_rec, inverse_scaler)
    logging.info("round trip of %d images: %s (NFE %d + %d)", num, errors, nfe_enc, nfe_dec)
    x_path = np.asarray(inverse_scaler(x_path))
    rec = np.asarray(inverse_scaler(x_rec))
    error = np.clip(np.abs(rec - images) * 10.0, 0.0, 1.0)
    fileio.makedirs(out_dir)
    utils.save_png(_strip([images, rec, error], num), fileio.join(out_dir, "round_trip.png"))
    strip = np.concatenate([images[pair[0] : pair[0] + 1], x_path, images[pair[1] : pair[1] + 1]])
    utils.save_png(_strip([strip], len(strip)), fileio.join(out_dir, "interpolation.png"))
    fileio.save_npz(fileio.join(out_dir, "encode.npz"), images=images, latents=np.asarray(z),
                    reconstructions=rec, interpolation=x_path)  # fmt: skip
    z_norm = np.linalg.norm(np.asarray(z).reshape(num, -1), axis=-1)
    prior = np.asarray(sde.prior_sampling(jax.random.key(0), (64, *z.shape[1:])))
    summary = {
        "checkpoint_step": int(step),
        "num_images": num,
        "rtol": rtol,
        "atol": atol,
        "eps": eps,
        "round_trip": errors,
        "nfe_encode": int(nfe_enc),
        "nfe_decode": int(nfe_dec),
        "interpolation": interpolation,
        "pair": list(pair),
        "latent_norm_mean": float(z_norm.mean()),
        "prior_norm_mean": float(np.linalg.norm(prior.reshape(64, -1), axis=-1).mean()),
        # Not dequantised images, so this is not the paper's bits/dim; a by-product of encoding.
        "bpd_of_inputs": float(np.mean(bpd)),
    }
    fileio.write_text_atomic(
        fileio.join(out_dir, "encode.json"), json.dumps(summary, indent=2) + "\n"
    )
    return summary


def main(argv):
    del argv
    f = flags.FLAGS
    pair = tuple(int(v) for v in f.pair.split(","))
    summary = run(f.config, f.workdir, num=f.num, pair=pair, steps=f.steps,
                  interpolation=f.interpolation, split=f.split, image_folder=f.image_folder,
                  rtol=f.rtol, atol=f.atol, eps=f.eps, out_dir=f.out)  # fmt: skip
    print(json.dumps(summary, indent=2))


def define_flags():
    """Defines the command's flags (only when it runs, so importing this module adds none)."""
    config_flags.DEFINE_config_file("config", None, "Score-model configuration.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Work directory of the trained score model.")
    flags.DEFINE_integer("num", 8, "Number of images to encode and decode.")
    flags.DEFINE_string("pair", "0,1", "Indices of the two images to interpolate between.")
    flags.DEFINE_integer("steps", 9, "Number of interpolants (both ends included).")
    flags.DEFINE_enum("interpolation", "slerp", sorted(INTERPOLATIONS), "Latent path.")
    flags.DEFINE_string("split", "test", "Dataset split of the images: test or train.")
    flags.DEFINE_string("image_folder", None, "Folder of input images (else --split).")
    flags.DEFINE_float("rtol", 1e-5, "Relative tolerance of both ODE solves.")
    flags.DEFINE_float("atol", 1e-5, "Absolute tolerance of both ODE solves.")
    flags.DEFINE_float("eps", ENCODE_EPS, "Time of the data end of the flow (both directions).")
    flags.DEFINE_string("out", None, "Output folder (default <workdir>/encode).")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
