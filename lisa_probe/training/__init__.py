"""Training main nets and side nets: settings (``config``), the accelerate loop (``engine``), checkpoints, the LISA
head, the objectives (``main_net``, ``side_net``), the evaluation and onset probe run during training, and loading
trained runs (``loading``)."""
