"""Disentanglement metrics of codes w.r.t. generating factors, after disentanglement_lib.

disentanglement_lib stores codes as (num_codes, num_points); here everything follows sklearn: codes (N, D),
factors (N, F) with one ``kind`` per factor (``"categorical"``, ``"continuous"`` or ``"circular"``, values in turns;
default categorical). A circular factor is regressed as its point on the unit circle (cos, sin) and scored by the
distance around it (``tables.circular_r2``); MIG bins it like a continuous factor (bins are categories, so the
wrap does not matter); SAP's score for it is the R² of a code regressed on (cos, sin).
Train/test splits are grouped by sample id so that no sample straddles them. ``disentanglement_table`` can reduce
wide features by a PCA fitted on the training rows of that split only, so no test row shapes the codes.

* DCI (Eastwood & Williams 2018): importance matrix (D, F) from per-factor gradient boosting
  (``importance="gbt"``, as disentanglement_lib) or an L1 linear model (``importance="lasso"``, fast);
  disentanglement and completeness from its normalised entropies, informativeness = held-out accuracy
  (categorical) or R² (continuous, circular). A factor contributes importance only when the model predicts it
  *significantly* better than chance on held-out rows: its score above chance (R² > 0; accuracy > the majority
  class's share) and a permutation test of the held-out predictions against ``permutations_for(F)`` shuffles of the
  held-out labels at level ``ALPHA`` / F (Bonferroni over the F factors); otherwise its importances are noise
  (LassoCV keeps a few tiny coefficients on codes unrelated to the factor when R² > 0 by luck, which the entropy
  weighting would trust fully). A column whose importance mass is below ``MIN_MASS`` of the largest column's also
  counts as none. C is NaN when no factor is predicted, D when fewer than two are (with one factor every code
  trivially serves one factor: D would be 1 for any codes).
* MIG (Chen et al. 2018): codes discretised into ``n_bins`` histogram bins; gap between the two codes with
  the highest mutual information with a factor, divided by the factor's entropy.
* SAP (Kumar et al. 2018): per (code, factor) score — squared correlation (continuous) or held-out
  accuracy of a 1-D ``LinearSVC(C=0.01, class_weight="balanced")`` (categorical); gap between the top two codes.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats
from sklearn.decomposition import PCA
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LassoCV, LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from lisa_probe.analysis.tables import KINDS, circle_points, circular_r2, iter_factors, long_table, turns_of

IMPORTANCE_MODELS = {
    ("gbt", "categorical"): lambda seed: GradientBoostingClassifier(random_state=seed),
    ("gbt", "continuous"): lambda seed: GradientBoostingRegressor(random_state=seed),
    ("lasso", "categorical"): lambda seed: make_pipeline(
        StandardScaler(), LogisticRegression(l1_ratio=1.0, C=0.1, solver="saga", max_iter=2000, random_state=seed)
    ),
    ("lasso", "continuous"): lambda seed: make_pipeline(StandardScaler(), LassoCV(cv=5, random_state=seed)),
}
IMPORTANCES = tuple(dict.fromkeys(method for method, _ in IMPORTANCE_MODELS))  # ("gbt", "lasso")
ALPHA = 0.05  # family-wise level of the informativeness tests over a DCI's factors
MIN_PERMUTATIONS = 199  # shuffles of the held-out labels per factor: at least this, and enough for ALPHA / F
MIN_MASS = 1e-3  # an importance column below this share of the largest column's is none
NEGLIGIBLE = 0.1  # a DCI disentanglement beside a completeness or informativeness below this is flagged


def reduce_features(
    X: np.ndarray, n_components: int, seed: int = 0, fit_rows: np.ndarray | None = None
) -> np.ndarray:
    """PCA of X (N, D), e.g. before DCI on wide feature maps, fitted on the rows ``fit_rows`` (indices; None: all
    rows) and applied to all rows.

    Returns:
        (N, k) components, k = min(n_components, number of fitted rows, D).
    """
    X = np.asarray(X, dtype=np.float64)
    fit = X if fit_rows is None else X[fit_rows]
    return PCA(n_components=min(n_components, *fit.shape), random_state=seed).fit(fit).transform(X)


def _kinds(kinds: Sequence[str] | None, n_factors: int) -> list[str]:
    """Per-factor kinds, all categorical by default; ValueError for a wrong count or a kind outside ``KINDS``."""
    kinds = ["categorical"] * n_factors if kinds is None else list(kinds)
    if len(kinds) != n_factors:
        raise ValueError(f"{len(kinds)} kinds for {n_factors} factors")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"factor kinds must be one of {KINDS}, got {unknown}")
    return kinds


def _columns(a: np.ndarray) -> np.ndarray:
    """(N,) or (N, F) -> (N, F)."""
    a = np.asarray(a)
    return a.reshape(len(a), -1)


def _split(groups: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grouped train/test row indices."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    return next(splitter.split(np.zeros((len(groups), 1)), groups=groups))


def histogram_discretize(a: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Discretise every column of a (N, D) into ``n_bins`` equal-width bins (disentanglement_lib's rule)."""
    a = _columns(a).astype(np.float64)
    return np.stack([np.digitize(col, np.histogram(col, n_bins)[1][:-1]) for col in a.T], axis=1)


def _discrete_factors(factors: np.ndarray, kinds: list[str], n_bins: int) -> np.ndarray:
    """Categorical factors as label indices, continuous and circular ones histogram-discretised; (N, F) ints."""
    columns = [
        np.unique(y, return_inverse=True)[1].reshape(-1) if kind == "categorical" else histogram_discretize(y, n_bins)[:, 0]
        for y, kind in zip(factors.T, kinds)
    ]
    return np.stack(columns, axis=1)


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two label vectors a, b (N,) from their contingency table: sklearn's
    ``mutual_info_score`` in plain numpy (no input validation, ~50x faster on a few hundred rows)."""
    _, a = np.unique(a, return_inverse=True)
    b_levels, b = np.unique(b, return_inverse=True)
    joint = np.bincount(a.reshape(-1) * len(b_levels) + b.reshape(-1), minlength=(a.max() + 1) * len(b_levels))
    joint = joint.reshape(-1, len(b_levels)) / len(a)
    outer = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    held = joint > 0
    return max(float(np.sum(joint[held] * (np.log(joint[held]) - np.log(outer[held])))), 0.0)


def mig_per_factor(
    codes: np.ndarray, factors: np.ndarray, kinds: Sequence[str] | None = None, n_bins: int = 20
) -> np.ndarray:
    """Mutual information gap per factor.

    Args:
        codes: (N, D) with D >= 2.
        factors: (N, F).
        kinds: per-factor kind; continuous factors are discretised like the codes.
        n_bins: histogram bins for the codes.

    Returns:
        (F,) (MI(top code) − MI(second code)) / H(factor), in [0, 1]; NaN for a constant factor.
    """
    codes, factors = _columns(codes), _columns(factors)
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two codes")
    c, y = histogram_discretize(codes, n_bins), _discrete_factors(factors, _kinds(kinds, factors.shape[1]), n_bins)
    mi = np.array([[mutual_information(y_j, c_i) for y_j in y.T] for c_i in c.T])
    entropy = np.array([mutual_information(y_j, y_j) for y_j in y.T])
    top = np.sort(mi, axis=0)[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (top[0] - top[1]) / entropy


def mig(codes: np.ndarray, factors: np.ndarray, kinds: Sequence[str] | None = None, n_bins: int = 20) -> float:
    """Mean over factors of ``mig_per_factor``."""
    return float(np.mean(mig_per_factor(codes, factors, kinds, n_bins)))


def _sap_score(code: np.ndarray, y: np.ndarray, kind: str, train: np.ndarray, test: np.ndarray) -> float:
    """SAP score of one code (N,) for one factor (N,)."""
    if kind == "circular":  # R² of the code regressed on the factor's point on the circle
        design = np.column_stack([circle_points(y), np.ones(len(y))])
        residual = code - design @ np.linalg.lstsq(design, code, rcond=None)[0]
        spread = float(np.sum((code - code.mean()) ** 2))
        return 1.0 - float(np.sum(residual**2)) / spread if spread > 1e-12 else 0.0
    if kind == "continuous":
        cov = np.cov(code, y, ddof=1)
        return float(cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])) if cov[0, 0] > 1e-12 else 0.0
    svm = LinearSVC(C=0.01, class_weight="balanced").fit(code[train, None], y[train])
    return float(np.mean(svm.predict(code[test, None]) == y[test]))


def sap_per_factor(
    codes: np.ndarray,
    factors: np.ndarray,
    groups: np.ndarray,
    kinds: Sequence[str] | None = None,
    test_size: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """SAP gap per factor: score of the best code minus that of the second best.

    Args:
        codes: (N, D) with D >= 2; factors: (N, F); groups: (N,) sample ids for the grouped train/test split
        (used by categorical factors; continuous scores use all rows).

    Returns:
        (F,) gaps in [0, 1].
    """
    codes, factors = _columns(codes).astype(np.float64), _columns(factors)
    if codes.shape[1] < 2:
        raise ValueError("SAP needs at least two codes")
    train, test = _split(np.asarray(groups), test_size, seed)
    kinds = _kinds(kinds, factors.shape[1])
    scores = np.array(
        [[_sap_score(code, y, kind, train, test) for y, kind in zip(factors.T, kinds)] for code in codes.T]
    )
    top = np.sort(scores, axis=0)[::-1]
    return top[0] - top[1]


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    groups: np.ndarray,
    kinds: Sequence[str] | None = None,
    test_size: float = 0.3,
    seed: int = 0,
) -> float:
    """Mean over factors of ``sap_per_factor``."""
    return float(np.mean(sap_per_factor(codes, factors, groups, kinds, test_size, seed)))


def _one_minus_entropy_per_row(importance: np.ndarray) -> np.ndarray:
    """1 − H(row / row sum) / log(number of columns), for every row of a (R, C) non-negative matrix."""
    return 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])


def _weighted_row_score(importance: np.ndarray) -> float:
    """Rows' ``1 − normalised entropy`` weighted by their share of the total importance (uniform if all zero)."""
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(_one_minus_entropy_per_row(importance) * weights.sum(axis=1) / weights.sum()))


def dci_disentanglement(importance: np.ndarray) -> float:
    """DCI disentanglement of an importance matrix (D codes, F factors), F >= 2: does each code serve one factor."""
    return _weighted_row_score(np.asarray(importance, dtype=np.float64))


def dci_completeness(importance: np.ndarray) -> float:
    """DCI completeness of an importance matrix (D codes, F factors), D >= 2: is each factor held by one code."""
    return _weighted_row_score(np.asarray(importance, dtype=np.float64).T)


@dataclass
class DCIResult:
    """DCI scores; ``importance`` is (D, F), the per-factor arrays are (F,)."""

    disentanglement: float
    completeness: float
    informativeness: float
    importance: np.ndarray
    completeness_per_factor: np.ndarray
    informativeness_per_factor: np.ndarray


def _feature_importance(model) -> np.ndarray:
    """Non-negative importance per input of a fitted tree ensemble or (pipeline ending in a) linear model."""
    estimator = model[-1] if hasattr(model, "steps") else model
    if hasattr(estimator, "feature_importances_"):
        return np.abs(estimator.feature_importances_)
    return np.abs(np.atleast_2d(estimator.coef_)).mean(axis=0)


def _fit_factor(codes: np.ndarray, y: np.ndarray, kind: str, importance: str, train: np.ndarray, test: np.ndarray,
                seed: int, permutations: int = MIN_PERMUTATIONS) -> tuple[np.ndarray, float, float, float]:
    """(importance (D,), held-out score, its chance level, permutation p-value of the score) of one factor's model:
    accuracy vs the majority class's share (categorical), R² vs 0 (continuous), ``circular_r2`` vs 0 of one
    regressor per coordinate of the point on the circle, importances averaged (circular). The p-value compares the
    score of the held-out predictions with their scores against ``permutations`` seeded shuffles of the held-out
    labels (no refit: it tests whether these predictions carry the factor)."""
    if kind == "circular":
        models = [IMPORTANCE_MODELS[importance, "continuous"](seed).fit(codes[train], target[train])
                  for target in circle_points(y).T]
        predicted = turns_of(np.column_stack([model.predict(codes[test]) for model in models]))
        weights = np.mean([_feature_importance(model) for model in models], axis=0)
        score, chance = circular_r2, 0.0
    else:
        model = IMPORTANCE_MODELS[importance, kind](seed).fit(codes[train], y[train])
        predicted, weights = model.predict(codes[test]), _feature_importance(model)
        if kind == "categorical":
            _, counts = np.unique(y[train], return_counts=True)
            chance = float(np.mean(y[test] == np.unique(y[train])[np.argmax(counts)]))
            def score(truth, guess): return float(np.mean(truth == guess))
        else:
            chance = 0.0
            def score(truth, guess): return float(1 - np.sum((truth - guess) ** 2) / np.sum((truth - truth.mean()) ** 2))
    observed = score(y[test], predicted)
    rng = np.random.default_rng(seed)
    shuffled = [score(rng.permutation(y[test]), predicted) for _ in range(permutations)]
    p_value = (1 + sum(value >= observed for value in shuffled)) / (1 + permutations)
    return weights, observed, chance, float(p_value)


def permutations_for(n_factors: int) -> int:
    """Shuffles per factor test: enough that the smallest p-value is half the Bonferroni level ``ALPHA / F``."""
    return max(MIN_PERMUTATIONS, int(np.ceil(2 * n_factors / ALPHA)) - 1)


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    groups: np.ndarray,
    kinds: Sequence[str] | None = None,
    importance: str = "gbt",
    test_size: float = 0.3,
    seed: int = 0,
) -> DCIResult:
    """DCI of codes (N, D) w.r.t. factors (N, F), one model per factor fit on a grouped train split.

    Args:
        groups: (N,) sample ids for the train/test split.
        kinds: per-factor kind: classifier + accuracy (categorical), regressor + R² (continuous) or two regressors
            of the point on the circle + ``circular_r2`` (circular).
        importance: ``"gbt"`` (gradient boosting feature importances, as disentanglement_lib; slow on wide
            codes — see ``reduce_features``) or ``"lasso"`` (|coefficients| of an L1 logistic regression /
            ``LassoCV`` on standardised codes).

    Returns:
        ``DCIResult``; ``informativeness`` is the mean of the per-factor held-out scores; completeness is NaN when
        no factor is predicted significantly better than chance, disentanglement when fewer than two are (module
        docstring).
    """
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    codes, factors = _columns(codes).astype(np.float64), _columns(factors)
    train, test = _split(np.asarray(groups), test_size, seed)
    kinds = _kinds(kinds, factors.shape[1])
    matrix, scores = np.zeros((codes.shape[1], factors.shape[1])), np.zeros(factors.shape[1])
    for j, (y, kind) in enumerate(zip(factors.T, kinds)):
        matrix[:, j], scores[j], chance, p_value = _fit_factor(codes, y, kind, importance, train, test, seed,
                                                               permutations_for(factors.shape[1]))
        if scores[j] <= chance or p_value > ALPHA / factors.shape[1]:
            matrix[:, j] = 0.0
    mass = matrix.sum(axis=0)
    matrix[:, mass < MIN_MASS * mass.max()] = 0.0
    predicted = int((matrix.sum(axis=0) > 0).sum())
    return DCIResult(
        disentanglement=dci_disentanglement(matrix) if predicted >= 2 else float("nan"),
        completeness=dci_completeness(matrix) if predicted else float("nan"),
        informativeness=float(scores.mean()),
        importance=matrix,
        completeness_per_factor=np.where(matrix.sum(axis=0) > 0, _one_minus_entropy_per_row(matrix.T), np.nan),
        informativeness_per_factor=scores,
    )


def disentanglement_table(
    codes: np.ndarray,
    factors: Mapping[str, tuple],
    groups: np.ndarray,
    importance: str = "gbt",
    n_bins: int = 20,
    test_size: float = 0.3,
    seed: int = 0,
    pca_components: int | None = None,
    **ids,
) -> pd.DataFrame:
    """DCI, MIG and SAP of codes (N, D) for ``factors = {name: (y (N,), kind, carried)}`` as a long table.

    ``pca_components``: first reduce the codes to this many PCA components (``reduce_features``), fitted on the
    training rows of the grouped split that DCI and SAP use (the same ``groups``, ``test_size`` and ``seed``), so
    their held-out rows do not shape the codes; None: use the codes as given.

    Returns:
        long table with columns ``[*ids, method, factor, kind, carried, flag, metric, value]``. Per-factor rows
        (method ``dci`` metrics ``completeness, informativeness``; ``mig`` metric ``mig``; ``sap`` metric
        ``sap``) carry the factor's name, kind and carried flag; aggregate rows have ``factor="all"``, empty
        kind/carried and add ``dci``/``disentanglement``. ``flag`` says why a value should not be read (empty:
        nothing): ``undefined`` (NaN), and on DCI's disentanglement ``negligible completeness`` /
        ``negligible informativeness`` when that aggregate is below ``NEGLIGIBLE`` — a D of 1.0 from codes that
        hold almost none of the factors says nothing.
    """
    names, ys, kinds, carried = zip(*iter_factors(factors))
    y = np.column_stack(ys)
    if pca_components is not None:
        train, _ = _split(np.asarray(groups), test_size, seed)
        codes = reduce_features(codes, pca_components, seed, fit_rows=train)
    result = dci(codes, y, groups, kinds, importance, test_size, seed)
    per_factor = {
        ("dci", "completeness"): result.completeness_per_factor,
        ("dci", "informativeness"): result.informativeness_per_factor,
        ("mig", "mig"): mig_per_factor(codes, y, kinds, n_bins),
        ("sap", "sap"): sap_per_factor(codes, y, groups, kinds, test_size, seed),
    }
    aggregate = {
        ("dci", "disentanglement"): result.disentanglement,
        ("dci", "completeness"): result.completeness,
        ("dci", "informativeness"): result.informativeness,
        ("mig", "mig"): float(np.mean(per_factor["mig", "mig"])),
        ("sap", "sap"): float(np.mean(per_factor["sap", "sap"])),
    }
    rows = [
        {"method": method, "factor": name, "kind": kind, "carried": flag, "metric": metric, "value": values[j]}
        for (method, metric), values in per_factor.items()
        for j, (name, kind, flag) in enumerate(zip(names, kinds, carried))
    ]
    rows += [
        {"method": method, "factor": "all", "kind": None, "carried": None, "metric": metric, "value": value}
        for (method, metric), value in aggregate.items()
    ]
    for row in rows:
        row["flag"] = "undefined" if not np.isfinite(row["value"]) else ""
        if row["metric"] == "disentanglement" and not row["flag"]:
            row["flag"] = ", ".join(f"negligible {name}" for name in ("completeness", "informativeness")
                                    if aggregate["dci", name] < NEGLIGIBLE)
    return long_table(rows, **ids)
