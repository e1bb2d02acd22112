"""The analysis pipeline over feature stores: ``selection`` (runs and rows) -> ``streaming`` (one pass, fixed
memory) -> ``tables`` (every long table of a run) -> ``report`` (``report_stores``: CSVs, figures, report.md), with
``inputs`` (a row's model inputs rebuilt) and ``attribution`` (the model-based decomposition)."""
