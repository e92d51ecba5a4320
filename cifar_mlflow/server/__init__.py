"""The team tracking server without Docker: `launcher` (PostgreSQL + `mlflow server`), its
`postgres` cluster, and `cli` (`python -m cifar_mlflow server ...`). Clients need none of it:
they check a server with `cifar_mlflow.reachability`.
"""
