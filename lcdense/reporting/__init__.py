"""Reporting, the one stack that turns a run's records into tables, files and figures: the
summary and its gaps, plots, the shared figure style and the filter analysis.
"""
