"""Errors that reach the user as one clear line (the CLI prints them and exits 2)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class LcdenseError(Exception):
    """A problem with the user's input: printed as one line, no traceback, exit code 2."""


def unknown_name(kind: str, name: str, known: Iterable[str], limit: int = 20) -> LcdenseError:
    """Build the error for an unknown ``name`` of ``kind``, listing what exists and the closest match.

    Args:
        kind: What was looked up, e.g. ``"init"`` or ``"task"``.
        name: The name that was not found.
        known: The names that exist.
        limit: How many known names the message lists at most.

    Returns:
        The error, to raise.

    >>> str(unknown_name("init", "kaiming", ["kaiming_uniform", "orthogonal"]))
    "unknown init 'kaiming'; did you mean 'kaiming_uniform'? Known: kaiming_uniform, orthogonal"
    """
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    listed = ", ".join(known[:limit]) or "(none)"
    if len(known) > limit:
        listed += f", ... ({len(known) - limit} more)"
    return LcdenseError(f"unknown {kind} '{name}'{hint} Known: {listed}")


class MissingExtra(LcdenseError):
    """A feature needs packages of an extra that is not installed (``pip install "lcdense[EXTRA]"``)."""


def require_extra(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise :class:`MissingExtra` naming the ``pip install`` to run if any of ``modules`` is missing.

    Args:
        extra: The lcdense extra that installs the modules, e.g. ``"detection"``.
        *modules: Top-level module names to look for (nothing is imported).
        what: The feature that needs them, for the message (default ``"this"``).

    Raises:
        MissingExtra: Any of ``modules`` is not installed.

    >>> require_extra("core", "json")            # present: nothing happens
    >>> require_extra("detection", "no_such_module_xyz", what="task 'detection'")
    Traceback (most recent call last):
    ...
    lcdense.base.errors.MissingExtra: task 'detection' needs no_such_module_xyz, which is not installed: pip install "lcdense[detection]"
    """
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{what or 'this'} needs {', '.join(missing)}, which "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: pip install \"lcdense[{extra}]\"")
