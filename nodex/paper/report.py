"""Transitional: ``nodex report`` moved to :mod:`nodex.report` (runs to :mod:`nodex.runs`). Only
:mod:`nodex.paper.reproduce` still imports from here; delete this file once it imports ``nodex.report``."""

from nodex.report import Group, Run, find_runs, fmt, metric_value, stat_cell

__all__ = ["Group", "Run", "find_runs", "fmt", "metric_value", "stat_cell"]
