"""The XLA flags of the test session and the environment of the command lines tests start:
simulated CPU devices (the sharding and multi-host tests), the command lines' XLA:CPU flags
(`utils.XLA_CPU_FLAGS`), unbuffered output."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def xla_flags(devices: int) -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import utils

    return utils.with_xla_cpu_flags(f"--xla_force_host_platform_device_count={devices}")


def env(devices: int, **extra: str) -> dict:
    """This process's environment for a subprocess on `devices` simulated CPU devices."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=xla_flags(devices), **extra)  # fmt: skip
