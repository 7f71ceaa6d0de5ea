"""Files written whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union


def write_atomic(path: Union[str, Path], content: Union[str, Callable[[Path], None]]) -> Path:
    """Write ``content`` (text, or a function writing the file it is given) to ``path`` whole or not
    at all: it goes to a temporary file beside ``path`` and is renamed over it (a rename within a
    directory is atomic), so a reader, or a run stopped mid-write, never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if callable(content):
        content(tmp)
    else:
        tmp.write_text(content)
    tmp.replace(path)
    return path
