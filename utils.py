"""Small run utilities: config dump, metric logging (JSONL + TensorBoard), sample grids.

Every file goes through `fileio`, so a workdir may be a local folder or a gs:// URL. Object
stores cannot append: on a remote workdir `MetricWriter` and the stdout.txt log keep their new
lines in memory and rewrite the object every `REMOTE_FLUSH_S` seconds, at every checkpoint
(`training.loop` calls `MetricWriter.flush`) and at exit; a killed run loses at most the lines
since then, which a resumed run writes again (it restarts from its last checkpoint).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import gc
import io
import json
import logging as std_logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import jax
import numpy as np
from absl import logging

import fileio

# Where multi-step loops run (the fused train steps, DDLS chains, the conditional sampler):
# "auto" (default) and "device" = device loops (`lax.scan` / `fori_loop`) on every backend;
# "host" = a host loop over one jitted step (train steps: unrolled). XLA:CPU used to run
# convolution gradients 30-100x slower inside loop bodies (jax-ml/jax#12868), and "auto" took
# the host branch on CPU; models/conv.py gives every network canonical-layout gradients, which
# XLA:CPU runs at full speed in a loop too, so the workaround is only a switch now.
LOOPS_ENV = "SCORE_SDE_LOOPS"
LOOP_MODES = ("auto", "device", "host")
# Remote workdirs: seconds between rewrites of metrics.jsonl, TensorBoard and stdout.txt.
REMOTE_FLUSH_S = 30.0


def device_loops(override: bool | None = None) -> bool:
    """True when loops should run on device (`lax.scan`), per `override` or `$SCORE_SDE_LOOPS`.

    Raises:
      ValueError: `$SCORE_SDE_LOOPS` is not one of `LOOP_MODES`.
    """
    if override is not None:
        return bool(override)
    mode = os.environ.get(LOOPS_ENV, "auto").strip().lower() or "auto"
    if mode not in LOOP_MODES:
        raise ValueError(f"{LOOPS_ENV}={mode!r} is not one of {LOOP_MODES}; unset it or pick one.")
    return mode in ("auto", "device")


# The persistent compilation cache of the command lines (`setup_jax_runtime`): a directory,
# or "off". Unset: `default_compilation_cache_dir()`.
COMPILATION_CACHE_ENV = "SCORE_SDE_COMPILATION_CACHE"
# At start-up the oldest entries are deleted while the cache holds more than this.
COMPILATION_CACHE_MAX_BYTES = 4 << 30
_OFF = ("off", "0", "false", "no", "none")


# XLA:CPU's kernel libraries for the processes this project starts (`setup_jax_runtime`):
# matrix products and reductions through YNNPACK, as by default, convolutions through XLA's own
# (Eigen) kernels instead of YNNPACK's. YNNPACK's kernel-gradient convolution contracts only
# the batch per window tap (8 features at batch 8): ~105-130 GFLOP/s against ~170-190 for
# XLA's on 2 cores, forward and input gradient about even. Same-process A/B, the full CIFAR-10
# train step at batch 8 (values equal to float rounding): DDPM++ cont. 0.88x, NCSN++ cont.
# 0.96x the time, forwards 0.91-0.96x. A flag set in $XLA_FLAGS already is left as set.
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce",)


def with_xla_cpu_flags(flags: str) -> str:
    """`flags` (an `XLA_FLAGS` value) plus each of `XLA_CPU_FLAGS` that it does not set."""
    out = flags.split()
    names = {f.split("=", 1)[0] for f in out}
    out += [f for f in XLA_CPU_FLAGS if f.split("=", 1)[0] not in names]
    return " ".join(out)


def configure_xla_cpu() -> bool:
    """Adds `XLA_CPU_FLAGS` to `$XLA_FLAGS` (see there). XLA reads them when JAX creates its
    backends: returns False, with a warning, when it had to add one and that has happened
    already in this process."""
    flags = os.environ.get("XLA_FLAGS", "")
    merged = with_xla_cpu_flags(flags)
    if merged == " ".join(flags.split()):
        return True
    os.environ["XLA_FLAGS"] = merged
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        logging.warning(
            "JAX's backends exist already: %s take effect in new processes only. Call "
            "utils.setup_jax_runtime() before the first JAX computation.", " ".join(XLA_CPU_FLAGS)
        )  # fmt: skip
        return False
    return True


def default_compilation_cache_dir() -> str:
    """`$XDG_CACHE_HOME/score_sde_jax/compilation_cache` (`~/.cache/...` without XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "score_sde_jax", "compilation_cache")


def setup_jax_runtime(cache_dir: str | None = None) -> str | None:
    """What the command lines set up before anything compiles: XLA:CPU's kernel choice
    (`configure_xla_cpu`, so call this before the first JAX computation) and JAX's persistent
    compilation cache, so that a second start of the same run (and eval, sweeps or a resumed
    run of the same model) loads its executables instead of compiling them (the full DDPM++
    train step takes ~46 s to compile on 2 CPU cores).

    The cache is per user and machine rather than per workdir: runs and modes of one model
    share entries, it stays on local disk when the workdir is on GCS, and executables built for
    one host's CPU never sit in a workdir that another host reads. Entries are keyed by the
    program, JAX/XLA versions and compile options (a changed model or flag compiles anew), so
    the directory is safe to delete at any time; it is pruned to `COMPILATION_CACHE_MAX_BYTES`
    (oldest first) here.

    Args:
      cache_dir: the cache directory, or "off"; None = `$SCORE_SDE_COMPILATION_CACHE`, else
        `default_compilation_cache_dir()`.

    Returns:
      The cache directory in use, or None when it is off.
    """
    configure_xla_cpu()
    setting = cache_dir if cache_dir is not None else os.environ.get(COMPILATION_CACHE_ENV, "")
    setting = setting.strip()
    if setting.lower() in _OFF:
        return None
    path = os.path.abspath(os.path.expanduser(setting or default_compilation_cache_dir()))
    try:
        os.makedirs(path, exist_ok=True)
        _prune_cache(path, COMPILATION_CACHE_MAX_BYTES)
    except OSError as e:  # a read-only home, a full disk: run without the cache
        logging.warning("Compilation cache %s unusable (%s); compiling without it.", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    logging.info("JAX compilation cache: %s (%s=off disables it)", path, COMPILATION_CACHE_ENV)
    return path


def _prune_cache(path: str, max_bytes: int) -> None:
    """Deletes the least recently written files of `path` while it holds more than `max_bytes`."""
    entries = []
    with os.scandir(path) as it:
        for e in it:
            if e.is_file():
                st = e.stat()
                entries.append((st.st_mtime, st.st_size, e.path))
    total = sum(size for _, size, _ in entries)
    for _, size, file in sorted(entries):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            os.remove(file)
            total -= size


def release_host_memory() -> None:
    """Hands the C heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere),
    after a garbage collection.

    XLA's compiler and the init of a large train state free hundreds of MB in small blocks that
    glibc keeps mapped, and the first train step's buffers then come on top of them: called
    after both, it lowers the peak RSS of a full DDPM++ run at batch 8 by ~1 GB. The collection
    first: a jitted function that is gone can still hold its executable in a reference cycle
    (the DDPM++ cont. init: ~70 MB).
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def is_main_process() -> bool:
    return jax.process_index() == 0


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def write_config(config, workdir: str) -> None:
    """Writes the resolved config to `workdir/config.json` (process 0 only); the log gets the
    path, and the config itself at --verbosity=1."""
    path = fileio.join(workdir, "config.json")
    logging.vlog(1, "Config:\n%s", config)
    if is_main_process():
        fileio.write_text_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        logging.info("Config: %s", path)


def hide_gpus_from_tf():
    """Imports TensorFlow (lazily: it is heavy, and only the data and Inception runtime) and
    hides the GPUs from it, as the original `main.py` does, so that it never takes the memory
    JAX needs. Returns the `tensorflow` module."""
    with filtered_native_stderr():
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF was initialised already; its devices can no longer change.
            pass
    return tf


class MetricWriter:
    """Appends `{"step", "time", **scalars}` lines to `metrics.jsonl` and TensorBoard scalars.

    Only process 0 writes; TensorBoard is optional (skipped if TensorFlow is unavailable). On a
    remote workdir (gs://) the lines are uploaded by `flush()` (every `REMOTE_FLUSH_S` seconds,
    at checkpoints, on `close()`), and TensorBoard writes its event files to a local temporary
    folder that `flush()` uploads to `<workdir>/tensorboard/`: TensorFlow's own GCS client
    would bypass the path layer (and ignores the emulator the tests use).
    """

    def __init__(self, workdir: str, filename: str = "metrics.jsonl", tensorboard: bool = True,
                 flush_every_s: float = REMOTE_FLUSH_S):  # fmt: skip
        self.path = fileio.join(fileio.absolute(workdir), filename)
        self.remote = fileio.is_remote(self.path)
        self.flush_every_s = flush_every_s
        self._pending: list[str] = []  # remote: lines not uploaded yet
        self._last_flush = time.time()
        self._tb = self._tb_local = None
        self._tb_dir = fileio.join(fileio.absolute(workdir), "tensorboard")
        if is_main_process() and tensorboard:
            try:
                import tensorflow as tf  # lazy: heavy, and only needed for TensorBoard

                self._tf = tf
                if self.remote:
                    self._tb_local = tempfile.mkdtemp(prefix="score_sde_tb_")
                self._tb = tf.summary.create_file_writer(self._tb_local or self._tb_dir)
            except Exception as e:  # noqa: BLE001 - TensorBoard is a convenience
                logging.warning("TensorBoard disabled: %s", e)

    def write(self, step: int, **scalars) -> None:
        if not is_main_process():
            return
        parts = " ".join(f"{k} {v:.5g}" for k, v in scalars.items())
        logging.info("step %d: %s", step, parts)
        line = json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n"
        if self.remote:
            self._pending.append(line)
        else:
            fileio.append_text(self.path, line)
        if self._tb is not None:
            with self._tb.as_default():
                for k, v in scalars.items():
                    self._tf.summary.scalar(k, v, step=int(step))
            self._tb.flush()
        if self.remote and time.time() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Uploads the pending lines and TensorBoard events (remote workdirs; else a no-op)."""
        self._last_flush = time.time()
        if not self.remote or not is_main_process():
            return
        if self._pending:
            old = fileio.read_text(self.path) if fileio.exists(self.path) else ""
            fileio.write_text_atomic(self.path, old + "".join(self._pending))
            self._pending = []
        if self._tb_local is not None:
            for name in sorted(os.listdir(self._tb_local)):
                with open(os.path.join(self._tb_local, name), "rb") as f:
                    fileio.write_bytes(fileio.join(self._tb_dir, name), f.read())

    def drop_after(self, step: int) -> int:
        """Removes the lines of steps after `step` (a resumed run writes them again); returns
        how many were removed. The file is rewritten atomically (process 0 only)."""
        if not is_main_process():
            return 0
        self.flush()
        if not fileio.exists(self.path):
            return 0
        lines = [line for line in fileio.read_text(self.path).splitlines(True) if line.strip()]
        # A line cut short by a kill (no step to read) is dropped too.
        keep = [line for line in lines if _json_step(line, step + 1) <= step]
        if len(keep) < len(lines):
            fileio.write_text_atomic(self.path, "".join(keep))
            logging.info(
                "%s: dropped %d lines after step %d.", self.path, len(lines) - len(keep), step
            )
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self.flush()
        if self._tb_local is not None:
            shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb_local = self._tb = None


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl`, one per step in step order: the lines of one step are
    merged, later lines overriding earlier values (a step written again after a resume, or by a
    run before its workdir was locked, shows its latest value)."""
    merged: dict[int, dict] = {}
    for line in fileio.read_text(path).splitlines():
        if _json_step(line, None) is not None:
            record = json.loads(line)
            merged.setdefault(record["step"], {}).update(record)
    return [merged[step] for step in sorted(merged)]


def _json_step(line: str, default):
    """The `step` of one metrics line, or `default` for a blank or damaged line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return default


def to_uint8(images) -> np.ndarray:
    """[0, 1] floats -> uint8 by flooring, as the original (`np.clip(x * 255, 0, 255)`)."""
    return np.clip(np.asarray(images) * 255.0, 0, 255).astype(np.uint8)


def image_grid(images_uint8: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles `[N, H, W, C]` uint8 images into one `[rows*(H+p)+p, cols*(W+p)+p, C]` grid."""
    n, h, w, c = images_uint8.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images_uint8[i]
    return grid


def save_png(image_uint8: np.ndarray, path: str) -> str:
    """Writes a uint8 `[H, W, C]` image (C = 1 or 3) as a PNG (atomically, through `fileio`)."""
    from PIL import Image  # lazy: only the image writers need Pillow

    buffer = io.BytesIO()
    image = Image.fromarray(image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8)
    image.save(buffer, format="PNG")
    return fileio.write_bytes(path, buffer.getvalue())


def save_sample_grid(images, directory: str, name: str = "sample") -> str:
    """Writes `name.npz` (uint8 samples) and `name.png` (grid) into `directory`."""
    if not is_main_process():
        return directory
    samples = to_uint8(images)
    fileio.save_npz(fileio.join(directory, f"{name}.npz"), samples=samples)
    return save_png(image_grid(samples), fileio.join(directory, f"{name}.png"))


def log_to_file(path: str) -> None:
    """Also writes the absl log to `path` (the original's `workdir/stdout.txt`), appending to
    what is there; on an object store through `RemoteLogHandler`."""
    if fileio.is_remote(path):
        handler = RemoteLogHandler(path)
    else:
        fileio.makedirs(os.path.dirname(fileio.absolute(path)))
        handler = std_logging.FileHandler(fileio.absolute(path))
    handler.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(handler)


class RemoteLogHandler(std_logging.Handler):
    """A log file on an object store: records are kept in memory and the object is rewritten
    (its text so far + the new records) every `flush_every_s` seconds and when logging shuts
    down at exit (`logging.shutdown` flushes every handler)."""

    def __init__(self, path: str, flush_every_s: float = REMOTE_FLUSH_S):
        super().__init__()
        self.path, self.flush_every_s = path, flush_every_s
        self._text = fileio.read_text(path) if fileio.exists(path) else ""
        self._pending: list[str] = []
        self._last_flush = time.time()
        # At exit before the object store's client closes its session (atexit runs last-in
        # first-out; `logging.shutdown`, registered when logging was imported, comes too late).
        atexit.register(self.flush)

    def emit(self, record) -> None:
        try:
            self._pending.append(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
        if time.time() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.time()
        if not self._pending:
            return
        self._text += "".join(self._pending)
        self._pending = []
        try:
            fileio.write_text_atomic(self.path, self._text)
        except Exception as e:  # noqa: BLE001 - the run goes on without its log copy
            sys.stderr.write(f"Could not write {self.path}: {e}\n")


# Start-up notices of native libraries that say nothing on any machine this project runs on:
# TensorFlow is kept off the accelerators (`hide_gpus_from_tf`), so its CUDA probes are moot.
NATIVE_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
)


@contextlib.contextmanager
def filtered_native_stderr(noise: tuple[str, ...] = NATIVE_NOISE):
    """Captures what native code writes to file descriptor 2 in the block and replays every
    line except the known start-up notices in `noise` (real warnings and errors pass)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        # tensorflow_hub imports the deprecated pkg_resources: not this project's concern.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in noise):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _DropLibraryInfo:
    """absl-handler filter that drops INFO/DEBUG records of chatty libraries (Orbax) and JAX's
    note that a backend this machine does not have (TPU, CUDA) could not start."""

    def filter(self, record) -> bool:
        path = getattr(record, "pathname", "")
        if record.levelno >= 30:
            return True
        if "/orbax/" in path or "/etils/" in path:
            return False
        return not ("xla_bridge" in path and "Unable to initialize backend" in record.getMessage())


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines and JAX's backend probes out of the run log (warnings
    still show)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())


class _NoBar:
    def update(self, n=1):
        del n

    def set_postfix(self, **kwargs):
        del kwargs

    def close(self):
        pass


def progress_bar(total: int, initial: int = 0, desc: str = ""):
    """A tqdm bar on process 0 (a no-op elsewhere), for host-side loops."""
    if not is_main_process():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def progress_iter(iterable, desc: str):
    """`iterable` with a tqdm bar on process 0 (unchanged elsewhere)."""
    if not is_main_process():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc)


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on its own Agg canvas: no pyplot state, no global backend change
    (matplotlib is imported lazily: it is heavy and only the figure writers need it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig
