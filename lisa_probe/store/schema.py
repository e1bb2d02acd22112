"""Feature store schema, version "1": dataset names, dtypes, root attributes and their validation.

A store holds one row per (sample, timestep, noise draw); every dataset is row-aligned, shape ``(n_rows, *row_shape)``:

====================== ============== ============================================================
name                   dtype          row shape / meaning
====================== ============== ============================================================
meta/sample_id         str | S<n>     ``()`` sample id (variable-length utf-8, or fixed ascii bytes)
meta/prompt            str            optional ``()``: the prompt the row's text conditioning encodes ("" for the
                                            empty prompt), in stores of text-conditioned extractions
meta/t                 float32        ``()`` timestep value as fed to the model
meta/noise_level       float32        ``()`` sigma of the noise draw
meta/draw              int32          ``()`` index of the noise draw
meta/step              int64          optional ``()``: the training step of the checkpoint the row was extracted from
                                            (``extract --checkpoints``: one block of rows per checkpoint)
meta/factors/<name>    float32|int64  ``()``; attrs ``kind`` ("categorical"|"continuous"), ``carried`` (bool),
                                            ``period`` (float, circular continuous factors only: the value at
                                            which it wraps to 0, e.g. 1.0 for rotation and hue), ``levels``
                                            (categorical factors the data names: class i is ``levels[i]``)
features/<site>        float16|32     ``(C, H, W)`` or ``(N, D)`` tokens: hooked side-net feature
residuals/<site>       float16|32     optional: the residual the site adds to the main net
scores/target          float32        ``(C, H, W)`` training target y
scores/main            float32        ``(C, H, W)`` main net alone
scores/full            float32        ``(C, H, W)`` main + side
scores/decoded         float32        ``(C, H, W)`` optional: LISA decoder output
decompose/<site>       float32        ``(C, H, W)`` optional: prediction with only that site's gate open
====================== ============== ============================================================

Root attributes: ``schema_version``, ``config`` and ``extract_args`` (canonical JSON strings), ``checkpoint``,
``checkpoint_hash``, ``code_version``, ``parameterization`` ("eps"|"v"|"flow"), optional ``inputs`` (JSON: how
every row's inputs and target are made, ``extraction.input_recipe``: row order, split and ids, resolution,
preprocessing, timestep values, noise, x0 / x_t / target formulas, condition, context and prompts per text layout,
what each ``sha256`` covers, paths, the onset probe's conventions), optional ``factor_sources`` (JSON: where
factors added after extraction came from, ``store.factors``), any extra scalar attrs of the caller, and the writer's bookkeeping: ``n_rows``, ``rows_done``, ``complete``, ``layout`` (JSON of the fields, in
order) and, for shards, ``shard_rank`` / ``shard_world_size``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = "1"
PARAMETERIZATIONS = ("eps", "v", "flow")
COMPRESSIONS = ("none", "lzf", "gzip")
FACTOR_KINDS = ("categorical", "continuous")
REQUIRED_ATTRS = ("config", "checkpoint", "checkpoint_hash", "code_version", "parameterization", "extract_args")
JSON_ATTRS = ("config", "extract_args", "inputs")  # "inputs": how a row's model inputs are made (optional)
SHARD_ATTRS = ("shard_rank", "shard_world_size")
BOOKKEEPING_ATTRS = ("schema_version", "n_rows", "rows_done", "complete", "layout", *SHARD_ATTRS)
META_COLUMNS = ("sample_id", "t", "noise_level", "draw", "prompt", "step")
STRING_META = ("meta/sample_id", "meta/prompt")
REQUIRED_FIELDS = ("meta/sample_id", "meta/t", "meta/noise_level", "meta/draw", "scores/target", "scores/main",
                   "scores/full")
STRING = "str"
_FIXED = {"meta/t": "float32", "meta/noise_level": "float32", "meta/draw": "int32", "meta/step": "int64", "scores/target": "float32",
          "scores/main": "float32", "scores/full": "float32", "scores/decoded": "float32"}
_GROUP_DTYPES = {"meta/factors": ("float32", "int64"), "features": ("float16", "float32"),
                 "residuals": ("float16", "float32"), "decompose": ("float32",)}
_NAME = re.compile(r"^(meta/factors|features|residuals|decompose)/([^/]+)$")


@dataclass(frozen=True)
class Field:
    """One row-aligned dataset: per-row ``shape``, ``dtype`` ("str" = variable-length utf-8, else a numpy dtype
    name such as "float16" or "|S16") and dataset ``attrs``."""

    shape: tuple[int, ...]
    dtype: str
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def h5_dtype(self) -> Any:
        """The dtype to create the HDF5 dataset with."""
        return h5py.string_dtype("utf-8") if self.dtype == STRING else np.dtype(self.dtype)

    @property
    def is_string(self) -> bool:
        """True for sample-id style string fields (variable-length or fixed bytes)."""
        return self.dtype == STRING or np.dtype(self.dtype).kind == "S"

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row in memory (16 for a variable-length string pointer)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.h5_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        """JSON-able form stored in the ``layout`` root attribute."""
        return {"shape": list(self.shape), "dtype": self.dtype, "attrs": dict(self.attrs)}


def dtype_name(dtype: Any) -> str:
    """Canonical dtype string: "str" for ``str``/"str"/h5py string dtypes, "|S<n>" for fixed bytes, else the
    numpy name ("float16", "int64", …)."""
    if dtype is str or (isinstance(dtype, str) and dtype == STRING):
        return STRING
    dtype = np.dtype(dtype)
    if dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None:
        return STRING
    return dtype.str if dtype.kind == "S" else dtype.name


def as_field(spec: Field | Sequence[Any]) -> Field:
    """Normalise ``Field`` or ``(shape, dtype)`` or ``(shape, dtype, attrs)`` to a ``Field``."""
    if isinstance(spec, Field):
        return Field(tuple(int(s) for s in spec.shape), dtype_name(spec.dtype), dict(spec.attrs))
    shape, dtype, *rest = spec
    return Field(tuple(int(s) for s in shape), dtype_name(dtype), dict(rest[0]) if rest else {})


def _expected_dtypes(name: str) -> tuple[str, ...]:
    """Allowed dtypes for a dataset name; raises ValueError for names outside the schema."""
    if name in _FIXED:
        return (_FIXED[name],)
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"dataset {name!r} is not part of feature store schema {SCHEMA_VERSION}")
    return _GROUP_DTYPES[match.group(1)]


def _check_field(name: str, fld: Field, score_shape: tuple[int, ...]) -> None:
    """Check one field's dtype, row shape and attrs against the schema."""
    if name in STRING_META:
        if not fld.is_string or fld.shape != ():
            raise ValueError(f"{name} must be a per-row string: dtype 'str' or '|S<n>', shape ()")
        return
    if fld.dtype not in _expected_dtypes(name):
        raise ValueError(f"{name}: dtype {fld.dtype} not allowed (expected one of {_expected_dtypes(name)})")
    if name.startswith("meta/") and fld.shape != ():
        raise ValueError(f"{name}: meta fields hold one scalar per row, got row shape {fld.shape}")
    if name.startswith(("scores/", "decompose/")) and fld.shape != score_shape:
        raise ValueError(f"{name}: row shape {fld.shape} differs from scores/target's {score_shape}")
    if name.startswith("meta/factors/"):
        _check_factor(name, fld)


def _check_factor(name: str, fld: Field) -> None:
    """A factor needs attrs kind in FACTOR_KINDS and a bool ``carried``; its name must not shadow a meta column."""
    if name.rsplit("/", 1)[1] in META_COLUMNS:
        raise ValueError(f"{name}: factor name clashes with meta column {name.rsplit('/', 1)[1]!r}")
    if fld.attrs.get("kind") not in FACTOR_KINDS or not isinstance(fld.attrs.get("carried"), (bool, np.bool_)):
        raise ValueError(f"{name}: attrs need kind in {FACTOR_KINDS} and a bool 'carried', got {dict(fld.attrs)}")
    period = fld.attrs.get("period")
    if period is not None and (fld.attrs["kind"] != "continuous" or not float(period) > 0
                               or not np.isfinite(float(period))):
        raise ValueError(f"{name}: 'period' must be a positive finite number on a continuous factor, got {period!r}")


def validate_layout(layout: Mapping[str, Field | Sequence[Any]]) -> dict[str, Field]:
    """Normalise and validate a layout ``{dataset name: (row_shape, dtype[, attrs])}``; returns ``{name: Field}``.

    Raises ValueError for missing required datasets, names outside the schema, wrong dtypes or row shapes.
    """
    fields = {name: as_field(spec) for name, spec in layout.items()}
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing or not any(name.startswith("features/") for name in fields):
        raise ValueError(f"layout lacks required datasets {missing or ['features/<site>']}")
    score_shape = fields["scores/target"].shape
    if len(score_shape) != 3:
        raise ValueError(f"scores/target rows must be (C, H, W), got {score_shape}")
    for name, fld in fields.items():
        _check_field(name, fld, score_shape)
    return fields


def make_layout(
    feature_shapes: Mapping[str, Sequence[int]],
    score_shape: Sequence[int],
    factors: Mapping[str, Mapping[str, Any]],
    *,
    residual_shapes: Mapping[str, Sequence[int]] | None = None,
    decoded: bool = False,
    decompose_sites: Sequence[str] = (),
    feature_dtype: str = "float16",
    sample_id_dtype: Any = STRING,
    prompts: bool = False,
    steps: bool = False,
) -> dict[str, Field]:
    """Build a full schema layout.

    ``feature_shapes``: ``{site: (C, H, W) or (N, D)}``; ``score_shape``: ``(C, H, W)`` of a prediction;
    ``factors``: ``{name: {"kind": "categorical"|"continuous", "carried": bool[, "period": float][, "levels":
    [str]]}}`` (categorical -> int64, continuous -> float32; ``period`` for a circular continuous factor; ``levels``:
    a categorical factor's class names); ``residual_shapes`` adds ``residuals/<site>``; ``decoded`` adds ``scores/decoded``;
    ``decompose_sites`` adds ``decompose/<site>``; ``prompts`` adds ``meta/prompt``; ``steps`` adds ``meta/step``.
    """
    layout = {"meta/sample_id": Field((), dtype_name(sample_id_dtype)), "meta/t": Field((), "float32"),
              "meta/noise_level": Field((), "float32"), "meta/draw": Field((), "int32")}
    if prompts:
        layout["meta/prompt"] = Field((), STRING)
    if steps:
        layout["meta/step"] = Field((), "int64")
    for name, spec in factors.items():
        dtype = "int64" if spec["kind"] == "categorical" else "float32"
        attrs = {"kind": spec["kind"], "carried": bool(spec["carried"])}
        if spec.get("period") is not None:
            attrs["period"] = float(spec["period"])
        if spec.get("levels") is not None:
            attrs["levels"] = [str(level) for level in spec["levels"]]
        layout[f"meta/factors/{name}"] = Field((), dtype, attrs)
    layout.update({f"features/{site}": Field(tuple(shape), feature_dtype) for site, shape in feature_shapes.items()})
    layout.update({f"residuals/{site}": Field(tuple(shape), feature_dtype)
                   for site, shape in (residual_shapes or {}).items()})
    scores = ["target", "main", "full"] + (["decoded"] if decoded else [])
    layout.update({f"scores/{kind}": Field(tuple(score_shape), "float32") for kind in scores})
    layout.update({f"decompose/{site}": Field(tuple(score_shape), "float32") for site in decompose_sites})
    return validate_layout(layout)


def layout_to_json(fields: Mapping[str, Field]) -> str:
    """Serialise fields (order kept) for the ``layout`` root attribute."""
    return json.dumps({name: fld.to_json() for name, fld in fields.items()})


def layout_from_json(text: str) -> dict[str, Field]:
    """Inverse of ``layout_to_json``."""
    return {name: Field(tuple(spec["shape"]), spec["dtype"], spec["attrs"]) for name, spec in json.loads(text).items()}


def canonical_json(value: Any) -> str:
    """Canonical JSON string of a JSON-able value or of a JSON string (sorted keys), so equal configs compare equal."""
    return json.dumps(json.loads(value) if isinstance(value, str) else value, sort_keys=True)


def user_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the caller's root attrs and return them as HDF5-ready values (JSON attrs canonicalised).

    Requires every key of REQUIRED_ATTRS; bookkeeping keys are reserved; extra keys must be str/int/float/bool.
    """
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    reserved = [key for key in attrs if key in BOOKKEEPING_ATTRS]
    if missing or reserved:
        raise ValueError(f"store attrs: missing {missing}, reserved (set by the writer) {reserved}")
    if attrs["parameterization"] not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {attrs['parameterization']!r}")
    out = {}
    for key, value in attrs.items():
        if key in JSON_ATTRS:
            value = canonical_json(value)
        elif not isinstance(value, (str, int, float, bool, np.generic)):
            raise ValueError(f"store attr {key!r} must be a str/int/float/bool, got {type(value).__name__}")
        out[key] = value
    return out


def json_diff_keys(a: str, b: str) -> list[str]:
    """Top-level keys whose values differ between two JSON object strings (empty if the strings are equal)."""
    left, right = json.loads(a), json.loads(b)
    if not (isinstance(left, dict) and isinstance(right, dict)):
        return [] if left == right else ["<value>"]
    return sorted(key for key in left.keys() | right.keys() if left.get(key, object()) != right.get(key, object()))
