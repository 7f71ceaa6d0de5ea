"""Writing a compiled library and its manifest without ever leaving a broken or clobbered file.

Both are written to temporary files beside their final names and renamed into place only when
complete, back to back with Ctrl-C held off, so an interrupted compile leaves the previous good
pair (or nothing), never a 0-byte ``.so`` or a library with a stale manifest.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from mobilec.errors import UserError
from mobilec.runtime.manifest import Manifest, manifest_path

REFUSED_SUFFIXES = {".json": "the manifest's name", ".onnx": "an ONNX model's name"}


class OutputError(UserError, ValueError):
    pass


def check_output(output: Path, source: Optional[Union[str, Path]]) -> None:
    """Refuse an ``-o`` that would overwrite the input model or collide with the manifest."""
    if output.suffix.lower() in REFUSED_SUFFIXES:
        raise OutputError(f"-o {output}: {REFUSED_SUFFIXES[output.suffix.lower()]}; name the library to write, "
                          f"e.g. -o {output.with_suffix('.so')} (its manifest {output.with_suffix('.json').name} "
                          f"goes beside it)")
    if output.is_dir():
        raise OutputError(f"-o {output}: is a directory; name the library file, e.g. -o {output / 'model.so'}")
    if source is None or not Path(source).exists():
        return
    for path in (output, manifest_path(output)):
        if path.exists() and os.path.samefile(path, source):
            raise OutputError(f"-o {output} would overwrite the input model {source}; choose another name")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, so the two renames happen together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def write_pair(output: Path, write_library: Callable[[Path], None], describe: Callable[[Path], Manifest]) -> Manifest:
    """``write_library(tmp)`` writes the library to a temporary path; ``describe(tmp)`` checks it and
    returns its manifest. Both land at ``output`` and ``output.json`` only when both are complete."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, lib_tmp = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=output.suffix or ".so", dir=output.parent)
    os.close(fd)
    json_tmp = Path(lib_tmp).with_suffix(".json.tmp")
    lib_tmp = Path(lib_tmp)
    try:
        write_library(lib_tmp)
        os.chmod(lib_tmp, 0o755 & ~_umask())
        manifest = describe(lib_tmp)
        manifest.save(json_tmp)
        with _no_interrupt():
            os.replace(lib_tmp, output)
            os.replace(json_tmp, manifest_path(output))
        return manifest
    finally:
        for tmp in (lib_tmp, json_tmp):
            tmp.unlink(missing_ok=True)
