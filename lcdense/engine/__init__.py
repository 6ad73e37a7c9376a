"""The engine: the task protocol, variants and cells, the runner and the shared training loop,
data parallelism, events and callbacks, the run directory's layout and records, trackers,
executors and the dry run.

Built on :mod:`lcdense.core` and :mod:`lcdense.cost`; knows nothing of reporting or the CLI.
"""
