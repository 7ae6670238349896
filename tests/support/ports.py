"""Listening ports for the Python suites (tests/conformance, tests/codex)."""

from __future__ import annotations

import os
import socket

_LOW = 20_000
_SPAN = 12_000
_next = (os.getpid() * 7919) % _SPAN


def free_port() -> int:
    """A port free to listen on, from below the kernel's ephemeral range (32768-60999): a port
    bind(0) hands out is also one the kernel gives an outgoing connection as its source port, so a
    child told to listen there could find it taken. Below the range only this counter hands it out."""
    global _next
    for _ in range(_SPAN):
        port = _LOW + _next
        _next = (_next + 1) % _SPAN
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LOW}..{_LOW + _SPAN}")
