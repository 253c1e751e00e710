"""MkDocs hooks for the documentation site: Sphinx roles in docstrings rendered as code.

The docstrings use Sphinx roles (``:func:`equivit.convert```, ``:math:`(B, C, H, W)```), which
``help()`` and IDEs show as they are, but which the API reference would print as text. After a page
is rendered, each role becomes inline code (``~`` keeps the last name only, as in Sphinx), linked to
the object's entry when the page has one.
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(r":(func|class|meth|mod|attr|data|exc|obj|math):<code>(.*?)</code>")


def _render(match: re.Match[str], ids: set[str]) -> str:
    role, target = match.group(1), html.unescape(match.group(2))
    if role == "math":
        return f"<code>{html.escape(target)}</code>"
    short = target.startswith("~")
    name = target.lstrip("~")
    shown = name.rsplit(".", 1)[-1] if short else name
    code = f"<code>{html.escape(shown)}</code>"
    anchor = next((n for n in (name, f"equivit.{name}") if n in ids), None)
    return f'<a href="#{anchor}">{code}</a>' if anchor else code


def on_page_content(content: str, **kwargs: Any) -> str:
    """Replace the Sphinx roles left in the rendered HTML of a page."""
    ids = set(re.findall(r'id="([^"]+)"', content))
    return _ROLE.sub(lambda match: _render(match, ids), content)
