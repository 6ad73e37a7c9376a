"""The conversion core: LC-Blocks, the preconditioned form, folding, conversion of any PyTorch
model, seeded inits, frozen digests, cost accounting and the model zoo.

Knows nothing of tasks, runs or the command line; imports only :mod:`lcdense.base`.
"""
