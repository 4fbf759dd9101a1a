"""models/prng.py: the unrolled threefry gives JAX's random bits and `jax.random.bernoulli`'s
masks bit for bit (typed and raw keys, edge probabilities, odd and empty shapes), falls back to
JAX where it would not, and compiles without the rolled loop JAX uses on CPU."""

import jax
import numpy as np
import pytest
from jax import numpy as jnp

from models import prng

SHAPES = [(8, 4, 4, 16), (3, 5, 7), (1,), (), (0, 3), (2, 1, 9)]


def _keys():
    return [
        jax.random.key(0),
        jax.random.fold_in(jax.random.key(42), 7),
        jax.random.split(jax.random.key(3), 3)[2],
        jax.random.PRNGKey(11),  # raw uint32[2]
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_bits_are_jax_bits(shape):
    for key in _keys():
        ours = jax.jit(prng.random_bits32, static_argnums=1)(key, shape)
        np.testing.assert_array_equal(ours, jax.random.bits(key, shape, jnp.uint32))


def test_threefry_matches_the_published_test_vector():
    # Threefry-2x32, 20 rounds, key = counter = 0: the Random123 known-answer test vector.
    zero = jnp.uint32(0)
    x0, x1 = prng.threefry2x32(zero, zero, zero, zero)
    assert (int(x0), int(x1)) == (0x6B200159, 0x99BA4EFE)


P_VALUES = [
    0.9,
    0.5,
    0.1,
    0.123456789,
    0.0,
    1.0,
    2.0**-23,
    2.0**-24,  # below the uniform's resolution: only m = 0 is below it
    float(np.nextafter(np.float32(1), np.float32(0))),
    1.5,
    -0.25,
    np.float32(0.7),
]


@pytest.mark.parametrize("p", P_VALUES)
def test_bernoulli_is_jax_bernoulli(p):
    for key in _keys():
        for shape in [(8, 4, 4, 16), (5, 3), ()]:
            ours = jax.jit(prng.bernoulli, static_argnums=(1, 2, 3))(key, p, shape, True)
            np.testing.assert_array_equal(ours, jax.random.bernoulli(key, p, shape))


def test_bernoulli_keeps_about_p():
    mask = prng.bernoulli(jax.random.key(1), 0.9, (64, 1024), enabled=True)
    assert abs(float(jnp.mean(mask)) - 0.9) < 0.005


def test_other_keys_fall_back_to_jax():
    key = jax.random.key(0, impl="rbg")
    assert prng.random_bits32(key, (4, 4)) is None
    np.testing.assert_array_equal(
        prng.bernoulli(key, 0.3, (4, 4), enabled=True), jax.random.bernoulli(key, 0.3, (4, 4))
    )
    # a traced probability is not a Python scalar: JAX's path
    f = jax.jit(lambda p: prng.bernoulli(jax.random.key(2), p, (6,), enabled=True))
    np.testing.assert_array_equal(f(0.4), jax.random.bernoulli(jax.random.key(2), 0.4, (6,)))
    # an integer p is JAX's error, not a mask
    with pytest.raises(TypeError, match="floating"):
        prng.bernoulli(jax.random.key(2), 1, (6,), enabled=True)


def test_enabled_compiles_without_the_rolled_loop():
    key = jax.random.key(0)

    def hlo(enabled):
        f = jax.jit(lambda k: prng.bernoulli(k, 0.9, (8, 16, 16, 32), enabled=enabled))
        return f.lower(key).compile().as_text()

    assert " while(" not in hlo(True)
    if jax.default_backend() == "cpu":  # JAX's own lowering on CPU: a rolled loop
        assert " while(" in hlo(False)


def test_vmapped_keys_give_jax_masks():
    keys = jax.random.split(jax.random.key(0), 3)
    ours = jax.vmap(lambda k: prng.bernoulli(k, 0.7, (5, 4), enabled=True))(keys)
    np.testing.assert_array_equal(
        ours, jax.vmap(lambda k: jax.random.bernoulli(k, 0.7, (5, 4)))(keys)
    )
