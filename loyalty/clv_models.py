"""Customer lifetime value: BG/NBD purchase counts and Gamma-Gamma spend, by maximum likelihood.

Pure numpy/scipy (no database): arrays of per-customer summaries in, parameters and predictions out.

- :class:`BetaGeo` is the BG/NBD model of Fader, Hardie and Lee (2005), "Counting your customers the
  easy way": while alive a customer buys as a Poisson process of rate lambda ~ Gamma(r, alpha); after each
  purchase they drop out with probability p ~ Beta(a, b). A customer is summarised by ``x`` (repeat
  purchases), ``t_x`` (time of the last one, from the first purchase) and ``T`` (age, first purchase to
  the end of the observation).
- :class:`GammaGamma` is Fader and Hardie's (2013) note "The Gamma-Gamma model of monetary value":
  a transaction's value ~ Gamma(p, nu) with nu ~ Gamma(q, gamma) across customers (gamma is ``v_``), fitted on
  customers with ``x > 0`` from the mean ``m`` of their repeat transactions.

Time is in whatever unit the summaries use (the benchmark uses weeks, the database days). Fits
minimise the mean negative log-likelihood over log-parameters (so every parameter stays positive),
with identical customers folded into weights, and an optional L2 penalty (default 0) on the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

Array = NDArray[np.float64]
#: Log-parameters stay within ±this (parameters within e^±15, about 3e-7 to 3e6).
LOG_BOUND = 15.0


def _arrays(*values: ArrayLike) -> list[Array]:
    """Float arrays of one common shape (at least 1-d: scalars in, length-1 arrays out)."""
    return [np.array(v, dtype=np.float64) for v in np.broadcast_arrays(*(np.atleast_1d(v) for v in values))]


def _fold(*columns: ArrayLike) -> tuple[list[Array], Array]:
    """Unique rows of ``columns`` and how many times each occurs (the likelihood is a sum over customers)."""
    stacked = np.column_stack(_arrays(*columns))
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


Objective = Callable[[Array], tuple[float, Array]]


def _objective(log_likelihood: Callable[[Array], Array], gradient: Callable[[Array], Array], weights: Array,
               penalizer: float) -> Objective:
    """Mean negative log-likelihood (+ L2 penalty on the parameters) and its gradient in log-parameters."""
    total = weights.sum()

    def objective(log_params: Array) -> tuple[float, Array]:
        params = np.exp(log_params)
        value = -float(weights @ log_likelihood(params)) / total + penalizer * float(params @ params)
        if not np.isfinite(value):
            return 1e300, np.zeros_like(params)
        grad = -(weights @ gradient(params)) / total * params + 2 * penalizer * params**2  # chain rule: d/dlog p
        return value, np.nan_to_num(grad)

    return objective


def _minimise(objective: Objective, start: Array) -> Array:
    """Minimise over log-parameters and return the parameters.

    L-BFGS-B with the analytic gradient, within +-:data:`LOG_BOUND` (a degenerate sample, e.g. no
    heterogeneity at all, sends a parameter to infinity: the bound stops it there instead of wandering along a
    flat ridge); Nelder-Mead from its end point when it does not report convergence. Floating-point warnings
    are silenced: trial points far out overflow by design (the objective turns them into a huge penalty).
    """
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(start)
    with np.errstate(all="ignore"):
        best = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                        options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 2000})
        if not best.success:
            retry = minimize(lambda z: objective(z)[0], best.x, method="Nelder-Mead", bounds=bounds,
                             options={"maxiter": 150 * len(start), "xatol": 1e-8, "fatol": 1e-12})
            best = retry if retry.fun <= best.fun else best
    if not np.all(np.isfinite(best.x)):
        raise RuntimeError("the likelihood could not be maximised (non-finite parameters)")
    return np.exp(best.x)


def _check_summaries(x: Array, t_x: Array, T: Array) -> None:
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9) or np.any((x == 0) & (t_x != 0)):
        raise ValueError("summaries need x >= 0, 0 <= t_x <= T, and t_x = 0 when x = 0")


class BetaGeo:
    """BG/NBD model; after :meth:`fit`, parameters ``r_``, ``alpha_``, ``a_``, ``b_``."""

    names = ("r", "alpha", "a", "b")

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer
        self.r_ = self.alpha_ = self.a_ = self.b_ = float("nan")
        self.log_likelihood_ = float("nan")

    @property
    def params_(self) -> dict[str, float]:
        """Fitted parameters by name."""
        return dict(zip(self.names, (self.r_, self.alpha_, self.a_, self.b_), strict=True))

    @staticmethod
    def log_likelihood(params: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """Per-customer log-likelihood (FHL 2005, eq. 6), summed in log space.

        A1..A4 as in the paper's appendix: the two terms of the likelihood (alive at ``T``, or dropped out
        just after the last purchase) are added with log-sum-exp, so large ``x`` or ``T`` cannot overflow.
        """
        r, alpha, a, b = (float(p) for p in np.asarray(params, dtype=np.float64))
        x, t_x, T = _arrays(x, t_x, T)
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = betaln(a, b + x) - betaln(a, b)
        a3, a4 = BetaGeo._last_terms(r, alpha, a, b, x, t_x, T)
        return a1 + a2 + np.logaddexp(a3, a4)

    @staticmethod
    def _last_terms(r: float, alpha: float, a: float, b: float, x: Array, t_x: Array,
                    T: Array) -> tuple[Array, Array]:
        """A3 (alive at T) and A4 (dropped out after the last purchase; -inf when x = 0)."""
        a3 = -(r + x) * np.log(alpha + T)
        repeat = x > 0
        a4 = np.full_like(x, -np.inf)
        xr = x[repeat]
        a4[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
        return a3, a4

    @staticmethod
    def gradient(params: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """Per-customer gradient of :meth:`log_likelihood` in (r, alpha, a, b): one row per customer.

        The two last terms enter through their softmax weights ``w3 + w4 = 1``.
        """
        r, alpha, a, b = (float(p) for p in np.asarray(params, dtype=np.float64))
        x, t_x, T = _arrays(x, t_x, T)
        a3, a4 = BetaGeo._last_terms(r, alpha, a, b, x, t_x, T)
        w4 = np.exp(a4 - np.logaddexp(a3, a4))
        w3 = 1 - w4
        d_r = digamma(r + x) - digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(alpha + t_x)
        d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
        common = digamma(a + b) - digamma(a + b + x)
        d_a = common + w4 / a
        d_b = common + digamma(b + x) - digamma(b) - np.divide(w4, b + x - 1, out=np.zeros_like(x), where=x > 0)
        return np.column_stack([d_r, d_alpha, d_a, d_b])

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, *,
            start: ArrayLike | None = None) -> BetaGeo:
        """Maximum-likelihood fit on customer summaries ``(x, t_x, T)``."""
        (x, t_x, age), weights = _fold(frequency, recency, T)
        _check_summaries(x, t_x, age)
        objective = _objective(lambda p: self.log_likelihood(p, x, t_x, age), lambda p: self.gradient(p, x, t_x, age),
                               weights, self.penalizer)
        first = np.zeros(4) if start is None else np.log(np.asarray(start, dtype=np.float64))
        self.r_, self.alpha_, self.a_, self.b_ = (float(p) for p in _minimise(objective, first))
        self.log_likelihood_ = float(weights @ self.log_likelihood(self._p(), x, t_x, age))
        return self

    def _p(self) -> Array:
        return np.array([self.r_, self.alpha_, self.a_, self.b_])

    def _log_dropout_odds(self, x: Array, t_x: Array, T: Array) -> Array:
        """log[a/(b+x-1) · ((alpha+T)/(alpha+t_x))^(r+x)] for x > 0; -inf for x = 0 (no chance to drop out)."""
        out = np.full_like(x, -np.inf)
        repeat = x > 0
        xr = x[repeat]
        out[repeat] = (np.log(self.a_) - np.log(self.b_ + xr - 1)
                       + (self.r_ + xr) * (np.log(self.alpha_ + T[repeat]) - np.log(self.alpha_ + t_x[repeat])))
        return out

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """P(alive at T | x, t_x, T) (FHL 2005, eq. 13): exactly 1 when x = 0, since dropout follows a purchase."""
        x, t_x, T = _arrays(x, t_x, T)
        return np.asarray(expit(-self._log_dropout_odds(x, t_x, T)), dtype=np.float64)

    def conditional_expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """E[purchases in (T, T+t] | x, t_x, T] (FHL 2005, eq. 10), with the Gauss hypergeometric 2F1."""
        x, t_x, T = _arrays(x, t_x, T)
        r, alpha, a, b = self._p()
        z = t / (alpha + T + t)
        # ((alpha+T)/(alpha+T+t))^(r+x) in log form: (r+x) can be large for frequent buyers.
        shrink = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        bracket = 1.0 - shrink * hyp2f1(r + x, b + x, a + b + x - 1, z)
        numerator = (a + b + x - 1) / (a - 1) * bracket
        return np.asarray(numerator * self.p_alive(x, t_x, T), dtype=np.float64)

    def expected_purchases(self, t: ArrayLike) -> Array:
        """E[X(t)] for a customer just acquired (FHL 2005, eq. 9): the prediction for a member with no history."""
        r, alpha, a, b = self._p()
        t = np.asarray(t, dtype=np.float64)
        z = t / (alpha + t)
        inner = 1.0 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z)
        return np.asarray((a + b - 1) / (a - 1) * inner, dtype=np.float64)


class GammaGamma:
    """Gamma-Gamma spend model; after :meth:`fit`, parameters ``p_``, ``q_``, ``v_`` (gamma in the note)."""

    names = ("p", "q", "v")

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer
        self.p_ = self.q_ = self.v_ = float("nan")
        self.log_likelihood_ = float("nan")

    @property
    def params_(self) -> dict[str, float]:
        """Fitted parameters by name."""
        return dict(zip(self.names, (self.p_, self.q_, self.v_), strict=True))

    @staticmethod
    def log_likelihood(params: ArrayLike, x: ArrayLike, m: ArrayLike) -> Array:
        """Per-customer log-density of the mean spend ``m`` over ``x`` transactions (the note's eq. 3)."""
        p, q, v = (float(k) for k in np.asarray(params, dtype=np.float64))
        x, m = _arrays(x, m)
        px = p * x
        return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
                + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(v + m * x))

    @staticmethod
    def gradient(params: ArrayLike, x: ArrayLike, m: ArrayLike) -> Array:
        """Per-customer gradient of :meth:`log_likelihood` in (p, q, v): one row per customer."""
        p, q, v = (float(k) for k in np.asarray(params, dtype=np.float64))
        x, m = _arrays(x, m)
        px, spread = p * x, np.log(v + m * x)
        d_p = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - spread)
        d_q = digamma(px + q) - digamma(q) + np.log(v) - spread
        d_v = q / v - (px + q) / (v + m * x)
        return np.column_stack([d_p, d_q, d_v])

    def fit(self, frequency: ArrayLike, monetary: ArrayLike, *, start: ArrayLike | None = None) -> GammaGamma:
        """Maximum-likelihood fit on customers with ``frequency > 0`` and ``monetary > 0`` (others are ignored)."""
        x, m = _arrays(frequency, monetary)
        keep = (x > 0) & (m > 0)
        if not keep.any():
            raise ValueError("Gamma-Gamma needs customers with repeat purchases and positive spend")
        (x, m), weights = _fold(x[keep], m[keep])
        objective = _objective(lambda k: self.log_likelihood(k, x, m), lambda k: self.gradient(k, x, m), weights,
                               self.penalizer)
        first = np.zeros(3) if start is None else np.log(np.asarray(start, dtype=np.float64))
        self.p_, self.q_, self.v_ = (float(k) for k in _minimise(objective, first))
        self.log_likelihood_ = float(weights @ self.log_likelihood([self.p_, self.q_, self.v_], x, m))
        return self

    def population_mean_spend(self) -> float:
        """E[value of a transaction] across customers, p·gamma/(q-1) (infinite when q <= 1)."""
        return self.p_ * self.v_ / (self.q_ - 1) if self.q_ > 1 else float("inf")

    def conditional_expected_spend(self, x: ArrayLike, m: ArrayLike) -> Array:
        """E[value | x, m] (the note's eq. 5): the population mean shrunk towards ``m`` as ``x`` grows.

        A customer with ``x = 0`` gets the population mean (their ``m`` is ignored).
        """
        x, m = _arrays(x, m)
        m = np.where(x > 0, m, 0.0)
        return np.asarray((self.v_ + m * x) * self.p_ / (self.p_ * x + self.q_ - 1), dtype=np.float64)


#: Every parameter of the two models, in the order reports show them.
PARAM_NAMES = (*BetaGeo.names, *GammaGamma.names)


def clv(purchases: BetaGeo, spend: GammaGamma, horizon: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike,
        m: ArrayLike) -> Array:
    """Expected value over the next ``horizon``: expected purchases x expected spend, **undiscounted**.

    Undiscounted on purpose: over 12 months a discount rate moves the figure by a few percent, and the
    figure is used to rank and filter members, not to value the business.
    """
    return purchases.conditional_expected_purchases(horizon, x, t_x, T) * spend.conditional_expected_spend(x, m)


def summary_params(purchases: BetaGeo, spend: GammaGamma | None) -> dict[str, Any]:
    """Both models' parameters (and log-likelihoods) as one JSON-ready dict."""
    out: dict[str, Any] = {**purchases.params_, "bgnbd_log_likelihood": purchases.log_likelihood_}
    if spend is not None:
        out |= {**spend.params_, "gamma_gamma_log_likelihood": spend.log_likelihood_}
    return out
