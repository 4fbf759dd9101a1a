"""This project vs score_sde_pytorch on the same CPU, side by side (issue 14).

The paper's full CIFAR-10 configs (DDPM++ cont. = configs/vp/cifar10_ddpmpp_continuous.py,
NCSN++ cont. = configs/ve/cifar10_ncsnpp_continuous.py). Each implementation runs in a worker
process driven over a pipe (JAX: this file with `--worker`; PyTorch: bench/vs_pytorch_torch.py
under `--torch_python`), and the driver alternates them run by run (the order flips every
repeat), so that load from other processes hits both sides alike; ratios are what count.

Cases, per model (one fresh worker pair per model):
  train8  one train step, batch 8: loss, backward, grad-norm clip, Adam, EMA (this project:
          `training.steps.make_train_step` as `run_lib.train` builds it, n_jitted_steps=1;
          PyTorch: the reference `losses.get_step_fn`); median of `--repeats` after warm-up.
  rss     peak RSS of the worker after init + train8 (`ru_maxrss`, compilation included); the
          cases run in this order, whatever `--cases` lists.
  fwd1, fwd8  the jitted `model.apply` / `model(x, labels)` under `no_grad`, eval mode.
  pc      the config's PC sampler at batch 8. N = 1000 steps take ~2000 s a side on 2 cores, so
          both sides run `--pc_steps` steps (the same SDE with N = pc_steps: per-step cost
          does not depend on N) and images/s at N = 1000 is extrapolated from the time per step.
  ode     the probability-flow ODE, rtol = atol = 1e-5, batch `--ode_batch`: diffrax Dopri5 on
          device vs the reference's scipy RK45 on the host (`solve_ivp`, a torch call per NFE).
The samplers use the same weights on both sides: the torch model's init plus `--perturb`
N(0, 1) on every trainable param (the fixtures' recipe; with the raw init the output is ~0 and
the ODE is trivial), converted with `models.convert.from_pytorch`.

    python bench/vs_pytorch.py --torch_python /tmp/torchvenv/bin/python \
        --torch_ref /tmp/score_sde_pytorch [--models ddpmpp ncsnpp] [--cases ...] \
        [--baseline_root /path/to/older/checkout]   # a third side: the project before a change

Without `--torch_python` / `--torch_ref` only this project's side runs (no ratios). Results go to
bench/results/vs_pytorch.json (with `uptime` before and after each model: other processes
share the cores) and a table to vs_pytorch.md (`--markdown_only` rewrites it from the JSON).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import worker_protocol

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent
CASES = ("train8", "rss", "fwd1", "fwd8", "pc", "ode")
TIMED = ("train8", "fwd1", "fwd8")


# ----------------------------------------------------------------------------------------------
# The JAX worker (runs this project, or the checkout of `--root`).
# ----------------------------------------------------------------------------------------------


class JaxWorker:
    def __init__(self, root, model_name, pc_steps, ode_batch):
        sys.path.insert(0, str(root))
        os.chdir(root)
        import importlib

        import jax

        import utils

        # The command lines' runtime set-up, when the checkout has it (a checkout from before
        # issue 14 runs with JAX's defaults), with the compilation cache off: every start compiles.
        if hasattr(utils, "setup_jax_runtime"):
            utils.setup_jax_runtime(cache_dir="off")
        import jax.numpy as jnp

        import losses
        import sampling
        from models import utils as mutils
        from training import devices, score_model, steps
        from training import state as train_state

        self.jax, self.jnp, self.sampling, self.mutils = jax, jnp, sampling, mutils
        self.utils = utils
        self.steps, self.score_model, self.losses, self.devices = (
            steps,
            score_model,
            losses,
            devices,
        )
        self.train_state = train_state
        self._train_box = None
        module = {"ddpmpp": "configs.vp.cifar10_ddpmpp_continuous",
                  "ncsnpp": "configs.ve.cifar10_ncsnpp_continuous"}[model_name]  # fmt: skip
        self.config = importlib.import_module(module).get_config()
        self.model = mutils.get_model(self.config)
        self.sde, self.eps = score_model.sde_from_config(self.config)
        self.params = None  # made by the first case that needs them (train8: the train state)
        self.pc_steps, self.ode_batch = pc_steps, ode_batch
        self.cases = {}

    def _params(self):
        if self._train_box is not None:
            return self._train_box[0].params
        if self.params is None:
            init = self.jax.jit(lambda k: self.score_model.init_params(self.config, self.model, k))
            self.params = init(self.jax.random.key(0))
        return self.params

    def _labels(self, b):
        t = self.jnp.full((b,), 0.5)
        if self.config.training.sde.lower() == "vpsde":
            return t * 999
        return self.sde.marginal_prob(self.jnp.zeros((b, 1, 1, 1)), t)[1]

    def _forward(self, b):
        jax = self.jax
        x = jax.random.normal(jax.random.key(1), (b, 32, 32, 3))
        labels = self._labels(b)
        apply = jax.jit(lambda p, x, y: self.model.apply({"params": p}, x, y, train=False))

        def run():
            jax.block_until_ready(apply(self._params(), x, labels))

        return run

    def _train(self, b):
        jax, c = self.jax, self.config
        c.training.batch_size = b
        tx = self.losses.get_optimizer(c)
        mesh = self.devices.make_mesh()
        ss = self.devices.replicated(mesh)
        bs = self.devices.batch_sharding(mesh, steps_axis=True)
        loss_fn = self.score_model.score_loss_fn(c, self.sde, self.model, train=True)
        step = self.steps.make_train_step(loss_fn, tx, c.model.ema_rate, jax.random.key(0), ss, bs)
        # As run_lib.train: the step compiled before the state exists (in checkouts that have
        # `compile_ahead`), the jitted init of the whole state, then the state on its sharding.
        # The forward cases use the train state's params from now on (as the torch worker's
        # one model): their own init copy would stay on top of the state in the RSS.
        self.params = None
        batch_shape = (1, b, 32, 32, 3)
        if hasattr(step, "compile_ahead"):
            abstract = self.score_model.abstract_train_state(c, self.model, tx)
            step.compile_ahead(abstract, jax.ShapeDtypeStruct(batch_shape, self.jnp.float32))
        if hasattr(self.score_model, "init_train_state"):  # run_lib.train's init
            state = self.score_model.init_train_state(c, self.model, tx, jax.random.key(0))
        else:  # older checkouts (a baseline): what their run_lib.train did
            init = jax.jit(lambda k: self.score_model.create_train_state(c, self.model, tx, k))
            state = init(jax.random.key(0))
            if hasattr(self.utils, "release_host_memory"):
                self.utils.release_host_memory()
        state = jax.device_put(state, ss)
        x = jax.device_put(jax.random.uniform(jax.random.key(2), batch_shape), bs)
        box = [state]

        def run():
            box[0], metrics = step(box[0], x)
            return {"loss": float(metrics["loss"][0])}

        self._train_box = box
        return run

    def _pc(self):
        jax, c = self.jax, self.config
        sde = type(self.sde)(*_sde_args(c), self.pc_steps)
        score_fn = self.mutils.get_score_fn(
            sde, self.model, self._params(), train=False, continuous=c.training.continuous
        )
        s = c.sampling
        sampler = self.sampling.get_pc_sampler(
            sde, score_fn, (8, 32, 32, 3), s.predictor.lower(), s.corrector.lower(), snr=s.snr,
            n_steps=s.n_steps_each, probability_flow=s.probability_flow, denoise=s.noise_removal,
            eps=self.eps,
        )  # fmt: skip

        def run():
            x, nfe = sampler(jax.random.key(3))
            jax.block_until_ready(x)
            return {"steps": self.pc_steps, "nfe": int(nfe)}

        return run

    def _ode(self):
        jax, c = self.jax, self.config
        score_fn = self.mutils.get_score_fn(
            self.sde, self.model, self._params(), train=False, continuous=True
        )
        sampler = self.sampling.get_ode_sampler(
            self.sde, score_fn, (self.ode_batch, 32, 32, 3), rtol=1e-5, atol=1e-5,
            denoise=c.sampling.noise_removal, eps=self.eps, method="RK45",
        )  # fmt: skip

        def run():
            x, nfe = sampler(jax.random.key(4))
            return {"nfe": int(nfe), "finite": bool(self.jnp.isfinite(x).all())}

        return run

    def handle(self, msg):
        op = msg["op"]
        if op == "setup":
            t0 = time.perf_counter()
            case = msg["case"]
            if case.startswith("fwd"):
                fn = self._forward(int(case[3:]))
            elif case.startswith("train"):
                fn = self._train(int(case[5:]))
            else:
                fn = {"pc": self._pc, "ode": self._ode}[case]()
            self.cases[case] = fn
            out = fn() or {}
            return {"setup_s": time.perf_counter() - t0, **out}
        if op == "run":
            t0 = time.perf_counter()
            out = self.cases[msg["case"]]() or {}
            return {"s": time.perf_counter() - t0, **out}
        if op == "rss":
            return worker_protocol.memory_mib()
        if op == "load_weights":
            import numpy as np

            from models import convert

            # Drop the train state (if any) first: the samplers need the converted weights only.
            self.cases.pop("train8", None)
            self._train_box = None
            with np.load(msg["path"]) as f:
                sd = {k: f[k] for k in f.files}
            self.params = self.jax.device_put(convert.from_pytorch(sd, self.config)["params"])
            return {"params": int(sum(p.size for p in self.jax.tree.leaves(self.params)))}
        if op == "info":
            return {"jax": self.jax.__version__, "backend": self.jax.default_backend(),
                    "xla_flags": os.environ.get("XLA_FLAGS", "")}  # fmt: skip
        raise ValueError(f"unknown op {op!r}")


def _sde_args(c):
    if c.training.sde.lower() == "vesde":
        return c.model.sigma_min, c.model.sigma_max
    return c.model.beta_min, c.model.beta_max


def worker_main(args):
    worker_protocol.serve(lambda: JaxWorker(args.root, args.model, args.pc_steps, args.ode_batch))


# ----------------------------------------------------------------------------------------------
# The driver.
# ----------------------------------------------------------------------------------------------


class Side:
    """A worker process and its pipe."""

    def __init__(self, name, argv, log):
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        ready = self._read()
        assert ready.get("ready"), ready

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (see the log)")
        return json.loads(line)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def uptime():
    return os.getloadavg()


def alternate(sides, case, repeats):
    """Runs `case` `repeats` times on every side, interleaved, the order flipping each round."""
    runs = {s.name: [] for s in sides}
    for r in range(repeats):
        for s in sides if r % 2 == 0 else sides[::-1]:
            runs[s.name].append(s.ask(op="run", case=case))
    return runs


def bench_model(model, args, log):
    py_jax = [sys.executable, str(HERE / "vs_pytorch.py"), "--worker", "--model", model,
              "--pc_steps", str(args.pc_steps[model]), "--ode_batch", str(args.ode_batch)]  # fmt: skip
    pin = ["taskset", "-c", args.cpus] if args.cpus else []  # both sides on the same cores
    py_jax = pin + py_jax
    sides = [Side("jax", py_jax + ["--root", str(ROOT)], log)]
    if args.baseline_root:
        sides.append(Side("jax_baseline", py_jax + ["--root", args.baseline_root], log))
    if args.torch_python:
        sides.append(
            Side(
                "torch",
                pin
                + [
                    args.torch_python,
                    str(HERE / "vs_pytorch_torch.py"),
                    "--torch_ref",
                    args.torch_ref,
                    "--model",
                    model,
                    "--threads",
                    str(args.threads),
                    "--pc_steps",
                    str(args.pc_steps[model]),
                    "--ode_batch",
                    str(args.ode_batch),
                ],
                log,
            )  # fmt: skip
        )
    result = {"load_before": uptime(), "info": {s.name: s.ask(op="info") for s in sides}}
    try:
        for case in args.cases:
            print(f"[{model}] {case} (load {os.getloadavg()[0]:.2f})", flush=True)
            if case == "rss":
                result["rss"] = {s.name: s.ask(op="rss") for s in sides}
                continue
            if case in ("pc", "ode") and "weights" not in result:
                path = os.path.join(args.tmpdir, f"{model}_weights.npz")
                torch_side = [s for s in sides if s.name == "torch"]
                if torch_side:
                    torch_side[0].ask(op="save_weights", path=path, perturb=args.perturb)
                    for s in sides:
                        if s.name != "torch":
                            s.ask(op="load_weights", path=path)
                result["weights"] = f"torch init + {args.perturb} N(0,1)" if torch_side else "jax"
            setup = {s.name: s.ask(op="setup", case=case) for s in sides}
            repeats = args.repeats if case in TIMED else args.sampler_repeats
            runs = alternate(sides, case, repeats)
            result[case] = {
                "setup": setup,
                "runs": runs,
                "median_s": {n: statistics.median(r["s"] for r in rs) for n, rs in runs.items()},
            }
            summarize(model, case, result[case], args)
    finally:
        result["load_after"] = uptime()
        for s in sides:
            s.close()
    return result


def summarize(model, case, res, args):
    med = res["median_s"]
    line = f"[{model}] {case}: " + ", ".join(f"{n} {t:.3f}s" for n, t in med.items())
    if case == "pc":
        steps = args.pc_steps[model]
        res["s_per_step"] = {n: t / steps for n, t in med.items()}
        res["images_per_s_N1000"] = {n: 8 / (t / steps * 1000) for n, t in med.items()}
    if case == "ode":
        nfe = {n: [r["nfe"] for r in rs] for n, rs in res["runs"].items()}
        res["nfe"] = nfe
        res["images_per_s"] = {n: args.ode_batch / t for n, t in med.items()}
        res["s_per_nfe"] = {n: med[n] / statistics.median(v) for n, v in nfe.items()}
        line += "  nfe " + ", ".join(f"{n} {v}" for n, v in nfe.items())
    if "torch" in med:
        res["ratio_jax_over_torch"] = {n: t / med["torch"] for n, t in med.items() if n != "torch"}
        line += "  ratio " + ", ".join(
            f"{n} {r:.3f}" for n, r in res["ratio_jax_over_torch"].items()
        )
    print(line, flush=True)


NAMES = {"ddpmpp": "DDPM++ cont.", "ncsnpp": "NCSN++ cont."}


def markdown(payload):
    """The results as a Markdown table: medians, ratio = this project / PyTorch (time, memory)
    or PyTorch's time / this project's for the samplers (speed-up)."""
    a = payload["args"]
    lines = [
        f"vs score_sde_pytorch, {payload['machine']['time']}: torch threads {a['threads']}, "
        f"cpus {a.get('cpus') or 'all'}, median of {a['repeats']} (samplers: "
        f"{a['sampler_repeats']}), PC "
        + ", ".join(f"{NAMES.get(m, m)} {n}" for m, n in a["pc_steps"].items())
        + " steps extrapolated to N = 1000, "
        f"ODE batch {a['ode_batch']}.",
        *(f"- {k}: {v}" for k, v in payload.get("sources", {}).items()),
        "",
        "| model | case | PyTorch | this project | ratio |",
        "|---|---|---|---|---|",
    ]
    for model, res in payload["results"].items():
        name = NAMES.get(model, model)
        for case, label in (("fwd1", "forward, batch 1"), ("fwd8", "forward, batch 8"),
                            ("train8", "train step, batch 8")):  # fmt: skip
            if case in res and "torch" in res[case]["median_s"]:
                m = res[case]["median_s"]
                lines.append(f"| {name} | {label} | {m['torch']:.3f} s | {m['jax']:.3f} s | "
                             f"{m['jax'] / m['torch']:.2f} |")  # fmt: skip
        if "rss" in res and "torch" in res["rss"]:
            r = {n: v["peak_rss_mib"] / 1024 for n, v in res["rss"].items()}
            lines.append(f"| {name} | peak RSS, train | {r['torch']:.2f} GiB | {r['jax']:.2f} GiB "
                         f"| {r['jax'] / r['torch']:.2f} |")  # fmt: skip
        if "pc" in res and "torch" in res["pc"]["median_s"]:
            ips = res["pc"]["images_per_s_N1000"]
            lines.append(f"| {name} | PC sampler N = 1000, batch 8 (images/s) | "
                         f"{ips['torch']:.3g} | {ips['jax']:.3g} | "
                         f"{ips['jax'] / ips['torch']:.2f}x faster |")  # fmt: skip
        if "ode" in res and "torch" in res["ode"]["median_s"]:
            ips, nfe = res["ode"]["images_per_s"], res["ode"]["nfe"]
            lines.append(f"| {name} | probability-flow ODE, RK45 1e-5 (images/s; NFE) | "
                         f"{ips['torch']:.3g}; {nfe['torch'][0]} | {ips['jax']:.3g}; "
                         f"{nfe['jax'][0]} | {ips['jax'] / ips['torch']:.2f}x faster |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--model", default="ddpmpp", help=argparse.SUPPRESS)
    parser.add_argument("--torch_python", help="a Python with torch, numpy, scipy, ml_collections")
    parser.add_argument("--torch_ref", help="a score_sde_pytorch checkout (reference_patch.diff)")
    parser.add_argument("--baseline_root", help="another checkout of this project, as a 3rd side")
    parser.add_argument("--models", nargs="+", default=["ddpmpp", "ncsnpp"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler_repeats", type=int, default=3)
    parser.add_argument("--pc_steps", type=int, default=None,
                        help="PC steps timed (default: 25 for VP, 12 for VE: ~25 NFE each)")  # fmt: skip
    parser.add_argument("--ode_batch", type=int, default=8)
    parser.add_argument("--perturb", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--cpus", default=None,
                        help="run both workers under `taskset -c CPUS` (e.g. 0, with --threads 1: "
                        "one core each, which a loaded machine distorts less than 2 threads)")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vs_pytorch.json"))
    parser.add_argument("--log", default=None, help="workers' stderr (default: a temp file)")
    parser.add_argument("--markdown_only", action="store_true",
                        help="rewrite the .md next to --out from its JSON; run nothing")  # fmt: skip
    args = parser.parse_args()
    md_path = pathlib.Path(args.out).with_suffix(".md")
    if args.markdown_only:
        md_path.write_text(markdown(json.loads(pathlib.Path(args.out).read_text())))
        return print(f"wrote {md_path}")
    if args.worker:
        args.pc_steps = args.pc_steps or 25
        return worker_main(args)
    if bool(args.torch_python) != bool(args.torch_ref):
        parser.error("--torch_python and --torch_ref go together")
    if "rss" in args.cases and "train8" not in args.cases:
        parser.error("--cases rss needs train8 (it is the peak RSS of init + train8)")
    # In CASES order whatever the command line's: rss is read right after train8, before the
    # forward cases compile (their executables would count in a peak that is the train step's).
    args.cases = [c for c in CASES if c in args.cases]
    if not args.torch_python:
        print("No --torch_python / --torch_ref: PyTorch side skipped, no ratios (see --help).")
    # VP refuses N <= beta_max (=20): 25 steps; VE PC has a corrector (2 NFE a step): 12.
    n = args.pc_steps
    args.pc_steps = {"ddpmpp": n or 25, "ncsnpp": n or 12}
    args.tmpdir = tempfile.mkdtemp(prefix="vs_pytorch_")
    log_path = args.log or os.path.join(args.tmpdir, "workers.log")
    print(f"workers' log: {log_path}", flush=True)
    results = {}
    with open(log_path, "a") as log:
        for model in args.models:
            results[model] = bench_model(model, args, log)
    payload = {
        "benchmark": "vs_pytorch",
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "root", "model")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        },  # fmt: skip
        "results": results,
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown(payload))
    print(f"wrote {args.out} and {md_path}")


if __name__ == "__main__":
    main()
