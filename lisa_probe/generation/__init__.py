"""Samples side by side (``python -m lisa_probe.sample``): runs and ControlNets on one main net drawn from the same
noise, conditions and prompts, with a comparison grid and control fidelity per run."""
