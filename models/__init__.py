"""Score networks as flax.linen modules (NCSN++, DDPM++, DDPM, NCSNv2, NCSN).

`get_model(config)` builds the network named `config.model.name`; the model modules themselves
are imported lazily by it, so importing this package costs only flax and jax.
"""

from models.utils import get_model

__all__ = ["get_model"]
