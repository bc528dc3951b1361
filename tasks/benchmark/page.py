"""``--markdown PATH``: a benchmark's tables written into a documentation page (``docs/benchmarks/``), with the
command that wrote them, the machine and the date.

A page may hold the tables of several commands (``make bench`` runs two) and text written by hand. Each
command's block lies between two comment lines that hold the command line: running the same command again
replaces its own block and leaves the rest of the page as it was; another command's block is added at the end;
a missing page is created, titled by the first block.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

PROGRAM = "python -m tasks.benchmark"
_IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)]+)\)$", flags=re.M)


def command_line(argv: Sequence[str]) -> str:
    """The command as a user types it: ``python -m tasks.benchmark`` and its arguments, quoted for a shell."""
    return f"{PROGRAM} {shlex.join(argv)}".rstrip()


def markers(command: str) -> tuple[str, str]:
    """The comment lines that open and close ``command``'s block of a page."""
    return f"<!-- written by: {command} -->", f"<!-- end of: {command} -->"


def block(command: str, markdown: str, title: str | None = None, files: str | Path | None = None,
          date: str | None = None) -> str:
    """``markdown`` (a benchmark's output, its ``# title`` line first, or ``title`` given) as a page's block: a
    second-level heading, the command and the date, then the text. Images, which lie beside the benchmark's own
    file and not beside the page, become a line naming the file in ``files``."""
    lines = markdown.strip("\n").splitlines()
    if lines and lines[0].startswith("# "):
        title = title or lines[0][2:]
        lines = lines[1:]
    if title is None:
        raise ValueError("a block needs a title: give one, or begin the markdown with '# title'")
    text = "\n".join(lines).strip("\n")
    if files is not None:
        text = _IMAGE.sub(lambda m: f"The plot: `{Path(files) / m.group(1)}`.", text)
    date = date or datetime.now(timezone.utc).date().isoformat()
    start, end = markers(command)
    return f"{start}\n## {title}\n\nWritten by `{command}` on {date}.\n\n{text}\n{end}\n"


def write_page(path: str | Path, command: str, markdown: str, title: str | None = None,
               files: str | Path | None = None, date: str | None = None) -> Path:
    """Put ``command``'s :func:`block` into the page at ``path``: in place of its earlier block, else at the end,
    else as a new page. Returns the path."""
    path = Path(path)
    new = block(command, markdown, title, files, date)
    start, end = markers(command)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        heading = new.splitlines()[1][3:]
        path.write_text(f"# {heading}\n\n{new}")
        return path
    page = path.read_text()
    first = page.find(start + "\n")
    last = page.find(end, first) if first >= 0 else -1
    if first >= 0 and last < 0:
        raise ValueError(f"{path}: the block of `{command}` has no end line {end!r}; mend the page by hand")
    if first >= 0:
        after = last + len(end)
        page = page[:first] + new.rstrip("\n") + page[after:]
    else:
        page = page.rstrip("\n") + "\n\n" + new
    path.write_text(page)
    return path
