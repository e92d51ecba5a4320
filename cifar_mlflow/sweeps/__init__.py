"""Sweeps: a study's trials as nested runs under one parent run.

`sweep` decides which trials to run and summarises them; `trials` is what every executor
shares (a trial, its outcome, running one); `local` and `ray_executor` decide where the
missing trials run. The sweep's MLflow calls are `tracking.sweep_runs`; a searched study's
trials come from the `search` package.
"""
