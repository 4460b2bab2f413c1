"""mkdocs build hook: write generated content into pages, from the source itself.

`<!-- RESULTS table -->` on a page becomes the table of every `linsolve.RESULTS` code
with its message, so the list cannot fall behind the code."""

import sys
from pathlib import Path


ROOT = str(Path(__file__).resolve().parent.parent)
MARKER = "<!-- RESULTS table -->"


def results_table() -> str:
    # The docs describe the working tree, not whatever linsolve is installed.
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from linsolve import RESULTS

    rows = ["| code | name | message |", "| --- | --- | --- |"]
    for member in RESULTS:
        message = RESULTS.message(member).replace("|", "\\|")
        rows.append(f"| {int(member)} | `{member.name}` | {message} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, results_table())
    return markdown
