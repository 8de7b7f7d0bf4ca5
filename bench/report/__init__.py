"""The analysis side: read records from disk, explain them, and write the report.

It imports the record schema and nothing of the model side (no torch, no strategy table):
everything it needs to know about a job is in its record. tests/test_architecture.py holds that.
"""
from bench.report.report import build_report

__all__ = ["build_report"]
