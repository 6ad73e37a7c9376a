"""A griffe extension for the API reference: lcdense's docstrings are written for ``help()`` and
doctest, not for Markdown, so before mkdocstrings renders them

- each doctest (a run of ``>>>`` lines with their ``...`` continuations and expected output) becomes
  a fenced ``pycon`` code block, instead of nested Markdown block quotes;
- each Sphinx role (``:func:`run```, ``:class:`~lcdense.core.blocks.LCConv```) becomes inline code
  with the name it shows in Sphinx (no link: a role names a target relative to its module, which
  mkdocstrings does not resolve).

The source files are not changed; only the text that the reference pages render.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):  # ~a.b.c shows as c
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def fence_doctests(text: str) -> str:
    """Wrap every doctest block of ``text`` in a ```` ```pycon ```` fence, at its indentation."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i][len(indent):])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [indent + "```pycon", *(indent + b for b in block), indent + "```", ""]
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its doctests fenced and its Sphinx roles as inline code."""
    return _ROLE.sub(_role, fence_doctests(text))


class DocstringMarkdown(griffe.Extension):
    """Rewrites each docstring's text when griffe loads its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
