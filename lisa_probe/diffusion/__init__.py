"""The noise process: parameterisations (eps / v / flow targets, schedules, SD3 weighting) and samplers."""
