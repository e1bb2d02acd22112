"""What a training run logs: ``metrics.csv`` (every logged step), ``eval.csv`` (long form) and accelerate's
experiment trackers (``--report-to``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from accelerate.tracking import TensorBoardTracker, WandBTracker
from PIL import Image

from lisa_probe.files import write_csv_atomic
from lisa_probe.rundir import EVAL_FILE, METRICS_FILE, sample_grid_path
from lisa_probe.training.config import REPORT_TO


def make_trackers(report_to: str, run_dir: Path, start_step: int, config: dict) -> list:
    """accelerate's trackers for ``--report-to``, started, with the run's config stored: TensorBoard in
    ``<run>/tensorboard`` (a resume purges the events after its checkpoint's step), wandb in project ``lisa_probe``
    under the run's name (resumed when it exists)."""
    trackers = []
    for name in REPORT_TO[report_to]:
        if name == "tensorboard":
            tracker = TensorBoardTracker("tensorboard", run_dir, purge_step=start_step + 1)
        else:
            tracker = WandBTracker("lisa_probe", name=run_dir.name, id=run_dir.name, dir=str(run_dir),
                                   resume="allow")
        tracker.start()
        if start_step == 0:  # hyper-parameters: the scalar settings (TensorBoard takes no None or lists)
            tracker.store_init_configuration({key: value for key, value in config.items()
                                              if isinstance(value, (int, float, str, bool))})
        trackers.append(tracker)
    return trackers


class MetricsLog:
    """``metrics.csv`` (one row per logged step, columns fixed by the first row) plus the ``--report-to`` trackers."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool, report_to: str = "tensorboard",
                 config: dict | None = None):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.trackers = []
        if enabled:
            self._truncate_after(start_step)
            self.trackers = make_trackers(report_to, run_dir, start_step, config or {})

    def _truncate_after(self, step: int) -> None:
        """Keep the rows up to ``step`` (a resume's checkpoint), rewritten atomically; a torn last row (a kill while
        it was appended: cells missing) is dropped."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [row for row in reader if None not in row.values() and None not in row]
            columns = reader.fieldnames
        if columns:
            write_csv_atomic(self.path, columns, [row for row in rows if int(row["step"]) <= step])

    def _write(self, row: dict) -> None:
        """Append ``row`` under the file's header (written first for a new file). A row with columns the header
        lacks (the onset probe's, at its first step) rewrites the file atomically with the union of columns, the
        earlier rows blank in the new ones."""
        if self.path.exists():
            with open(self.path, newline="") as handle:
                columns = next(csv.reader(handle), [])
            if set(row) - set(columns):
                with open(self.path, newline="") as handle:
                    earlier = list(csv.DictReader(handle))
                columns += [key for key in row if key not in columns]
                write_csv_atomic(self.path, columns, [{key: item.get(key, "") for key in columns} for item in earlier])
        else:
            columns = list(row)
            write_csv_atomic(self.path, columns, [])
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=columns, restval="").writerow(row)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write({"step": step, **values})
        self.track(step, values)

    def track(self, step: int, values: dict[str, float]) -> None:
        """Send scalars to the trackers only (evaluations: ``eval.csv`` is written apart)."""
        for tracker in self.trackers:
            tracker.log({key: float(value) for key, value in values.items()}, step=step)

    def track_image(self, step: int, name: str, path: Path) -> None:
        """Send the image at ``path`` (a PNG) to the trackers as ``name`` at ``step``: TensorBoard's image tab,
        wandb's media panel."""
        if not self.trackers:
            return
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        for tracker in self.trackers:
            if isinstance(tracker, TensorBoardTracker):
                tracker.log_images({name: pixels[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({name: [pixels]}, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def eval_log_rows(run_dir: Path, step: int, results: dict[str, float], metrics: MetricsLog) -> None:
    """Append evaluation results to ``eval.csv`` (long form: step, metric, value) and send them to the trackers, with
    the evaluation's sample grid (``rundir.sample_grid_path``) as the image ``validation`` when it drew one."""
    path = run_dir / EVAL_FILE
    rows = []
    if path.exists():
        with open(path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) < step]
    new_rows = [{"step": step, "metric": key, "value": value} for key, value in results.items()
                if isinstance(value, (int, float)) and math.isfinite(value)]
    write_csv_atomic(path, ["step", "metric", "value"], rows + new_rows)
    metrics.track(step, {f"eval/{row['metric']}": row["value"] for row in new_rows})
    grid = sample_grid_path(run_dir, step)
    if grid.exists():
        metrics.track_image(step, "validation", grid)
