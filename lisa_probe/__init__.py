"""lisa_probe: train and dissect ControlNet-style side networks with and without LISA."""

__version__ = "0.1.0"
