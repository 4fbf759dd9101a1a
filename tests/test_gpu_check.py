"""bench/gpu_check.py runs on CPU with tiny models (so that the GPU check does not rot)."""

import json
import os
import subprocess
import sys

import cpu_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_tiny_runs_every_kind_of_row(tmp_path):
    out = tmp_path / "gpu_check.json"
    # SCORE_SDE_LOOPS=device: n_jitted_steps 5 takes the accelerator branch (lax.scan) here too.
    # Two of the four train rows (each compiles a train step): both n_jitted, both dtypes.
    env = cpu_env.env(1, SCORE_SDE_LOOPS="device")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--tiny",
           "--models", "ddpmpp_cont_vp", "--calls", "1", "--out", str(out),
           "--train", "1:float32", "5:bfloat16"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["kind"], r.get("n_jitted_steps"), r["dtype"]): r for r in result["rows"]}
    assert {k for k in rows if k[0] == "train"} == {("train", 1, "float32"),
                                                    ("train", 5, "bfloat16")}  # fmt: skip
    for key in (("train", 1, "float32"), ("train", 5, "bfloat16")):
        assert rows[key]["images_per_s"] > 0 and rows[key]["device_loop"]
    assert rows[("pc", None, "float32")]["nfe"] == 25  # tiny VP: N = 25, Euler-Maruyama only
    assert rows[("ode", None, "float32")]["nfe"] > 0
    assert result["paper_reference"]["s_per_step"] == 0.30 and not result["skipped"]
    assert "s/step (paper 0.30" not in done.stdout  # the reference is printed for NCSN++ only
