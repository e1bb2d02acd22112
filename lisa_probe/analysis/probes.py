"""Linear probes of generating factors, each beside a control task after Hewitt & Liang (2019).

A probe reads one factor from pooled features X (N, D) under grouped cross-validation (all rows of a
sample — its timesteps and noise draws — stay on one side). Its control task gives every sample a random
label drawn from the factor's own values, shared by all the sample's rows.

What the control measures here: Hewitt & Liang's control labels word *types*, which recur in train and test,
so a probe that memorises types scores high on it. With folds grouped by sample, a test sample's control
label is never seen in training, and its features carry no information about that independent draw, so no
probe — not even one on features that identify every sample — beats chance on it. The control score is
therefore the chance level of a probe with the factor's label (or value) distribution (categorical: about
the share of the classes it predicts; continuous: R² ≈ 0 or below), and selectivity = task − control is the
task score above that chance baseline. It does not measure, or subtract, the probe's capacity to memorise.
"""

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lisa_probe.analysis.tables import circle_points, circular_r2, iter_factors, long_table, turns_of

PROBE_ALPHAS = np.logspace(-3, 3, 7)
#: kind -> (method name, score name)
PROBE_NAMES = {"categorical": ("logistic", "accuracy"), "continuous": ("ridge", "r2"),
               "circular": ("ridge_circular", "circular_r2")}


def _probe(kind: str) -> Pipeline:
    """Standardised features followed by a logistic (categorical) or ridge (continuous; circular: of the point on
    the unit circle) readout."""
    head = LogisticRegression(max_iter=2000) if kind == "categorical" else RidgeCV(alphas=PROBE_ALPHAS)
    return make_pipeline(StandardScaler(), head)


def probe_factor(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str = "categorical", n_splits: int = 5, seed: int = 0
) -> float:
    """Out-of-fold score of a linear probe of factor y (N,) from features X (N, D).

    Folds: ``GroupKFold(n_splits, shuffle=True, random_state=seed)`` over ``groups`` (N,).

    Returns:
        accuracy of ``LogisticRegression`` (``kind="categorical"``), R² of ``RidgeCV`` (``kind="continuous"``) or,
        for a circular factor (values in turns), ``circular_r2`` of the angle of a ``RidgeCV`` fit to the factor's
        point on the unit circle; pooled over all out-of-fold predictions.
    """
    cv = GroupKFold(n_splits, shuffle=True, random_state=seed)
    y, X = np.asarray(y), np.asarray(X, dtype=np.float64)
    if kind == "circular":
        points = cross_val_predict(_probe(kind), X, circle_points(y), groups=groups, cv=cv)
        return circular_r2(y, turns_of(points))
    pred = cross_val_predict(_probe(kind), X, y, groups=groups, cv=cv)
    return float(accuracy_score(y, pred) if kind == "categorical" else r2_score(y, pred))


def control_task_labels(y: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Control task after Hewitt & Liang: one random label per sample group, shared by all its rows.

    Each group's label is drawn independently from the empirical distribution of ``y`` (N,) over rows,
    so the control keeps the label (or value) distribution of the task and is independent of everything
    else. Under folds grouped by the same ``groups`` (``probe_factor``) a held-out group's label is never
    seen in training, so a probe of it scores at chance (see the module docstring). Works alike for
    categorical and continuous factors.

    Returns:
        (N,) array of ``y``'s dtype, constant within each group.
    """
    y = np.asarray(y)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.reshape(-1)
    draws = np.random.default_rng(seed).choice(y, size=inverse.max() + 1, replace=True)
    return draws[inverse]


def probe_with_selectivity(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str = "categorical", n_splits: int = 5, seed: int = 0
) -> dict[str, float]:
    """``probe_factor`` on the task and on ``control_task_labels(y, groups, seed)``.

    With folds grouped by sample the control score is the chance level of a probe with ``y``'s label
    distribution, whatever X holds, so ``selectivity`` is the task score above chance.

    Returns:
        ``{"task": score, "control": chance-level control score, "selectivity": task − control}``.
    """
    task = probe_factor(X, y, groups, kind, n_splits, seed)
    control = probe_factor(X, control_task_labels(y, groups, seed), groups, kind, n_splits, seed)
    return {"task": task, "control": control, "selectivity": task - control}


def probe_table(
    X: np.ndarray, factors: Mapping[str, tuple], groups: np.ndarray, n_splits: int = 5, seed: int = 0, **ids
) -> pd.DataFrame:
    """Probe every factor with its control task.

    Args:
        X: (N, D) pooled features.
        factors: ``{name: (y (N,), kind, carried)}``.
        groups: (N,) sample ids.

    Returns:
        long table with columns ``[*ids, method, factor, kind, carried, score, metric, value]``: method
        ``logistic`` / ``ridge``, score ``accuracy`` / ``r2``, metric in {``task``, ``control``, ``selectivity``}.
    """
    rows = []
    for name, y, kind, carried in iter_factors(factors):
        method, score = PROBE_NAMES[kind]
        result = probe_with_selectivity(X, y, groups, kind, n_splits, seed)
        common = {"method": method, "factor": name, "kind": kind, "carried": carried, "score": score}
        rows += [{**common, "metric": metric, "value": value} for metric, value in result.items()]
    return long_table(rows, **ids)


def carried_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Contrast factors the condition carries with those it does not, in any table with a ``carried`` column.

    Rows whose ``carried`` is missing (e.g. aggregates over all factors) are ignored. Values are averaged
    over factors within every combination of the remaining columns (other than ``factor`` and ``kind``).

    Returns:
        long table with the grouping columns, ``contrast`` in {``carried``, ``not_carried``,
        ``carried_minus_not``} and ``value`` (NaN where one side has no factor); ``n_factors`` counts the
        factors averaged (for the difference: the smaller side).
    """
    per_factor = table[table["carried"].notna()]
    keys = [c for c in table.columns if c not in ("factor", "kind", "carried", "value")]

    def side(flag: bool) -> pd.DataFrame:
        rows = per_factor[per_factor["carried"].astype(bool) == flag]
        return rows.groupby(keys, dropna=False, sort=False)["value"].agg(value="mean", n_factors="size")

    carried, not_carried = side(True).align(side(False), join="outer")
    carried["n_factors"], not_carried["n_factors"] = carried["n_factors"].fillna(0), not_carried["n_factors"].fillna(0)
    difference = carried - not_carried
    difference["n_factors"] = np.minimum(carried["n_factors"], not_carried["n_factors"])
    contrasts = {"carried": carried, "not_carried": not_carried, "carried_minus_not": difference}
    summary = pd.concat(contrasts, names=["contrast"]).reset_index().astype({"n_factors": int})
    return summary[[*keys, "contrast", "value", "n_factors"]]
