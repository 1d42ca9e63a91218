"""Reference profile of the training data, and the PSI of recent inputs against it.

Computed at training time and stored with the model (MLmodel ``metadata``), so the predictor can
report per-feature drift without any other lookup. Numeric features are binned by the training
deciles, categorical ones by category; missing values and unknown categories have a bin each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlstack.schema import FEATURES

N_QUANTILES = 10
# floor for an empty bin's share, so PSI stays finite
EPSILON = 1e-4


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    kind: str
    edges: tuple[float, ...]  # numeric: inner bin edges
    categories: tuple[str, ...]  # categorical: known categories
    expected: tuple[float, ...]  # share per bin; the last bins: [unknown,] missing

    @property
    def n_bins(self) -> int:
        """How many bins (``len(expected)``): numeric, the edges' intervals and missing;
        categorical, the categories, unknown and missing."""
        return len(self.expected)

    def bin_numeric(self, values: np.ndarray) -> np.ndarray:
        """Bin index per value: 0..len(edges) by the edges, the last bin for NaN."""
        idx = np.searchsorted(np.asarray(self.edges), values, side="right")
        idx[np.isnan(values)] = self.n_bins - 1
        return idx

    def bin_category(self, value: str | None) -> int:
        """Bin index of a category: its own, the unknown bin for an unseen one, the last for
        None (missing)."""
        if value is None:
            return self.n_bins - 1
        try:
            return self.categories.index(value)
        except ValueError:
            return self.n_bins - 2


def _shares(counts: np.ndarray) -> tuple[float, ...]:
    total = counts.sum()
    return tuple(float(c / total) if total else 0.0 for c in counts)


def build(df: pd.DataFrame) -> dict[str, FeatureProfile]:
    """The reference profile of a valid dataset: per feature, its bins (quantile edges or the
    schema's categories, plus missing and unseen) and each bin's share of the rows."""
    out: dict[str, FeatureProfile] = {}
    for f in FEATURES:
        col = df[f.name]
        if f.kind == "numeric":
            values = col.to_numpy(dtype="float64", na_value=np.nan)
            present = values[~np.isnan(values)]
            qs = np.quantile(present, np.linspace(0, 1, N_QUANTILES + 1)[1:-1])
            edges = tuple(float(e) for e in np.unique(qs))
            profile = FeatureProfile(f.name, f.kind, edges, (), (0.0,) * (len(edges) + 2))
            counts = np.bincount(profile.bin_numeric(values), minlength=profile.n_bins)
        else:
            cats = tuple(f.categories)
            profile = FeatureProfile(f.name, f.kind, (), cats, (0.0,) * (len(cats) + 2))
            values = col.astype(object).where(col.notna(), None)
            counts = np.bincount(
                [profile.bin_category(v) for v in values], minlength=profile.n_bins
            )
        out[f.name] = FeatureProfile(
            f.name, f.kind, profile.edges, profile.categories, _shares(counts)
        )
    return out


def to_dict(profiles: dict[str, FeatureProfile]) -> dict[str, Any]:
    """``profiles`` as plain JSON-able data (the inverse of ``from_dict``)."""
    return {
        name: {
            "kind": p.kind,
            "edges": list(p.edges),
            "categories": list(p.categories),
            "expected": list(p.expected),
        }
        for name, p in profiles.items()
    }


def from_dict(raw: dict[str, Any]) -> dict[str, FeatureProfile]:
    """Profiles back from ``to_dict``'s data; ``KeyError`` when a field is missing."""
    return {
        name: FeatureProfile(
            name,
            p["kind"],
            tuple(p["edges"]),
            tuple(p["categories"]),
            tuple(p["expected"]),
        )
        for name, p in raw.items()
    }


def psi(expected: tuple[float, ...] | np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of observed bin ``counts`` against ``expected`` shares (0.0
    when nothing was observed)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    value = 0.0
    for e, c in zip(expected, counts, strict=True):
        a = max(c / total, EPSILON)
        e = max(e, EPSILON)
        value += (a - e) * math.log(a / e)
    return value
