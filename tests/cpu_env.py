"""The XLA flags of the test session and the environment of the command lines tests start.

Tests compile many small programs and run each briefly, so LLVM's -O0 is the faster trade:
the tiny DDPM++ init compiles in 2.1 s instead of 5.6 s, a tiny `main.py --mode train` run
takes 22 s instead of 28 s on a cold cache. Floating-point semantics are the same (no fast
math either way). The product's own flags are untouched.
"""

import os

TEST_XLA_FLAGS = ""


def xla_flags(devices: int) -> str:
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def env(devices: int, **extra: str) -> dict:
    """This process's environment for a subprocess on `devices` simulated CPU devices."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=xla_flags(devices), **extra)  # fmt: skip
