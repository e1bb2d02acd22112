"""The analysis tables of a run (``TABLES``), each in long form: alignment, probes, carried summary,
disentanglement, embedding, decomposition (from the store and from the reloaded model), training curves."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from lisa_probe.analysis.alignment import (
    DecoderAlignmentSums,
    fold_half,
    readout_table,
)
from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.disentanglement import reduce_features
from lisa_probe.analysis.embedding import embedding_table, umap_embed
from lisa_probe.analysis.factor_tables import factor_tables
from lisa_probe.analysis.plots import (
    Figures,
    plot_umap_grid,
)
from lisa_probe.analysis.probes import carried_summary
from lisa_probe.analysis.report.attribution import attribution_table
from lisa_probe.analysis.report.inputs import rebuild_inputs
from lisa_probe.analysis.report.selection import Run, arm_names, checkpoint_dirs, side_net_dir
from lisa_probe.analysis.report.streaming import CONTROLS, ESTIMATES, Streamed, stream_run
from lisa_probe.analysis.report.timing import StageTimes
from lisa_probe.analysis.tables import long_table
from lisa_probe.causal.run import run_analyses, store_source
from lisa_probe.generation.setup import prepare
from lisa_probe.models.dual_branch import middle_site
from lisa_probe.provenance import file_digest
from lisa_probe.rundir import EVAL_FILE, read_eval, read_summary
from lisa_probe.training.loading import load_run

TABLES = ("alignment", "probes", "carried_summary", "disentanglement", "embedding", "decomposition", "training")


FACTOR_COLUMNS = ["method", "factor", "kind", "carried"]


EMPTY_COLUMNS = {  # columns of a table no run has rows for
    "probes": ["run", "site", "t", "t_bin", *FACTOR_COLUMNS, "score", "metric", "value"],
    "disentanglement": ["run", "site", "t", "t_bin", *FACTOR_COLUMNS, "flag", "metric", "value"],
    "embedding": ["run", "site", *FACTOR_COLUMNS, "metric", "value"],
    "decomposition": ["run", "source", "objective", "t", "t_bin", "method", "example", "site", "metric", "value"],
    "training": ["run", "step", "metric", "value"],
}


def _ids(run: Run, site: str | None, b: int, t: float, estimate: str) -> dict:
    return {"run": run.label, "site": site, "t": t, "t_bin": b, "estimate": estimate}


def alignment_table(run: Run, streamed: Streamed, options: AnalyzeOptions) -> pd.DataFrame:
    """Long table ``[run, site, t, t_bin, estimate, method, control, metric, value]``: methods ``ridge`` and ``cka``
    (debiased: few samples per bin; pooled features vs the coarse estimate, ``readout_table``), ``spatial_ridge`` and
    ``decoder`` (streamed).
    An estimate that is zero on every row (an untrained side net adds nothing: full = main) is left out, with a note.
    """
    estimates = [estimate for estimate in ESTIMATES if np.any(streamed.coarse[estimate])]
    run.notes += [f"the {estimate} estimate is zero on every row: no alignment with it"
                  for estimate in ESTIMATES if estimate not in estimates]
    tables = []
    for (b, t, rows), estimate in product(run.bins(), estimates):
        for site in run.sites:
            tables.append(readout_table(streamed.pooled[site][rows], streamed.coarse[estimate][rows],
                                        run.groups[rows], n_splits=options.n_splits, debiased=True,
                                        seed=options.seed, **_ids(run, site, b, t, estimate)))
            if (site, b, estimate, "none") in streamed.spatial:
                measured = []
                for control in CONTROLS:
                    value, folds = streamed.spatial[site, b, estimate, control].cv_r2_folds()
                    measured.append({"method": "spatial_ridge", "control": control, "metric": "r2", "value": value,
                                     "half": fold_half(folds)})
                tables.append(long_table(measured, **_ids(run, site, b, t, estimate)))
        if streamed.decoder:
            measured = [{"method": "decoder", "control": control, **row}
                        for control in CONTROLS for row in decoder_rows(streamed.decoder, b, estimate, control)]
            tables.append(long_table(measured, **_ids(run, run.lisa_site, b, t, estimate)))
    return pd.concat(tables, ignore_index=True)


def decoder_rows(sums: Mapping[tuple, DecoderAlignmentSums], b: int, estimate: str, control: str) -> list[dict]:
    """``[{metric, value, half}]`` of the decoder alignment in bin ``b``: the metrics of all folds' rows together,
    and ``fold_half`` of each fold's."""
    folds = [part for key, part in sums.items() if key[:3] == (b, estimate, control)]
    whole = DecoderAlignmentSums()
    for part in folds:
        whole.add(part)
    by_fold = [part.metrics() for part in folds]
    return [{"metric": metric, "value": value, "half": fold_half(np.array([m[metric] for m in by_fold]))}
            for metric, value in whole.metrics().items()]


def disentanglement_tables(run: Run, streamed: Streamed, options: AnalyzeOptions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(probe_table, disentanglement_table)`` rows of every site and timestep bin, on pooled features (DCI / MIG /
    SAP after a PCA to ``pca_components`` fitted on the training rows of their split): ``factor_tables`` of each,
    on ``--jobs`` worker processes (each fit is seeded: the tables do not depend on the number of jobs; the workers
    import only ``analysis.factor_tables`` and what it needs, not torch)."""
    work = [delayed(factor_tables)(streamed.pooled[site][rows], run.factors(rows), run.groups[rows], options,
                                   run=run.label, site=site, t=t, t_bin=b)
            for site, (b, t, rows) in product(run.sites, run.bins())]
    results = Parallel(n_jobs=options.jobs, return_as="generator")(work)
    probes, codes = zip(*tqdm(results, total=len(work), desc=f"{run.label}: probes, DCI", unit="site·bin"))
    return pd.concat(probes, ignore_index=True), pd.concat(codes, ignore_index=True)


@cache
def umap_warmup() -> threading.Thread:
    """A background thread (started once per process) that embeds 64 random points with UMAP, compiling its numba
    functions (~10 s on one core). Started while the probes run in worker processes, where this process only waits,
    it takes the compilation off the critical path; ``embed`` joins it before the first real embedding."""
    points = np.random.default_rng(0).normal(size=(64, 8))
    thread = threading.Thread(target=umap_embed, args=(points,), name="umap-warmup", daemon=True)
    thread.start()
    return thread


def embedding_site(run: Run, options: AnalyzeOptions) -> str:
    """The site to embed: ``--embedding-site``, else the LISA site, else the middle one of the analysed sites."""
    if options.embedding_site is not None:
        return options.embedding_site
    return run.lisa_site if run.lisa_site in run.sites else middle_site(run.sites)


def embed(run: Run, streamed: Streamed, options: AnalyzeOptions) -> tuple[pd.DataFrame | None, Figure]:
    """2-D embedding (UMAP, or PCA) of one site's pooled features over all rows, scored per factor and, with several
    timestep bins, by bin (``embedding_table``; the timestep rows have no ``carried``; None with neither), plotted
    coloured by each factor and by t."""
    site = embedding_site(run, options)
    X = streamed.pooled[site]
    method = "umap" if options.umap else "pca"
    if options.umap:
        umap_warmup().join()
        E = umap_embed(X, seed=options.seed)
    else:
        E = reduce_features(X, 2, options.seed)
    factors = run.factors()
    labels = {name: y for name, (y, _, _) in factors.items()} | {"t": run.meta["t"].to_numpy()}
    if len(run.bin_t) > 1:
        factors["timestep"] = (run.meta["t_bin"].to_numpy(), "categorical", False)
    table = None
    if factors:
        table = embedding_table(E, factors, run.groups, n_splits=options.n_splits, method=method, run=run.label,
                                site=site)
        table["carried"] = table["carried"].astype(object).where(table["factor"] != "timestep", None)
    figure = plot_umap_grid(E, labels, levels={name: spec["levels"] for name, spec in run.store.factors.items()})
    figure.suptitle(f"{run.label}: {method} of {site}", y=1.02)
    return table, figure


def _per_row(run: Run, method: str, site: str, metric: str, values: np.ndarray) -> pd.DataFrame:
    """Store-based decomposition rows of one (method, site, metric), one per analysed row."""
    return pd.DataFrame({"run": run.label, "source": "store", "objective": "likelihood_projection",
                         "t": run.meta["t"].astype(float), "t_bin": run.meta["t_bin"], "method": method,
                         "example": run.rows, "site": site, "metric": metric, "value": values})


def store_decomposition(run: Run, streamed: Streamed) -> pd.DataFrame:
    """``decompose/<site>`` rows as add-one-in attributions of ``likelihood_projection`` (``source="store"``), with the
    whole effect ‖full − main‖ as method ``all_sites``; ``example`` is the store row."""
    frames = [_per_row(run, "all_sites", "all", "effect", streamed.effect)]
    frames += [_per_row(run, "add_one_in", site, "attribution", values)
               for site, values in streamed.add_one_in.items()]
    return pd.concat(frames, ignore_index=True)


def model_decomposition(run: Run, options: AnalyzeOptions) -> pd.DataFrame | None:
    """``attribution_table`` (``source="model"``) of the reloaded run at all rows of ``attribution_samples`` random
    samples; None, with a note, when the store's checkpoint is not a loadable lisa_probe run (or its data changed)."""
    checkpoint = side_net_dir(run)
    if run.store.attrs["extract_args"].get("controlnet"):
        run.notes.append("model-based decomposition skipped: the store is of a side net extracted with --controlnet, "
                         "with no lisa_probe run to rebuild its inputs from; the store-based decomposition (extract "
                         "--decompose) needs none")
        return None
    if Path(run.store.attrs["checkpoint"]).is_absolute():  # a store's attrs are not trusted to point anywhere
        run.notes.append(f"model-based decomposition skipped: the store records its side net by the absolute path "
                         f"{checkpoint} (written before v0.1 stored paths relative to the store); extract it again")
        return None
    print(f"{run.label}: loading the side net at {checkpoint} (recorded in {run.store.paths[0]}) for the "
          "model-based decomposition", file=sys.stderr)
    samples = pd.unique(run.groups)
    chosen = np.random.default_rng(options.seed).choice(samples, min(options.attribution_samples, len(samples)),
                                                        replace=False)
    index = np.flatnonzero(np.isin(run.groups, chosen))
    try:
        config, model, decoder, dataset_kwargs = load_run(checkpoint.parent)
        x_t, steps, cond, context, *_ = rebuild_inputs(run, model, config, dataset_kwargs, index)
    except (ValueError, OSError, TypeError) as error:
        run.notes.append(f"model-based decomposition skipped: cannot rebuild the model and inputs from {checkpoint} "
                         f"({error})")
        return None
    if file_digest(checkpoint) != run.store.attrs.get("checkpoint_hash"):
        run.notes.append(f"{checkpoint} changed since the extraction (hash differs): model-based attributions use "
                         "the current side net")
    model.requires_grad_(False)
    decoder = decoder.eval() if decoder is not None else None
    bins = run.meta["t_bin"].to_numpy()[index]
    table = attribution_table(model, x_t, steps, cond, decoder, run.lisa_site, context=context, t_bins=bins,
                              n_steps=options.ig_steps,
                              n_samples=options.shapley_samples, seed=options.seed, run=run.label, source="model")
    return table.assign(example=run.rows[index][table["example"]])


def map_store_rows(run: Run, setup, options: AnalyzeOptions) -> tuple:
    """The store rows the causal maps are taken at: every selected row of the run's first ``--causal-samples``
    samples (each at the store's timesteps, on the store's noise), rebuilt (``rebuild_inputs``), with their sample
    ids and row numbers."""
    samples = pd.unique(run.groups)[:options.causal_samples]
    index = np.flatnonzero(np.isin(run.groups, samples))
    inputs = rebuild_inputs(run, setup.models[0], setup.setting, setup.dataset_kwargs, index)
    return inputs, list(run.meta["sample_id"].to_numpy()[index]), run.rows[index]


def causal_analyses(run: Run, options: AnalyzeOptions, figures_dir: Path) -> None:
    """``--causal``: the chosen analyses of ``lisa_probe.causal`` for the store's side net, drawn anew from its run
    (or, for a store of ``extract --controlnet``, the ControlNet and its main net) with the store's data options and
    split (``causal.run.store_source``), the maps at the store's own rows (``map_store_rows``), into ``run.causal``
    (tables with a ``run`` column, summary lines, figure names); a note when the side net or its data are not
    here."""
    try:
        source, config = store_source(run.store.paths[0], out=str(figures_dir.parent), overwrite=True,
                                      analyses=options.causal, samples=options.causal_samples,
                                      steps=options.causal_steps, windows=min(4, options.causal_steps),
                                      seed=options.seed, map_figures=1)
        setup = prepare([str(source)], [run.label], config)
        store_rows = map_store_rows(run, setup, options) if "maps" in config.analysis_names else None
        tables, lines, _ = run_analyses(setup, config, figures_dir, label=run.label, store_rows=store_rows)
    except (ValueError, OSError) as error:
        run.notes.append(f"causal analyses skipped: {error}")
        return
    run.causal = {"tables": {name: table.assign(run=run.label) for name, table in tables.items()}, "lines": lines,
                  "figures": sorted(path.name for path in figures_dir.glob(f"{run.label}_*.png"))}


def training_table(run: Run) -> pd.DataFrame | None:
    """``eval.csv`` of the run directory as ``[run, step, metric, value]`` plus ``summary.json``'s
    ``convergence_step`` and ``seconds_per_step`` (``step`` empty); None, with a note, when there is no
    ``eval.csv``."""
    run_dir = next((d for d in checkpoint_dirs(run) if (d / EVAL_FILE).exists()), None)
    if run_dir is None:
        run.notes.append(f"no training curves: no {EVAL_FILE} beside {run.store.attrs['checkpoint']}")
        return None
    table = pd.DataFrame([{"run": run.label, "step": step, "metric": metric, "value": value}
                          for step, metrics in read_eval(run_dir).items() for metric, value in metrics.items()])
    summary = read_summary(run_dir)
    extra = [{"run": run.label, "step": np.nan, "metric": key, "value": summary[key]}
             for key in ("convergence_step", "seconds_per_step") if summary.get(key) is not None]
    return pd.concat([table, pd.DataFrame(extra, columns=table.columns)], ignore_index=True)


def analyze_run(run: Run, options: AnalyzeOptions, figures: Figures,
                times: StageTimes) -> dict[str, pd.DataFrame | None]:
    """All tables of one run (the embedding figure is saved on the way), each stage timed into ``times``."""
    with times.stage("stream"):
        streamed = stream_run(run, options)
    with times.stage("alignment"):
        alignment = alignment_table(run, streamed, options)
    probes = codes = None
    if run.factors():
        with times.stage("probes_dci_mig_sap"):
            if options.umap and options.jobs > 1:
                umap_warmup()  # compiles while this process waits on the workers
            probes, codes = disentanglement_tables(run, streamed, options)
    else:
        run.notes.append("the store has no (varying) generating factors: no probes, DCI, MIG or SAP")
    with times.stage("embedding"):
        embedding, figure = embed(run, streamed, options)
        figures.save("embedding", f"embedding_{run.label}", figure, run.label)
    decomposition = [store_decomposition(run, streamed)] if streamed.add_one_in else []
    if options.attribution_samples > 0:
        with times.stage("model_decomposition"):
            decomposition.append(model_decomposition(run, options))
    decomposition = [table for table in decomposition if table is not None]
    if options.causal:
        with times.stage("causal"):
            causal_analyses(run, options, figures.out / "figures")
    return {"alignment": alignment, "probes": probes, "disentanglement": codes,
            "embedding": embedding, "training": training_table(run),
            "decomposition": pd.concat(decomposition, ignore_index=True) if decomposition else None}


def run_tables(runs: Sequence[Run], options: AnalyzeOptions, figures: Figures,
               times: StageTimes) -> dict[str, pd.DataFrame]:
    """Every table of ``TABLES``, the runs' rows concatenated (a run without rows for a table adds none), with each
    run's ``arm`` (``arm_names``) beside its ``run`` column."""
    per_run = [analyze_run(run, options, figures, times) for run in runs]
    arms = arm_names(runs)
    tables = {}
    for name in per_run[0]:
        parts = [tables_of_run[name] for tables_of_run in per_run if tables_of_run[name] is not None]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EMPTY_COLUMNS[name])
        table.insert(1, "arm", table["run"].map(arms))
        tables[name] = table
    return {**tables, "carried_summary": carried_summary(tables["probes"])}
