"""Score networks as flax.linen modules (NCSN++, DDPM++, DDPM, NCSNv2, NCSN)."""
