"""Rebuild the study's figures, Table 1 and an HTML report from the tracking server alone.

`query` is the only module that talks to MLflow; `frames` (pandas), `plots` (matplotlib
Figures), `tables` (text), `comparisons`, `conclusions` and `compute` (the evidence of
issue 24) are pure. `figures`, `table1`, `compare` and `report` are the commands
(`python -m analysis.figures --study lr`, ...).
"""
