# -*- test-case-name: tests.test_h2engine_unit -*-
"""Choosing the HTTP/2 engine: ``select_engine("auto" | "native" | "python")`` and its name for logs.

``auto`` takes the native engine (libnghttp2) when ``txgate._nghttp2`` is built and
``TXGATE_NO_NATIVE`` is not set, else the hyper-h2 engine.
"""
from __future__ import annotations

import os

from txgate.http.h2engine.base import EngineSettings, H2Engine

__all__ = ["CHOICES", "EngineSettings", "H2Engine", "available_engines", "describe_engine", "select_engine"]

CHOICES = ("auto", "native", "python")


def _native():
    """The native engine class, or the reason it is not available."""
    try:
        from txgate.http.h2engine.native import NativeEngine
    except ImportError as e:
        return None, f"txgate._nghttp2 not importable: {e}"
    return NativeEngine, "built"


def available_engines() -> dict[str, type]:
    """The engines importable here, by name ("native" when built, always "python")."""
    from txgate.http.h2engine.python import PythonEngine

    found: dict[str, type] = {}
    native, _ = _native()
    if native is not None:
        found["native"] = native
    found["python"] = PythonEngine
    return found


def select_engine(choice: str = "auto") -> type:
    """The engine class for ``choice``; "native" when it is not built raises RuntimeError."""
    if choice not in CHOICES:
        raise ValueError(f"h2 engine must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice != "python":
        native, why = _native()
        if choice == "native":
            if native is None:
                raise RuntimeError(f"h2_engine = native, but {why}")
            return native
        if native is not None and os.environ.get("TXGATE_NO_NATIVE", "") in ("", "0"):
            return native
    from txgate.http.h2engine.python import PythonEngine

    return PythonEngine


def describe_engine(choice: str = "auto") -> str:
    """One line naming the engine ``choice`` resolves to, for ``txgate version`` and startup logs."""
    engine = select_engine(choice)
    if engine.name == "native":
        from txgate.http.h2engine.native import VERSION

        return f"native (libnghttp2 {VERSION})"
    import h2

    return f"python (hyper-h2 {h2.__version__})"
