"""Two local processes of one command, joined by JAX's coordination service (gloo on CPU):
the multi-host path on one machine (test_multihost.py, test_run_lib.py)."""

import os
import subprocess

import cpu_env


def env(devices: int) -> dict:
    """`cpu_env.env` with gloo CPU collectives (the processes' cross-host all-reduces)."""
    return cpu_env.env(devices, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def run_two_processes(make_cmd, env: dict, port_base: int, timeout: int = 600) -> list[str]:
    """Runs `make_cmd(i, *flags)` for processes i = 0, 1 with the coordinator flags, waits,
    kills a straggler, asserts both exit 0 and that they saw 8 devices (4 each).

    Returns:
      The two processes' outputs (stdout and stderr together).
    """
    port = port_base + os.getpid() % 20000
    procs = []
    for i in range(2):
        flags = (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={i}")  # fmt: skip
        procs.append(subprocess.Popen(make_cmd(i, *flags), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))  # fmt: skip
    try:
        outs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "JAX devices: 8 (4 per process)" in outs[0]
    return outs
