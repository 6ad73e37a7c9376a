"""Every function and class of the public API (``lcdense.__all__``) says what it takes and what it gives:
a Google-style ``Args:`` (or ``Attributes:`` for records) naming each parameter, and ``Returns:`` /
``Yields:`` when it returns something."""
from __future__ import annotations

import inspect
import re

import lcdense

_SECTION = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")


def _public():
    for name in lcdense.__all__:
        obj = getattr(lcdense, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield name, obj


def _parameters(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return []
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _sections(doc: str) -> dict[str, str]:
    """The docstring's sections, by heading: ``{"Args": "<body>", ...}``."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        match = _SECTION.match(line)
        if match and match.group(2) in ("Args", "Arguments", "Attributes", "Returns", "Yields", "Raises",
                                        "Examples", "Example", "Note", "Notes", "Warns", "Warning"):
            current = match.group(2)
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _documented(body: str) -> set[str]:
    return set(re.findall(r"^\s*\**([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:", body, flags=re.M))


def _returns_something(obj) -> bool:
    if inspect.isclass(obj):
        return False
    annotation = inspect.signature(obj).return_annotation
    return annotation not in (inspect.Signature.empty, None, "None")


def test_public_api_documents_args_and_returns():
    offenders = []
    for name, obj in _public():
        doc = inspect.getdoc(obj) or ""
        sections = _sections(doc)
        parameters = _parameters(obj)
        if parameters:
            body = sections.get("Args", "") + "\n" + sections.get("Attributes", "")
            if "Args" not in sections and "Attributes" not in sections:
                offenders.append(f"{name}: no Args:/Attributes:")
            else:
                missing = [p for p in parameters if p not in _documented(body)]
                if missing:
                    offenders.append(f"{name}: undocumented {missing}")
        if _returns_something(obj) and "Returns" not in sections and "Yields" not in sections:
            offenders.append(f"{name}: no Returns:/Yields:")
    assert offenders == [], "public API docstrings lacking sections:\n" + "\n".join(offenders)
