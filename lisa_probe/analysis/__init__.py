"""Pure analysis functions: numpy arrays (or streamed chunks) in, long-form pandas tables out.

Modules: ``tables`` (the shared long-table helper), ``alignment`` (decoder alignment, ridge readouts, CKA),
``probes`` (linear probes with control tasks), ``disentanglement`` (DCI, MIG, SAP), ``factor_tables`` (both for
one site and timestep bin, as worker processes run them), ``embedding`` (UMAP),
``decomposition`` (per-site gate attributions) and ``plots`` (seaborn figures from those tables).
"""
