"""bench/gpu_check.py runs on CPU with tiny models (so that the GPU check does not rot)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_tiny_runs_every_kind_of_row(tmp_path):
    out = tmp_path / "gpu_check.json"
    # SCORE_SDE_LOOPS=device: n_jitted_steps 5 takes the accelerator branch (lax.scan) here too.
    env = dict(os.environ, SCORE_SDE_LOOPS="device", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")  # fmt: skip
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--tiny",
           "--models", "ddpmpp_cont_vp", "--calls", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["kind"], r.get("n_jitted_steps"), r["dtype"]): r for r in result["rows"]}
    for n in (1, 5):
        for dtype in ("float32", "bfloat16"):
            row = rows[("train", n, dtype)]
            assert row["images_per_s"] > 0 and row["device_loop"]
    assert rows[("pc", None, "float32")]["nfe"] == 25  # tiny VP: N = 25, Euler-Maruyama only
    assert rows[("ode", None, "float32")]["nfe"] > 0
    assert result["paper_reference"]["s_per_step"] == 0.30 and not result["skipped"]
    assert "s/step (paper 0.30" not in done.stdout  # the reference is printed for NCSN++ only
