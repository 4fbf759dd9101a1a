"""main.py's checks before the heavy imports: every mistake refused in seconds, in one line.

`parse_flags` turns a missing config file or an unknown `--config.*` field into one line
(with ml_collections' "did you mean"); `check_run` validates the config fields, the workdir,
the local data files and the metric networks in about a second (no JAX, TensorFlow or model
is imported); `one_line_errors` prints any later exception as one line, keeping the traceback
in `<workdir>/stdout.txt` (or printing it with --verbose). Nothing here imports JAX or TF.

The data files are loaded here (`datasets_offline.load_offline` keeps the last load), so a
truncated or foreign file is named before any model is built, and training reuses the arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import tempfile
import time
import traceback
import urllib.parse

from absl import flags

import datasets_offline
import fileio
from training import lock, schedule

# evaluation.INCEPTION_TFHUB / INCEPTION_V3 (tests check they agree; evaluation imports TF).
INCEPTION_URLS = (
    "https://tfhub.dev/tensorflow/tfgan/eval/inception/1",
    "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/4",
)
INCEPTION_FIX = (
    "pass --config.eval.inception_path=none (offline fd/kid with "
    "--config.eval.feature_extractor_path) or a local path of the unpacked module"
)


class CheckError(ValueError):
    """A bad flag, config field or path, found before the run starts."""


def fail(message: str, code: int = 2) -> None:
    """Prints `main.py: message` on one line and exits with `code`."""
    print(f"main.py: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and config-field errors as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}. Pass --helpshort for the flags.")
    except Exception as e:  # noqa: BLE001 - ml_collections raises plain errors while parsing
        fail(_config_flag_error(e, argv))


def _config_flag_error(e: Exception, argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        value = arg[9:] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and not os.path.isfile(value.split(":")[0]):
            return f"--config {value}: no such file."
    text = " ".join(str(e).replace("\\n", "\n").split())
    unknown = re.match(r"""['"\\]*([\w-]+)['"\\]*""", str(e).strip("'\""))
    if "Did you mean" in text or isinstance(e, (AttributeError, KeyError)):
        name = unknown.group(1) if unknown else ""
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        field = next((o for o in overrides if re.search(rf"\.{re.escape(name)}(\.|$)", o)), name)
        hint = re.search(r'Did you mean "([\w.]+)"', text)
        if hint and field.startswith("--config."):
            fix = (
                "did you mean "
                + re.sub(rf"\.{re.escape(name)}(?=\.|$)", "." + hint.group(1), field, count=1)
                + "?"
            )
        else:
            fix = (
                f"did you mean {hint.group(1)}?" if hint else "the config file does not define it."
            )
        return f"Unknown config field {field} (no {name!r} there): {fix}"
    if isinstance(e, (OSError, ImportError)) or "No such file" in text:
        return f"Cannot load the --config file: {text}"
    return f"Bad --config: {type(e).__name__}: {text}"


# --------------------------------------------------------------------------------------------
# Config fields.
# --------------------------------------------------------------------------------------------


def check_config(config, mode: str) -> None:
    """The fields that would fail late (a ZeroDivisionError after the first step, a run of 0
    steps that exits 0) or make no sense, named with their value."""
    t, e = config.training, config.eval
    if mode == "train":
        schedule.Schedule.from_config(t)
        _positive("config.training.batch_size", t.batch_size)
    else:
        _positive("config.training.snapshot_freq", t.snapshot_freq)
    if mode in ("eval", "sweep", "stats", "ddls"):
        _positive("config.eval.batch_size", e.batch_size)
    if mode == "eval" and e.get("begin_ckpt", 0) > e.get("end_ckpt", 0):
        raise CheckError(
            f"config.eval.begin_ckpt={e.begin_ckpt} > config.eval.end_ckpt={e.end_ckpt}: "
            "nothing to evaluate."
        )


def _positive(name: str, value) -> None:
    if value <= 0:
        raise CheckError(f"{name}={value} must be positive; set --{name}=<n>.")


# --------------------------------------------------------------------------------------------
# Paths.
# --------------------------------------------------------------------------------------------


def check_workdir(workdir: str, mode: str) -> None:
    """`train` creates the workdir; every mode needs it to be a writable directory.

    A URL (gs://bucket/run) is left to the object store's client (no local folder is made);
    a local path that looks like a URL with a slash missing (gs:/bucket) is refused.
    """
    if fileio.is_remote(workdir):
        return
    try:
        path = fileio.absolute(workdir)
    except ValueError as e:
        raise CheckError(f"--workdir {e}") from e
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent == path and not os.path.isdir(path):
        raise CheckError(f"--workdir {workdir} is a file, not a directory; pick another path.")
    if not os.path.isdir(parent):
        raise CheckError(f"--workdir {workdir} is under {parent}, which is a file, not a folder.")
    if mode != "train" and not os.path.isdir(path):
        return  # the checkpoint check below says what is missing
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise CheckError(f"--workdir {workdir} cannot be created or written ({e.strerror}).") from e


def check_checkpoints(config, workdir: str, mode: str, eval_folder: str = "eval") -> None:
    """Modes that read checkpoints: refuse at once a workdir with none and no live trainer;
    `eval`: also a checkpoint range with no checkpoint on disk (nor a finished report)."""
    if mode not in ("eval", "sweep", "ddls") or fileio.is_remote(workdir):
        return  # an object store: the run says it in one line (no network before the imports)
    root = fileio.absolute(workdir)
    directory = fileio.join(root, "checkpoints")
    steps = sorted(int(name) for name in fileio.listdir(directory) if name.isdigit())
    if lock.holder(workdir) is not None:
        return  # a trainer is writing: evaluation waits for its checkpoints
    if not steps:
        where = "does not exist" if not fileio.isdir(root) else f"has no checkpoint in {directory}"
        raise CheckError(
            f"--workdir {workdir} {where}, and no training holds its lock: nothing to "
            f"{'evaluate' if mode == 'eval' else 'sample'}. Check the path, train first "
            "(--mode train) or convert a checkpoint (python -m models.convert)."
        )
    e, freq = config.eval, config.training.snapshot_freq
    ckpts = range(e.get("begin_ckpt", 0), e.get("end_ckpt", 0) + 1)
    reports = fileio.join(root, eval_folder, "report_{}.json")
    if mode == "eval" and not any(
        k * freq in steps or fileio.exists(reports.format(k)) for k in ckpts
    ):
        raise CheckError(
            f"No checkpoint to evaluate: eval.begin_ckpt..end_ckpt = {ckpts.start}..{ckpts.stop - 1} "
            f"are steps {ckpts.start * freq}..{(ckpts.stop - 1) * freq} (k * training.snapshot_freq "
            f"{freq}), but {directory} has steps {steps}."
        )


def check_data(config, mode: str) -> None:
    """Loads local data files now (a truncated or foreign file is named in one line)."""
    source = config.data.get("source", "tfds")
    e = config.eval
    reads_data = e.get("enable_loss", False) or e.get("enable_bpd", False)
    needed = mode in ("train", "stats") or (mode == "eval" and reads_data)
    if needed and source in datasets_offline.LOADERS:
        datasets_offline.load_offline(source, config.data.get("path", ""), config.data.num_channels)


def inception_needed(config, mode: str) -> bool:
    """Whether this run will load the Inception network (FID / IS / KID)."""
    if config.eval.inception_path.lower() == "none":
        return False
    if mode == "sweep":
        metrics = set(config.get("sweep", {}).get("metrics", ()))
        return not metrics or bool(metrics & {"fid", "kid", "is"})
    return mode in ("stats", "ddls") or (mode == "eval" and config.eval.get("enable_sampling"))


def check_metric_networks(config, mode: str) -> None:
    """Inception weights and the offline feature extractor must be there (or downloadable)."""
    extractor = config.eval.get("feature_extractor_path", "")
    if extractor and "://" not in extractor and not os.path.exists(extractor):
        raise CheckError(
            f"config.eval.feature_extractor_path={extractor} does not exist; train one with "
            "python -m evaluation --train_extractor, or set it to ''."
        )
    if not inception_needed(config, mode):
        return
    path = config.eval.inception_path
    if path:
        if "://" not in path and not os.path.exists(path):
            raise CheckError(f"config.eval.inception_path={path} does not exist; {INCEPTION_FIX}.")
        return
    url = INCEPTION_URLS[config.data.image_size >= 256]
    cache = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "tfhub_modules"
    )
    if os.path.isdir(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())):
        return
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise CheckError(
            f"This run needs Inception (config.eval.inception_path='' downloads it from {url}), "
            f"but {host} cannot be reached ({e.__class__.__name__}); {INCEPTION_FIX}."
        ) from e


def check_run(config, workdir: str, mode: str, eval_folder: str = "eval") -> None:
    """Every check above, cheapest first.

    Raises:
      CheckError: one line naming the field or file and the fix.
    """
    try:
        check_config(config, mode)
        check_workdir(workdir, mode)
        check_checkpoints(config, workdir, mode, eval_folder)
        check_data(config, mode)
        check_metric_networks(config, mode)
    except CheckError:
        raise
    except (ValueError, OSError) as e:  # the data loaders' and Schedule's one-line errors
        raise CheckError(str(e)) from e


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


def workdir_lock(workdir: str, mode: str, process_id, distributed: bool):
    """The training lock for `--mode train` on process 0 (taken again, re-entrantly, by
    `run_lib.train`; with `--distributed` alone the process index is known only there)."""
    if mode != "train" or (process_id or 0) != 0 or (distributed and process_id is None):
        return contextlib.nullcontext()
    try:
        return lock.acquire(workdir)
    except lock.WorkdirLockedError as e:
        raise CheckError(str(e)) from e


def error_line(e: BaseException, limit: int = 600) -> str:
    text = " ".join(str(e).split()) or repr(e)
    line = text if isinstance(e, CheckError) else f"{type(e).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _save_traceback(workdir: str) -> str | None:
    """Appends the current exception's traceback to `<workdir>/stdout.txt` (local or gs://);
    returns the path."""
    try:
        path = fileio.join(fileio.absolute(workdir or "."), "stdout.txt")
        if not workdir or not fileio.isdir(os.path.dirname(path)):
            return None
        header = f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n"
        fileio.append_text(path, header + traceback.format_exc())
    except Exception:  # noqa: BLE001 - the one-line error is printed whatever happens here
        return None
    return path


@contextlib.contextmanager
def one_line_errors(workdir: str, verbose: bool):
    """Any exception in the block: one line on stderr and exit 1 (the traceback with
    `verbose`, else in `<workdir>/stdout.txt`)."""
    try:
        yield
    except Exception as e:
        if verbose:
            raise
        where = None if isinstance(e, CheckError) else _save_traceback(workdir)
        hint = f" (traceback: {where})" if where else ""
        if not isinstance(e, CheckError) and not where:
            hint = " (--verbose prints the traceback)"
        fail(error_line(e) + hint, code=1)
