"""Evaluation of generated images: control fidelity, factor read-back, Fréchet distance and shape fit.

``Evaluator.for_dataset(ds, cache_dir)`` bundles them for one dataset; the modules hold the pieces:
:mod:`~lisa_probe.evaluation.fidelity` (edge F1 / mask IoU from images and conditions alone),
:mod:`~lisa_probe.evaluation.readback` (the cached read-back CNN), :mod:`~lisa_probe.evaluation.frechet` and
:mod:`~lisa_probe.evaluation.shapefit` (does an unconditional sample show a clean, nameable shape?).
"""

from lisa_probe.evaluation.evaluator import Evaluator
from lisa_probe.evaluation.fidelity import control_fidelity, fidelity_per_sample
from lisa_probe.evaluation.frechet import fd_real_real, frechet_distance
from lisa_probe.evaluation.readback import ReadbackConfig, ReadbackNet, load_or_train_readback, readback_scores

__all__ = ["Evaluator", "ReadbackConfig", "ReadbackNet", "control_fidelity", "fd_real_real",
           "fidelity_per_sample", "frechet_distance", "load_or_train_readback", "readback_scores"]
