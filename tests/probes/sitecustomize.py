"""A test probe, imported at start-up by every Python process whose PYTHONPATH begins with this folder.

With RB_PROBE_ROOT and RB_PROBE_LOG set, it records, through Python's audit hooks (PEP 578), every directory
listing under RB_PROBE_ROOT and every image opened there, one line per event appended to RB_PROBE_LOG:
`<pid> <unix time> <list|check|load|open> <path>`. `check` is an open made by the data preflight's sample
decode, `load` one made by a training/eval loader. Nothing in the suite knows about it: it counts what the
processes really do (the driver, torchrun's ranks, Ray's workers and their DataLoader workers alike).
"""

import os
import sys
import time

_ROOT = os.environ.get("RB_PROBE_ROOT")
_LOG = os.environ.get("RB_PROBE_LOG")
_CHECKERS = {"_decodes", "find_corrupt", "_find_corrupt"}  # the preflight's sample decode
_LOADERS = {"__getitem__", "__getitems__"}  # a Dataset serving a batch


def _under_root(path) -> str | None:
    if isinstance(path, int) or path is None:
        return None
    path = os.path.abspath(os.fsdecode(path))
    return path if path == _ROOT or path.startswith(_ROOT + os.sep) else None


def _caller_kind() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_name
        if name in _CHECKERS:
            return "check"
        if name in _LOADERS:
            return "load"
        frame = frame.f_back
    return "open"


def _record(kind: str, path: str) -> None:
    line = f"{os.getpid()} {time.time():.6f} {kind} {path}\n".encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of one line with O_APPEND: lines of concurrent processes never mix
    finally:
        os.close(fd)


def _hook(event: str, args: tuple) -> None:
    if event in ("os.scandir", "os.listdir"):
        path = _under_root(args[0] if args else ".")
        if path:
            _record("list", path)
    elif event == "open":
        path = _under_root(args[0])
        if path and not os.path.isdir(path):
            _record(_caller_kind(), path)


if _ROOT and _LOG:
    _ROOT = os.path.abspath(_ROOT)
    sys.addaudithook(_hook)
