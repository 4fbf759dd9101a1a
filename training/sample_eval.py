"""Resumable evaluation rounds of a score model (samples, bits/dim) and their metrics.

Shared by `run_lib.evaluate` and the sampler sweeps. Each round is saved to its own file as
soon as it is done (atomically: written, then renamed), so a killed evaluation resumes at the
first missing round and reproduces exactly what an uninterrupted one would have computed:
round `r` always uses the key `fold_in(key, r)`.

Files go through `fileio` (local or gs:// workdirs). Multi-host: process 0 alone writes the
rounds, decides which are done and sends those to the other processes (`devices.main_bytes`),
so every process runs the same sampling collectives, even on hosts with their own disks.
"""

from __future__ import annotations

import io
import time

import jax
import numpy as np
from absl import logging

import datasets
import evaluation
import fileio
import likelihood
import utils
from models import feature_extractor
from training import devices


def _save_round(path: str, **arrays) -> None:
    """Writes one round's arrays atomically (process 0 only): a killed run never leaves a
    half-written round."""
    if utils.is_main_process():
        fileio.save_npz(path, **arrays)


def _saved_round(path: str) -> dict | None:
    """The arrays of a saved round (process 0's file, on every process), or None."""
    data = devices.main_bytes(lambda: fileio.read_bytes(path) if fileio.exists(path) else None)
    if data is None:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return dict(f)


def _compile(fn, key, params):
    """AOT-compiles a jitted `fn(key, params)`; returns (callable, compile seconds)."""
    start = time.perf_counter()
    if hasattr(fn, "lower"):
        fn = fn.lower(key, params).compile()
    else:  # Not a jitted function: one warm-up call stands in for compilation.
        jax.block_until_ready(fn(key, params))
    return fn, time.perf_counter() - start


def sample_rounds(sampling_fn, params, key, num_samples: int, batch_size: int, folder: str,
                  prefix: str = "samples_", desc: str = "sampling") -> dict:  # fmt: skip
    """Draws `num_samples` samples in rounds of `batch_size`; one npz file per round.

    Args:
      sampling_fn: jitted `sampling_fn(key, params) -> (images in [0, 1], nfe)`.
      params: the parameters to sample with.
      key: round `r` uses `fold_in(key, r)`.
      num_samples: how many samples (the last round's surplus is dropped).
      batch_size: samples per round (the batch of `sampling_fn`).
      folder: where `<prefix><r>.npz` (uint8 `samples`, `nfe`, `wall` seconds) go.
      prefix: file-name prefix of the rounds.
      desc: the progress bar's label.

    Returns:
      `{'samples': uint8 [num_samples, H, W, C], 'nfe_rounds', 'wall_s' (sampling time without
      compilation), 'compile_s', 'images_per_s'}`.
    """
    rounds, compiled, compile_s = [], None, 0.0
    num_rounds = -(-num_samples // batch_size)
    bar = utils.progress_bar(num_rounds, desc=desc)
    for r in range(num_rounds):
        path = fileio.join(folder, f"{prefix}{r}.npz")
        saved = _saved_round(path)
        if saved is None:
            round_key = jax.random.fold_in(key, r)
            if compiled is None:
                compiled, compile_s = _compile(sampling_fn, round_key, params)
            start = time.perf_counter()
            x, nfe = jax.block_until_ready(compiled(round_key, params))
            wall = time.perf_counter() - start
            samples = utils.to_uint8(devices.gather(x))
            _save_round(path, samples=samples, nfe=devices.gather(nfe), wall=np.asarray(wall))
            rounds.append({"samples": samples, "nfe": np.asarray(nfe), "wall": wall})
        else:
            wall = saved.get("wall", np.nan)
            rounds.append({"samples": saved["samples"], "nfe": saved["nfe"], "wall": wall})
        bar.update()
    bar.close()
    wall_s = float(np.nansum([r["wall"] for r in rounds]))
    return {
        "samples": np.concatenate([r["samples"] for r in rounds])[:num_samples],
        "nfe_rounds": [float(r["nfe"]) for r in rounds],
        "wall_s": wall_s,
        "compile_s": compile_s,
        "images_per_s": len(rounds) * batch_size / wall_s if wall_s > 0 else float("nan"),
    }


def bpd_rounds(config, params, sde, model, folder: str, key, mesh, tag: str) -> float:
    """Bits/dim over the (uniformly dequantised) `eval.bpd_dataset` split, one file per batch.

    Batch `r` uses `fold_in(key, r)` and is saved to `<bpd_dataset>_<tag>_bpd_<r>.npz`; the log
    shows which batch of how many, and the running mean.
    """
    train_ds, test_ds, info = datasets.get_dataset(
        config,
        uniform_dequantization=True,
        evaluation=True,
        num_epochs=1 if config.eval.bpd_dataset == "train" else config.eval.bpd_num_repeats,
    )
    ds = train_ds if config.eval.bpd_dataset == "train" else test_ds
    total = _num_bpd_batches(config, info)
    scaler = datasets.get_data_scaler(config)
    # The solve's progress bar on a single process (the bar's callbacks run on every host).
    bpd_fn = likelihood.get_model_likelihood_fn(
        sde, model, datasets.get_data_inverse_scaler(config), progress=jax.process_count() == 1
    )
    sharding = devices.batch_sharding(mesh)
    all_bpds = []
    for r, batch in enumerate(ds):
        if 0 <= config.eval.bpd_max_batches <= r:
            break
        path = fileio.join(folder, f"{config.eval.bpd_dataset}_{tag}_bpd_{r}.npz")
        saved = _saved_round(path)
        if saved is not None:
            all_bpds.append(saved["bpd"])
            continue
        logging.info("bits/dim batch %d/%s: solving the probability-flow ODE ...", r + 1, total)
        start = time.perf_counter()
        x = devices.to_global(scaler(batch["image"]), sharding)
        bpd = devices.gather(bpd_fn(jax.random.fold_in(key, r), params, x)[0])
        _save_round(path, bpd=bpd)
        all_bpds.append(bpd)
        logging.info("bits/dim batch %d/%s: %.4f (%.0f s), running mean %.4f", r + 1, total,
                     np.mean(bpd), time.perf_counter() - start, np.mean(all_bpds))  # fmt: skip
    return float(np.mean(np.concatenate(all_bpds))) if all_bpds else float("nan")


def _num_bpd_batches(config, info) -> str:
    """How many bits/dim batches will run, as text ('?' when the split size is unknown)."""
    n = info.num_train if config.eval.bpd_dataset == "train" else info.num_eval
    repeats = 1 if config.eval.bpd_dataset == "train" else config.eval.bpd_num_repeats
    total = None if n is None else n * repeats // config.eval.batch_size
    if config.eval.bpd_max_batches >= 0:
        total = (
            config.eval.bpd_max_batches
            if total is None
            else min(total, config.eval.bpd_max_batches)
        )
    return "?" if total is None else str(total)


def reference_images(config, n: int) -> np.ndarray:
    """The first `n` training images as uint8 (the offline metrics' reference set)."""
    reference = config.copy_and_resolve_references()
    with reference.unlocked():
        reference.data.random_flip = False
        reference.eval.batch_size = min(config.eval.batch_size, n)
    train_ds, _, _ = datasets.get_dataset(reference, evaluation=True)
    out, total = [], 0
    for batch in train_ds:  # each host reads its block of every batch: gathered
        out.append(devices.allgather_host(utils.to_uint8(batch["image"])))
        total += len(out[-1])
        if total >= n:
            break
    return np.concatenate(out)[:n]


def sample_metrics(config, samples_uint8: np.ndarray) -> dict:
    """FID / IS / KID with Inception (TF-GAN), and/or FD / KID in an offline feature space.

    Inception is used unless `eval.inception_path == 'none'`; the offline extractor when
    `eval.feature_extractor_path` is set (reference: the first training images).
    """
    results = {}
    if config.eval.inception_path.lower() != "none":
        inceptionv3 = config.data.image_size >= 256
        model = evaluation.get_inception_model(inceptionv3, path=config.eval.inception_path)
        feats = evaluation.run_inception_distributed(samples_uint8, model, inceptionv3=inceptionv3)
        data_pools = evaluation.load_dataset_stats(config)
        results["fid"] = float(evaluation.compute_fid(data_pools, feats["pool_3"]))
        results["kid"] = float(evaluation.compute_kid(data_pools, feats["pool_3"]))
        results["inception_score"] = (
            -1.0 if inceptionv3 else float(evaluation.compute_inception_score(feats["logits"]))
        )
    if config.eval.get("feature_extractor_path", ""):
        extractor = feature_extractor.load(config.eval.feature_extractor_path)
        data_images = reference_images(config, len(samples_uint8))
        results.update(
            evaluation.compute_offline_metrics(
                extractor.features, data_images, samples_uint8, extractor.name
            )
        )
    return results
