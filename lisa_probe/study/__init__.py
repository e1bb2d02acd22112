"""Studies of many runs from a YAML file (``python -m lisa_probe.study``): the runner, the onset fit and the
study's figures."""
