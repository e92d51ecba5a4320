"""Sweeps: a study's trials as nested runs under one parent run (SPEC §6).

`sweep` decides which trials to run and summarises them; `trials` is what every executor
shares (a trial, its outcome, running one); `tracking.sweep_runs` holds its MLflow calls;
`local` and `ray_executor` decide where the missing trials run. A searched study's trials
come from `search` (its runs → `search_state`, the Optuna study; `early_stopping`, the
callback that consults it).
"""
