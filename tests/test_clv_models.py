"""BG/NBD and Gamma-Gamma: likelihoods against hand-derived closed forms, predictions, and fits on simulated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from loyalty.clv_models import BetaGeo, GammaGamma, clv

R, ALPHA, A, B = 0.5, 2.0, 0.8, 2.5


def _bgnbd(r: float = R, alpha: float = ALPHA, a: float = A, b: float = B) -> BetaGeo:
    model = BetaGeo()
    model.r_, model.alpha_, model.a_, model.b_ = r, alpha, a, b
    return model


def test_bgnbd_likelihood_no_repeat_purchase() -> None:
    # x = 0: B(a, b)/B(a, b) · Gamma(r)/Gamma(r) · (alpha/(alpha+T))^r — alive all along, nothing else possible.
    expected = R * math.log(ALPHA / (ALPHA + 10.0))
    assert BetaGeo.log_likelihood([R, ALPHA, A, B], 0, 0, 10.0)[0] == pytest.approx(expected, abs=1e-12)


def test_bgnbd_likelihood_two_repeat_purchases_by_hand() -> None:
    # x = 2, t_x = 5, T = 10. Gamma(r+2)/Gamma(r) = r(r+1); B(a, b+2)/B(a, b) = b(b+1)/((a+b)(a+b+1));
    # B(a+1, b+1)/B(a, b) = ab/((a+b)(a+b+1)). Alive at T, or dropped out right after the purchase at t_x.
    x, t_x, T = 2, 5.0, 10.0
    common = R * (R + 1) * ALPHA**R / ((A + B) * (A + B + 1))
    alive = B * (B + 1) * (ALPHA + T) ** -(R + x)
    dropped = A * B * (ALPHA + t_x) ** -(R + x)
    expected = math.log(common * (alive + dropped))
    got = BetaGeo.log_likelihood([R, ALPHA, A, B], [x, 0], [t_x, 0.0], [T, 3.0])
    assert got[0] == pytest.approx(expected, abs=1e-9)
    assert got[1] == pytest.approx(R * math.log(ALPHA / (ALPHA + 3.0)), abs=1e-12)


def test_bgnbd_likelihood_does_not_overflow_for_heavy_buyers() -> None:
    ll = BetaGeo.log_likelihood([R, ALPHA, A, B], [400, 2000], [300.0, 3000.0], [365.0, 3650.0])
    assert np.all(np.isfinite(ll)) and np.all(ll < 0)


def test_gamma_gamma_likelihood_one_transaction_is_beta_prime() -> None:
    # x = 1: the spend is Gamma(p, nu) with nu ~ Gamma(q, gamma): a beta-prime(p, q) scaled by gamma.
    p, q, v, m = 6.0, 3.5, 15.0, 22.0
    expected = stats.betaprime(p, q, scale=v).logpdf(m)
    assert GammaGamma.log_likelihood([p, q, v], 1, m)[0] == pytest.approx(expected, abs=1e-9)


def test_gamma_gamma_likelihood_several_transactions_by_integration() -> None:
    # The mean of x Gamma(p, nu) values is Gamma(px, xnu); integrate nu out numerically.
    p, q, v, x, m = 4.0, 3.0, 10.0, 3, 12.0

    def joint(nu: float) -> float:
        return float(stats.gamma(p * x, scale=1 / (x * nu)).pdf(m) * stats.gamma(q, scale=1 / v).pdf(nu))

    density, _ = integrate.quad(joint, 0, np.inf, epsabs=1e-14, epsrel=1e-12)
    assert GammaGamma.log_likelihood([p, q, v], x, m)[0] == pytest.approx(math.log(density), abs=1e-9)


def _numeric_gradient(f, params: list[float], step: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    rows = []
    for i in range(len(params)):
        up, down = list(params), list(params)
        up[i] += step * params[i]
        down[i] -= step * params[i]
        rows.append((f(up) - f(down)) / (2 * step * params[i]))
    return np.column_stack(rows)


def test_analytic_gradients_match_finite_differences() -> None:
    x, t_x, T = np.array([0, 1, 4, 30]), np.array([0.0, 2.0, 9.5, 38.0]), np.array([5.0, 12.0, 12.0, 39.0])
    bg = [R, ALPHA, A, B]
    np.testing.assert_allclose(BetaGeo.gradient(bg, x, t_x, T),
                               _numeric_gradient(lambda p: BetaGeo.log_likelihood(p, x, t_x, T), bg), rtol=1e-6)
    n, m = np.array([1, 2, 7]), np.array([8.0, 30.0, 15.5])
    gg = [6.0, 3.5, 15.0]
    np.testing.assert_allclose(GammaGamma.gradient(gg, n, m),
                               _numeric_gradient(lambda p: GammaGamma.log_likelihood(p, n, m), gg), rtol=1e-6)


def test_p_alive_is_one_without_repeat_purchases_and_matches_the_formula() -> None:
    model = _bgnbd()
    x, t_x, T = 3, 4.0, 12.0
    by_hand = 1 / (1 + A / (B + x - 1) * ((ALPHA + T) / (ALPHA + t_x)) ** (R + x))
    got = model.p_alive([0, 0, x], [0.0, 0.0, t_x], [1.0, 500.0, T])
    assert got[:2].tolist() == [1.0, 1.0]  # dropout happens only right after a repeat purchase
    assert got[2] == pytest.approx(by_hand, abs=1e-12)


def test_p_alive_falls_with_silence_and_rises_with_recency() -> None:
    model = _bgnbd()
    silence = model.p_alive(3, 10.0, np.array([10.0, 20.0, 40.0, 80.0]))
    recency = model.p_alive(3, np.array([1.0, 5.0, 10.0, 19.0]), 20.0)
    assert np.all(np.diff(silence) < 0) and np.all(np.diff(recency) > 0)
    # Bought at the very end: dead only if that purchase was the last (probability a/(a+b+x-1)).
    assert model.p_alive(3, 20.0, 20.0)[0] == pytest.approx((B + 2) / (A + B + 2), abs=1e-12)


def test_conditional_expectation_of_a_brand_new_customer_is_the_unconditional_one() -> None:
    # With x = 0 and T = 0 nothing has been learned: eq. 10 must reduce to eq. 9.
    model = _bgnbd()
    horizons = np.array([1.0, 10.0, 52.0])
    conditional = [model.conditional_expected_purchases(t, 0, 0.0, 0.0)[0] for t in horizons]
    np.testing.assert_allclose(conditional, model.expected_purchases(horizons), rtol=1e-10)


def test_expected_purchases_grow_with_horizon_and_activity() -> None:
    model = _bgnbd()
    by_horizon = [model.conditional_expected_purchases(t, 2, 8.0, 10.0)[0] for t in (5.0, 10.0, 52.0)]
    by_frequency = model.conditional_expected_purchases(52.0, np.array([1, 3, 6]), 9.0, 10.0)
    assert np.all(np.diff(by_horizon) > 0) and np.all(np.diff(by_frequency) > 0)


def test_conditional_spend_shrinks_towards_the_population_mean() -> None:
    spend = GammaGamma()
    spend.p_, spend.q_, spend.v_ = 6.0, 4.0, 15.0
    population = spend.population_mean_spend()
    assert population == pytest.approx(6 * 15 / 3)
    one, many = spend.conditional_expected_spend([1, 50], [100.0, 100.0])
    assert population < one < many < 100.0
    assert spend.conditional_expected_spend(0, 999.0)[0] == pytest.approx(population)  # no repeat: no evidence
    values = clv(_bgnbd(), spend, 52.0, [2, 2], [8.0, 8.0], [10.0, 10.0], [20.0, 40.0])
    assert 0 < values[0] < values[1]


def _simulate_bgnbd(rng: np.random.Generator, n: int, r: float, alpha: float, a: float, b: float,
                    T: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rate = rng.gamma(r, 1 / alpha, n)
    dropout = rng.beta(a, b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    now, active = np.zeros(n), np.ones(n, dtype=bool)
    while active.any():  # vectorised over customers, one repeat purchase per step
        now = now + rng.exponential(1 / rate)
        active &= now <= T
        x[active] += 1
        t_x[active] = now[active]
        active &= rng.random(n) >= dropout
    return x, t_x, np.full(n, T)


def test_fit_recovers_bgnbd_parameters_from_simulated_customers() -> None:
    rng = np.random.default_rng(7)
    truth = (0.6, 5.0, 0.8, 2.5)
    x, t_x, T = _simulate_bgnbd(rng, 6000, *truth, T=52.0)
    model = BetaGeo().fit(x, t_x, T)
    fitted = (model.r_, model.alpha_, model.a_, model.b_)
    assert model.log_likelihood_ >= float(BetaGeo.log_likelihood(truth, x, t_x, T).sum())  # the MLE beats the truth
    np.testing.assert_allclose(fitted[:2], truth[:2], rtol=0.15)
    assert model.a_ / (model.a_ + model.b_) == pytest.approx(truth[2] / (truth[2] + truth[3]), rel=0.2)


def test_fit_recovers_gamma_gamma_parameters_from_simulated_customers() -> None:
    rng = np.random.default_rng(11)
    p, q, v, n = 6.0, 4.0, 15.0, 4000
    nu = rng.gamma(q, 1 / v, n)
    x = 1 + rng.poisson(3, n)
    m = np.array([rng.gamma(p, 1 / nu[i], x[i]).mean() for i in range(n)])
    model = GammaGamma().fit(x, m)
    assert model.p_ == pytest.approx(p, rel=0.2)  # p trades off against q and v: loosely identified
    assert model.population_mean_spend() == pytest.approx(p * v / (q - 1), rel=0.1)
    assert model.log_likelihood_ >= float(GammaGamma.log_likelihood([p, q, v], x, m).sum())


def test_bad_summaries_are_refused() -> None:
    with pytest.raises(ValueError, match="t_x"):
        BetaGeo().fit([1, 0], [5.0, 1.0], [4.0, 4.0])
    with pytest.raises(ValueError, match="repeat"):
        GammaGamma().fit([0, 0], [0.0, 0.0])
