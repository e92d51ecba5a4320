"""Searched studies: trials sampled by Optuna, stopped early, continued from their runs.

`space`: the `search` section of a study file, validated (no Optuna); `state`: the Optuna
study rebuilt from the search's runs; `early_stopping`: the callback that asks it whether a
trial goes on; `trials`: a sweep's searched trials, from the runs to the executor and back.
"""
