"""The XLA flags of the test session and the environment of the command lines tests start:
simulated CPU devices (the sharding and multi-host tests), unbuffered output."""

import os


def xla_flags(devices: int) -> str:
    return f"--xla_force_host_platform_device_count={devices}"


def env(devices: int, **extra: str) -> dict:
    """This process's environment for a subprocess on `devices` simulated CPU devices."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=xla_flags(devices), **extra)  # fmt: skip
