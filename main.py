"""Command-line entry point, as the paper's `main.py` (kept under 80 lines).

    python main.py --config configs/vp/cifar10_ddpmpp.py --workdir W --mode {train,eval,stats}
    python main.py --config CFG --workdir W --mode sweep [--shard i/n]   # Table 1 / NFE sweeps
    python main.py --config configs/ddls/cifar10_dcgan.py --workdir W --mode {train,ddls}
    python main.py ... --config.training.batch_size=64        # override any config field

The config, workdir and data are checked before the heavy imports (`cli_checks`): a mistake is
one line on stderr (--verbose: the traceback). Training locks the workdir (`training/lock.py`).
Multi-host: pass --coordinator_address, --num_processes and --process_id on every host (TPU
pods detect them; pass --distributed alone).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import cli_checks  # noqa: E402 - light: no JAX / TensorFlow

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory.")
MODES = ["train", "eval", "stats", "sweep", "ddls"]
flags.DEFINE_enum("mode", None, MODES, "Running mode: " + ", ".join(MODES) + ".")
flags.DEFINE_string("eval_folder", "eval", "The folder name for storing evaluation results.")
flags.DEFINE_string("shard", "0/1", "--mode sweep: run the cells i, i+n, ... of the grid (i/n).")
flags.DEFINE_bool("verbose", False, "Print the traceback of an error (else: one line).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-host).")
flags.mark_flags_as_required(["workdir", "config", "mode"])


def main(argv):
    del argv
    config, workdir, mode = FLAGS.config, FLAGS.workdir, FLAGS.mode
    with cli_checks.one_line_errors(workdir, FLAGS.verbose):
        cli_checks.check_run(config, workdir, mode, FLAGS.eval_folder)
        with cli_checks.workdir_lock(workdir, mode, FLAGS.process_id, FLAGS.distributed):
            run(config, workdir, mode)


def run(config, workdir: str, mode: str):
    # Heavy imports (JAX, TensorFlow, the models) only once the config and paths are checked.
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import utils

    utils.setup_jax_runtime()  # persistent compilation cache ($SCORE_SDE_COMPILATION_CACHE)
    utils.quiet_library_logs()
    utils.hide_gpus_from_tf()  # TensorFlow is only the data / Inception runtime
    import run_lib
    from experiments import ddls, gan, sweep

    if mode == "train" and jax.process_index() == 0:
        utils.log_to_file(os.path.join(workdir, "stdout.txt"))  # as the original
    logging.info("JAX devices: %d (%d per process).", jax.device_count(), jax.local_device_count())
    if mode == "train":  # DCGAN configs (the DDLS experiments) train their GAN
        (gan.train if config.model.name == "dcgan" else run_lib.train)(config, workdir)
    elif mode == "eval":
        run_lib.evaluate(config, workdir, FLAGS.eval_folder)
    elif mode == "stats":
        run_lib.compute_stats(config, workdir)
    elif mode == "sweep":
        sweep.run_sweep(config, workdir, shard=FLAGS.shard)
    else:
        folder = FLAGS.eval_folder if FLAGS["eval_folder"].present else "ddls"
        ddls.run_ddls(config, workdir, eval_folder=folder)


if __name__ == "__main__":
    app.run(main, flags_parser=cli_checks.parse_flags)
