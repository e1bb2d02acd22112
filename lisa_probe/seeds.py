"""Every random stream derived from a run's ``--seed``, named in one place: ``derive_seed(seed, purpose, index)``.

Each purpose is ``seed * stride + offset + index``, kept exactly as the streams were first defined, so that runs,
stores and checkpoints made before this table existed are reproduced bit for bit:

============== ====================== ================== =================================================================
purpose                formula            stream
====================== ================== =================================================================
``process``            seed·1000003 + r   training noise, timesteps, flips, caption dropout and posterior
                                          draws of process r (``training.engine``)
``zero_init``          seed·1000003 + 7   initial weights of the zero modules with ``--zero-init-scale``
                                          (the same numbers as process 7's stream: never in one tensor)
``cond_gate_init``     seed·1000003 + 11  initial weights of the condition embedding's output with
                                          ``--cond-embedding-init-scale``
``row_noise``          seed·1000003 + row a feature store row's noise (``diffusion.sampling.row_noise``)
``data_order``         seed·100003 + e    the order of the training samples in epoch e (``data.stream``)
``main_eval``          seed + 1           starting noise of a main net's evaluation samples
``probe``              seed + 4242        noise of the onset probe batch (``training.onset_probe``)
``side_eval``          seed + 12345       starting noise of a side net's evaluation samples
``validation_pairs``   seed + 23456       starting noise of the ``--validation-image`` samples
====================== ================== =================================================================
"""

from __future__ import annotations

PURPOSES = {"process": (1_000_003, 0), "zero_init": (1_000_003, 7), "cond_gate_init": (1_000_003, 11),
            "row_noise": (1_000_003, 0),
            "data_order": (100_003, 0), "main_eval": (1, 1), "probe": (1, 4242), "side_eval": (1, 12345),
            "validation_pairs": (1, 23456)}


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """The seed of stream ``purpose`` (a key of ``PURPOSES``) for run seed ``seed`` and ``index`` (a process rank,
    a row, an epoch; 0 for the others); ValueError naming the purposes for an unknown one."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    stride, offset = PURPOSES[purpose]
    return int(seed) * stride + offset + int(index)
