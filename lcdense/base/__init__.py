"""Foundations every layer uses: one-line user errors (:mod:`~lcdense.base.errors`), the name →
object :class:`~lcdense.base.registry.Registry`, and atomic file writes (:mod:`~lcdense.base.files`).

Imports nothing else of lcdense.
"""
