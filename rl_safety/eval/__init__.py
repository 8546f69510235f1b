"""Evaluation of trained models and datasets: benchmark suites (`suite`, `scorers`, `harness`:
`rl-safety eval`), the method comparison (`compare`: `rl-safety compare`), distribution shift (`shift`)."""
