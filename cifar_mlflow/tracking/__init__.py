"""Every MLflow call of the training side, one module per job.

`client`: where and as whom to log, experiments, links; `runs`: a run's lifecycle and
description; `callback`: the engine's reports as MLflow calls; `model_logging`: the final
model with its two flavors; `lookups`: finding runs again (resume, finished and interrupted
trials). The engine never imports it.
"""
