"""Rebuild the study's figures, Table 1 and an HTML report from the tracking server alone.

`query` is the only module that talks to MLflow; `frames` (pandas), `plots` (matplotlib
Figures) and `tables` (text) are pure. `figures`, `table1` and `report` are the commands
(`python -m analysis.figures --study lr`, ...).
"""
