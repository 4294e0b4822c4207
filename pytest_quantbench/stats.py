"""Statistics for comparing a quantized model with its baseline on the same items, and pass@k.

The accuracy drop is a paired comparison: both precisions answer the same questions, so the interval comes from
resampling items (paired bootstrap), and the test of "is there any difference" looks only at the items whose
outcome changed (McNemar's exact test on the flips).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the large binomials.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the two kinds of flips; under no difference b ~ Bin(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(baseline: list[float], candidate: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of mean(baseline) - mean(candidate), resampling items (the same items for both)."""
    base, cand = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if base.shape != cand.shape or base.size == 0:
        raise ValueError(f"paired scores must be two non-empty lists of equal length, got {base.size} and {cand.size}")
    differences = base - cand
    rng = np.random.default_rng(seed)
    drops = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep memory flat for large item counts
        rows = min(1000, resamples - start)
        drops[start : start + rows] = differences[rng.integers(0, differences.size, size=(rows, differences.size))].mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(drops, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Baseline vs candidate on the same n items; drops and the interval in percentage points."""

    n: int
    drop_pt: float
    ci_low_pt: float
    ci_high_pt: float
    confidence: float
    flips_to_wrong: int  # right under the baseline, wrong under the candidate
    flips_to_right: int
    p_value: float  # McNemar exact, two-sided

    @property
    def significant(self) -> bool:
        """The interval excludes zero: the accuracies differ beyond what resampling the items explains."""
        return self.ci_low_pt > 0 or self.ci_high_pt < 0

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "not significant"
        return "significant drop" if self.drop_pt > 0 else "significant gain"

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict}


def compare_paired(baseline_correct: list[bool], candidate_correct: list[bool],
                   baseline_scores: list[float] | None = None, candidate_scores: list[float] | None = None,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedComparison:
    """Drop, its paired bootstrap interval and McNemar's test. Scores (e.g. pass@1 per problem under sampling), when
    given for both, are what the drop and interval use; the flips always come from right/wrong per item."""
    if len(baseline_correct) != len(candidate_correct):
        raise ValueError(f"paired results cover different items: {len(baseline_correct)} vs {len(candidate_correct)}")
    use_scores = bool(baseline_scores) and bool(candidate_scores)
    base = list(baseline_scores) if use_scores else [float(x) for x in baseline_correct]
    cand = list(candidate_scores) if use_scores else [float(x) for x in candidate_correct]
    low, high = paired_bootstrap(base, cand, resamples, seed)
    to_wrong = sum(1 for b, c in zip(baseline_correct, candidate_correct) if b and not c)
    to_right = sum(1 for b, c in zip(baseline_correct, candidate_correct) if c and not b)
    drop = (sum(base) - sum(cand)) / len(base)
    return PairedComparison(len(base), drop * 100, low * 100, high * 100, CONFIDENCE, to_wrong, to_right,
                            mcnemar_exact(to_wrong, to_right))


POWER = 0.80


def min_detectable_drop(n: int, discordance: float = 0.0, confidence: float = CONFIDENCE,
                        power: float = POWER) -> float:
    """The smallest accuracy drop (a fraction) that a paired comparison of `n` items detects at `confidence`
    (two-sided) with `power`; inf when no drop up to 100 points can be detected.

    Connor's (1987) sample size for paired proportions, solved for the drop d: n = (z_a sqrt(p) + z_b sqrt(p - d^2))^2
    / d^2, with p the share of items whose outcome differs between the two runs. A drop of d needs at least d of the
    items to change, so p is the observed share or d, whichever is larger: with no changes observed this is the best
    case, every changed item flipping to wrong.
    """
    if n <= 0:
        return float("inf")
    from statistics import NormalDist

    z_a, z_b = NormalDist().inv_cdf(1 - (1 - confidence) / 2), NormalDist().inv_cdf(power)
    drops = np.linspace(0.0005, 1.0, 2000)
    changed = np.maximum(discordance, drops)
    detectable = np.sqrt(n) * drops >= z_a * np.sqrt(changed) + z_b * np.sqrt(np.maximum(changed - drops**2, 0.0))
    return float(drops[np.argmax(detectable)]) if detectable.any() else float("inf")


def power_note(n: int, discordance: float, asked_pt: float) -> str | None:
    """A sentence saying that `n` items cannot see a drop of `asked_pt` points, or None when they can."""
    mde = min_detectable_drop(n, discordance) * 100
    if mde <= asked_pt:
        return None
    detect = "no drop up to 100 pt" if mde == float("inf") else f"only drops >= {mde:.0f} pt"
    return (f"underpowered: {n} items detect {detect} (95% confidence, 80% power); this gate asks "
            f"{asked_pt:g} pt")
