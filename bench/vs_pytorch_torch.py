"""The PyTorch side of bench/vs_pytorch.py: a worker driven over a pipe (one JSON line per op).

Runs with a Python that has torch, numpy, scipy and ml_collections (not this project's venv) and
imports score_sde_pytorch from `--torch_ref` (a checkout with the shared fixtures'
`reference_patch.diff` applied, so that it runs on CPU). Nothing of this project is imported:
both codebases have `models`, `losses`, `sampling` and `sde_lib` modules.

    python bench/vs_pytorch_torch.py --torch_ref /path/to/score_sde_pytorch --model ddpmpp

Ops (stdin, one JSON object a line; each answered by one JSON line on stdout):
  {"op": "setup", "case": C}   build case C (fwd1, fwd8, train8, pc, ode) and run it once
  {"op": "run", "case": C}     run it once: {"s": seconds, ...}
  {"op": "rss"}                {"peak_rss_mib": ..., "rss_mib": ...}
  {"op": "save_weights", "path": P, "perturb": s}  add s N(0, 1) to the trainable params (the
                               fixtures' recipe, so the network output is not ~0) and write the
                               state dict to P (npz, torch names and layouts)
  {"op": "quit"}
"""

import argparse
import os
import sys
import time

import worker_protocol

CONFIGS = {
    "ddpmpp": "configs/vp/cifar10_ddpmpp_continuous.py",
    "ncsnpp": "configs/ve/cifar10_ncsnpp_continuous.py",
}


class Worker:
    def __init__(self, ref, model_name, threads, pc_steps, ode_batch):
        sys.path.insert(0, ref)
        os.chdir(ref)
        import importlib.util

        import numpy as np
        import torch

        torch.set_num_threads(threads)
        self.np, self.torch = np, torch
        spec = importlib.util.spec_from_file_location("bench_cfg", CONFIGS[model_name])
        cfg_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cfg_mod)
        config = cfg_mod.get_config()
        config.device = torch.device("cpu")
        self.config = config
        import losses
        import sampling
        import sde_lib
        from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the models)
        from models import utils as mutils
        from models.ema import ExponentialMovingAverage

        self.losses, self.sampling, self.sde_lib, self.mutils = losses, sampling, sde_lib, mutils
        torch.manual_seed(0)
        self.model = mutils.get_model(config.model.name)(config)
        self.ema = ExponentialMovingAverage(self.model.parameters(), decay=config.model.ema_rate)
        self.sde, self.eps = self._sde(config.model.num_scales)
        self.pc_steps, self.ode_batch = pc_steps, ode_batch
        self.cases = {}

    def _sde(self, n):
        c = self.config
        if c.training.sde.lower() == "vpsde":
            return self.sde_lib.VPSDE(c.model.beta_min, c.model.beta_max, n), 1e-3
        return self.sde_lib.VESDE(c.model.sigma_min, c.model.sigma_max, n), 1e-5

    def _labels(self, b):
        t = self.torch.full((b,), 0.5)
        if isinstance(self.sde, self.sde_lib.VPSDE):
            return t * 999
        return self.sde.marginal_prob(self.torch.zeros(b, 1, 1, 1), t)[1]

    def _forward(self, b):
        torch = self.torch
        g = torch.Generator().manual_seed(1)
        x = torch.randn(b, 3, 32, 32, generator=g)
        labels = self._labels(b)

        def run():
            self.model.eval()
            with torch.no_grad():
                return self.model(x, labels)

        return run

    def _train(self, b):
        torch, c = self.torch, self.config
        optimizer = self.losses.get_optimizer(c, self.model.parameters())
        state = dict(optimizer=optimizer, model=self.model, ema=self.ema, step=0)
        step_fn = self.losses.get_step_fn(
            self.sde,
            train=True,
            optimize_fn=self.losses.optimization_manager(c),
            reduce_mean=c.training.reduce_mean,
            continuous=c.training.continuous,
            likelihood_weighting=c.training.likelihood_weighting,
        )
        batch = torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(2))

        def run():
            self.model.train()
            return {"loss": float(step_fn(state, batch))}

        return run

    def _pc(self):
        c, torch = self.config, self.torch
        sde, eps = self._sde(self.pc_steps)
        shape = (8, 3, 32, 32)
        sampler = self.sampling.get_pc_sampler(
            sde, shape, self.sampling.get_predictor(c.sampling.predictor.lower()),
            self.sampling.get_corrector(c.sampling.corrector.lower()), lambda x: x,
            c.sampling.snr, n_steps=c.sampling.n_steps_each,
            probability_flow=c.sampling.probability_flow, continuous=c.training.continuous,
            denoise=c.sampling.noise_removal, eps=eps, device="cpu",
        )  # fmt: skip

        def run():
            torch.manual_seed(3)
            self.model.eval()
            x, _ = sampler(self.model)
            return {"steps": self.pc_steps, "nfe": self.pc_steps * self.nfe_per_step()}

        return run

    def nfe_per_step(self):
        c = self.config.sampling
        return 1 + (c.corrector.lower() != "none") * c.n_steps_each

    def _ode(self):
        c, torch = self.config, self.torch
        shape = (self.ode_batch, 3, 32, 32)
        sampler = self.sampling.get_ode_sampler(
            self.sde, shape, lambda x: x, denoise=c.sampling.noise_removal, rtol=1e-5, atol=1e-5,
            method="RK45", eps=self.eps, device="cpu",
        )  # fmt: skip

        def run():
            torch.manual_seed(4)
            self.model.eval()
            x, nfe = sampler(self.model)
            return {"nfe": int(nfe), "finite": bool(torch.isfinite(x).all())}

        return run

    def build(self, case):
        if case.startswith("fwd"):
            return self._forward(int(case[3:]))
        if case.startswith("train"):
            return self._train(int(case[5:]))
        return {"pc": self._pc, "ode": self._ode}[case]()

    def handle(self, msg):
        op = msg["op"]
        if op == "setup":
            t0 = time.perf_counter()
            self.cases[msg["case"]] = fn = self.build(msg["case"])
            out = fn()
            return {"setup_s": time.perf_counter() - t0, **(out if isinstance(out, dict) else {})}
        if op == "run":
            t0 = time.perf_counter()
            out = self.cases[msg["case"]]()
            return {"s": time.perf_counter() - t0, **(out if isinstance(out, dict) else {})}
        if op == "rss":
            return worker_protocol.memory_mib()
        if op == "save_weights":
            torch = self.torch
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.requires_grad:
                        p.add_(msg["perturb"] * torch.randn(p.shape, generator=g))
            sd = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
            self.np.savez(msg["path"], **sd)
            return {"entries": len(sd)}
        if op == "info":
            import torch

            n = sum(p.numel() for p in self.model.parameters())
            return {"torch": torch.__version__, "threads": torch.get_num_threads(), "params": n}
        raise ValueError(f"unknown op {op!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torch_ref", required=True)
    parser.add_argument("--model", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pc_steps", type=int, default=10)
    parser.add_argument("--ode_batch", type=int, default=8)
    args = parser.parse_args()
    worker_protocol.serve(
        lambda: Worker(args.torch_ref, args.model, args.threads, args.pc_steps, args.ode_batch)
    )


if __name__ == "__main__":
    main()
