"""Filter the C++ log lines (absl/glog style, e.g. ``W0000 00:00:... inference_feedback_manager.cc:114] ...``)
that mediapipe's graphs print on stderr for every new graph, and that no Python setting silences.

`filter_native_stderr()` routes file descriptor 2 of the current process through a pipe; a daemon thread drops
lines that look like native INFO/WARNING logs and passes everything else (errors, tracebacks, ERROR/FATAL
native lines) to the original stderr. Used in preprocessing worker processes, whose stderr carries no progress bar.
"""

from __future__ import annotations

import os
import re
import threading

_NATIVE_LOG = re.compile(
    rb"^([IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "  # absl/glog INFO and WARNING lines
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog)"
)
_installed = False


def filter_native_stderr() -> None:
    """Install the filter once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        buf = b""
        with os.fdopen(read_fd, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not _NATIVE_LOG.match(line))
                if out:
                    os.write(original, out)
        if buf and not _NATIVE_LOG.match(buf):
            os.write(original, buf)

    threading.Thread(target=pump, name="native-stderr-filter", daemon=True).start()
