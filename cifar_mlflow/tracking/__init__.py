"""Every MLflow call of training, sweeps and search, one module per job: the door to MLflow.

`client`: where and as whom to log, experiments, run links; `pages`: every search, page by
page (the analysis and the registry use it too); `runs`: a run's lifecycle and description;
`sweep_runs`: a sweep's parent run and its trials' runs; `callback`: the engine's reports as
MLflow calls; `metric_writer`: every epoch's metrics delivered once, whatever the server
answers; `model_logging`: the final model with its two flavors; `lookups`: finding runs again
(by id, finished and interrupted trials, metric histories). Every call names its run: no run
is ever "active" in the process. The engine never imports this package.
"""
