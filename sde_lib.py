"""Forward SDEs of Song et al. 2021 (arXiv:2011.13456): VE, VP and sub-VP, and the tutorial's
VE SDE `dx = sigma^t dw` (`TutorialVESDE`).

Pure math: every method takes arrays, nothing here knows of Flax or configs.

Conventions used throughout the project:
  * `x` is a batch `[B, ...]` (images are NHWC in `[-1, 1]` after the data scaler, or in
    `[0, 1]` for the VE configs that keep `data.centered=False`).
  * `t` is a vector `[B]` of diffusion times in `[eps, T]`, `T = 1` for every SDE.
  * Per-example scalars (`std`, `diffusion`, `beta`, ...) are `[B]` and are broadcast against
    `x` with `batch_bcast`, never with implicit rank promotion.
  * Discrete tables (DDPM betas, SMLD sigmas) are NumPy arrays derived from the float fields, so
    the dataclasses stay hashable and no traced array is ever cached on them.

References:
  Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling through
  Stochastic Differential Equations. ICLR 2021. Eqs. (9) VE, (11) VP, (12) sub-VP, (6) reverse
  SDE, (13) probability-flow ODE.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

ScoreFn = Callable[[Array, Array], Array]


def batch_bcast(v: Array, x: Array) -> Array:
    """Reshapes a per-example vector `[B]` to `[B, 1, ..., 1]` so it broadcasts against `x`."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    if v.shape != x.shape[:1]:
        raise ValueError(
            f"per-example vector has shape {v.shape}, expected ({x.shape[0]},) to match x of "
            f"shape {x.shape}"
        )
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _check_t(x: Array, t: Array) -> None:
    """Raises a ValueError naming both shapes unless `t` is `[B]` for `x` of shape `[B, ...]`."""
    if jnp.ndim(t) != 1 or jnp.shape(t)[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape (batch,) = ({x.shape[0]},) for x of shape {x.shape}; "
            f"got t of shape {jnp.shape(t)}"
        )


def _dim(z: Array) -> int:
    """Number of dimensions of one example (D in the paper)."""
    return int(np.prod(z.shape[1:]))


def _gaussian_logp(z: Array, scale: float) -> Array:
    """log N(z; 0, scale^2 I) per example, `[B]`."""
    d = _dim(z)
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
    return -d / 2.0 * np.log(2 * np.pi * scale**2) - sq / (2.0 * scale**2)


class SDE:
    """Shared behaviour of the forward SDEs. Subclasses are frozen dataclasses with field `N`."""

    N: int

    @property
    def T(self) -> float:
        """End time of the forward SDE."""
        return 1.0

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift `f(x, t)` (shaped like x) and diffusion `g(t)` (`[B]`)."""
        raise NotImplementedError

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean (shaped like x) and std (`[B]`) of the perturbation kernel p_{0t}(x(t) | x(0))."""
        raise NotImplementedError

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """One forward step `x_{i+1} = x_i + f_i + G_i z_i` of the discretized SDE.

        The default is Euler-Maruyama with `dt = 1/N` (the original code's step size, which is not
        the `(1 - eps)/(N - 1)` spacing of the sampling grid; kept for parity).

        Returns:
          f: shaped like x. G: `[B]`.
        """
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * np.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Eq. 6) or the probability-flow ODE (Eq. 13) for `score_fn`."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE `dx = [f - g^2 s] dt + g dw` or, with `probability_flow`, the ODE
    `dx = [f - g^2 s / 2] dt` (Song et al. 2021, Eqs. 6 and 13).

    Integrated backwards in time: samplers step with negative `dt`.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _coeff(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Reverse drift `f - c g^2 s` and diffusion (`g`, or 0 for the probability flow)."""
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_bcast(diffusion**2, x) * score * self._coeff()
        diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Discrete reverse step: `rev_f = f - c G^2 s`, `rev_G = G` (0 for the flow)."""
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_bcast(G**2, x) * self.score_fn(x, t) * self._coeff()
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


def timestep_index(t: Array, N: int, T: float) -> Array:
    """Discrete index `int(t (N - 1) / T)` of the original code (floors, does not round).

    Indexes the DDPM / SMLD tables (`discrete_betas`, `alphas`, `discrete_sigmas`) at `t` `[B]`.
    """
    return (t * (N - 1) / T).astype(jnp.int32)


class _DDPMTables:
    """What VP and sub-VP share: the beta schedule, drift, mean, N(0, I) prior, and the DDPM
    tables `linspace(beta_min/N, beta_max/N, N)` (Ho et al. 2020)."""

    beta_min: float
    beta_max: float
    N: int

    @functools.cached_property
    def discrete_betas(self) -> np.ndarray:
        if self.beta_max / self.N >= 1.0:
            raise ValueError(
                f"The DDPM discretization needs beta_max / N < 1, got beta_max={self.beta_max}, "
                f"N={self.N}: increase N (model.num_scales) above {self.beta_max:g}"
            )
        return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @functools.cached_property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.discrete_betas

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @functools.cached_property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @functools.cached_property
    def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    def _beta(self, t: Array) -> Array:
        """Continuous `beta(t) = beta_min + t (beta_max - beta_min)`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        """Log of the marginal mean coefficient, `log alpha(t) = -t^2 (beta_max - beta_min)/4 -
        t beta_min / 2` (`x(t) = alpha(t) x(0) + std(t) z`), any shape of `t`."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _drift(self, x: Array, t: Array) -> tuple[Array, Array]:
        """The shared VP / sub-VP drift `-beta(t) x / 2`, and `beta(t)`."""
        _check_t(x, t)
        beta_t = self._beta(t)
        return -0.5 * batch_bcast(beta_t, x) * x, beta_t

    def _mean(self, x: Array, t: Array) -> tuple[Array, Array]:
        """The shared marginal mean `exp(lmc) x`, and `lmc`."""
        _check_t(x, t)
        lmc = self.log_mean_coeff(t)
        return batch_bcast(jnp.exp(lmc), x) * x, lmc

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        return _gaussian_logp(z, 1.0)


@dataclasses.dataclass(frozen=True)
class VPSDE(_DDPMTables, SDE):
    """Variance-preserving SDE, `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw` (Eq. 11)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        drift, beta_t = self._drift(x, t)
        return drift, jnp.sqrt(beta_t)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        mean, lmc = self._mean(x, t)
        return mean, jnp.sqrt(1.0 - jnp.exp(2.0 * lmc))

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """DDPM discretization: `x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z` (App. B)."""
        _check_t(x, t)
        i = timestep_index(t, self.N, self.T)
        beta = jnp.asarray(self.discrete_betas)[i]
        alpha = jnp.asarray(self.alphas)[i]
        f = batch_bcast(jnp.sqrt(alpha), x) * x - x
        return f, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class subVPSDE(_DDPMTables, SDE):
    """sub-VP SDE, `dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2 int beta))) dw` (Eq. 12).

    The DDPM tables (`alphas`, ...) are defined here too: the original Langevin corrector reads
    `sde.alphas` for sub-VP but the original class lacks them (AttributeError). We use the DDPM
    table of the same beta schedule, which is what that code path intended.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        drift, beta_t = self._drift(x, t)
        discount = 1.0 - jnp.exp(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return drift, jnp.sqrt(beta_t * discount)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        mean, lmc = self._mean(x, t)
        # No square root: the sub-VP variance is (1 - exp(-int beta))^2 (paper App. B).
        std = 1.0 - jnp.exp(2.0 * lmc)
        return mean, std


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE, `dx = sqrt(d sigma^2(t)/dt) dw`, `sigma(t) = s_min (s_max/s_min)^t`
    (Eq. 9)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    @functools.cached_property
    def discrete_sigmas(self) -> np.ndarray:
        """SMLD noise levels, geometric and ascending (`get_sigmas` in models/ is descending)."""
        return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def _sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        _check_t(x, t)
        drift = jnp.zeros_like(x)
        diffusion = self._sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
        return drift, diffusion

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        _check_t(x, t)
        return x, self._sigma(t)

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z: Array) -> Array:
        return _gaussian_logp(z, self.sigma_max)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """SMLD discretization: `x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z` (App. B)."""
        _check_t(x, t)
        i = timestep_index(t, self.N, self.T)
        sigmas = jnp.asarray(self.discrete_sigmas)
        sigma = sigmas[i]
        adjacent_sigma = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[i - 1])
        f = jnp.zeros_like(x)
        return f, jnp.sqrt(sigma**2 - adjacent_sigma**2)


@dataclasses.dataclass(frozen=True)
class TutorialVESDE(SDE):
    """VE SDE of the score-SDE tutorial, `dx = sigma^t dw` on t in [0, 1] (no drift).

    The marginal std is `sqrt((sigma^(2t) - 1) / (2 ln sigma))` (`int_0^t sigma^(2s) ds`), so
    p_{0t} starts at the data (std 0 at t = 0, unlike `VESDE`, which starts at sigma_min) and the
    prior is N(0, std(1)^2 I): std(1) = 9.85 for sigma = 25, 17.9 for sigma = 50. Only the
    continuous-time objective is defined for it (no SMLD table).

    References:
      Song et al. 2021, Eq. (9) with sigma^2(t) = (sigma^(2t) - 1) / (2 ln sigma); the
      score_sde tutorial notebook (`Tutorial_on_score_based_generative_modeling`,
      `marginal_prob_std` / `diffusion_coeff`).
    """

    sigma: float = 25.0
    N: int = 1000

    def __post_init__(self):
        if not self.sigma > 1.0:
            raise ValueError(f"TutorialVESDE needs sigma > 1 (ln sigma > 0), got {self.sigma}")

    def _var(self, t: Array) -> Array:
        """`(sigma^(2t) - 1) / (2 ln sigma)`, with expm1 so that small t keeps its digits."""
        log_sigma = np.log(self.sigma)
        return jnp.expm1(2.0 * t * log_sigma) / (2.0 * log_sigma)

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        _check_t(x, t)
        return jnp.zeros_like(x), self.sigma**t

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        _check_t(x, t)
        return x, jnp.sqrt(self._var(t))

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape) * self.prior_std

    def prior_logp(self, z: Array) -> Array:
        return _gaussian_logp(z, self.prior_std)

    @property
    def prior_std(self) -> float:
        """std(T = 1) = `sqrt((sigma^2 - 1) / (2 ln sigma))`, a Python float."""
        return float(np.sqrt((self.sigma**2 - 1.0) / (2.0 * np.log(self.sigma))))

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Exact forward transition over `[t - 1/N, t]` (the SMLD rule on this std):
        `f = 0`, `G^2 = std(t)^2 - std(t - 1/N)^2 = sigma^(2t) (1 - sigma^(-2/N)) / (2 ln sigma)`,
        with `t - 1/N` clipped at 0. `G -> g(t) sqrt(1/N)` as N grows.
        """
        _check_t(x, t)
        log_sigma = np.log(self.sigma)
        h = jnp.minimum(t, 1.0 / self.N)
        g2 = -(self.sigma ** (2.0 * t)) * jnp.expm1(-2.0 * h * log_sigma) / (2.0 * log_sigma)
        return jnp.zeros_like(x), jnp.sqrt(g2)


SDES = {
    "vesde": VESDE,
    "vpsde": VPSDE,
    "subvpsde": subVPSDE,
    "tutorialvesde": TutorialVESDE,
}


def get_sde(name: str, **kwargs) -> SDE:
    """Builds an SDE by its config name (`training.sde`), e.g. `get_sde("vpsde", N=1000)`."""
    try:
        cls = SDES[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown SDE {name!r}; valid names: {sorted(SDES)}") from None
    return cls(**kwargs)
