"""Calls with a hard deadline: run a function in a child process and kill it when it overruns.

A thread cannot be stopped, and SymPy's big-integer arithmetic holds the GIL: verifying
`\\boxed{9^{9^{9}}}` in a thread overruns any timeout and keeps running after it. Signals
(math-verify's own timeouts use SIGALRM) only work on the main thread, which a Ray worker's
reward call is not. A child process can always be killed.

`BoundedCaller` keeps one child per process (started with "spawn": safe inside threaded Ray
workers) and reuses it between calls; a call that overruns kills the child (SIGKILL) and raises
`TimeoutError`; the next call starts a new one (its start-up does not count against the call).
Functions and arguments must be picklable (module-level functions).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

_START_S = 120.0  # a fresh child imports Python and its warm-up's modules before it is ready


def _serve(connection, warmup: Callable[[], Any] | None) -> None:
    """The child's loop: warm up, say "ready", then receive (fn, args) and send back ("ok",
    result) or ("error", exception)."""
    if warmup is not None:
        warmup()
    connection.send("ready")
    while True:
        try:
            fn, args = connection.recv()
        except EOFError:
            return
        try:
            connection.send(("ok", fn(*args)))
        except Exception as err:  # returned to the caller, who re-raises it
            connection.send(("error", err))


class BoundedCaller:
    """Runs `fn(*args)` in a reusable child process, at most `timeout_s` seconds per call.

    warmup: run once in each new child before its first call (imports that should not count
    against a call's deadline)."""

    def __init__(self, warmup: Callable[[], Any] | None = None) -> None:
        self._warmup = warmup
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._warmup), daemon=True,
                                        name="rewards-bounded")
        self._process.start()
        child.close()
        self._connection = parent
        ready = parent.poll(_START_S)
        if not ready or parent.recv() != "ready":
            self._kill()
            raise RuntimeError(f"the bounded-call process did not start within {_START_S} s")

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._connection.close()
        self._process = self._connection = None

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """`fn(*args)` in the child; TimeoutError (the child killed) when it takes longer than
        `timeout_s`; its exception re-raised."""
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._kill()
                self._start()
            self._connection.send((fn, args))
            if not self._connection.poll(timeout_s):
                self._kill()
                raise TimeoutError(f"{getattr(fn, '__name__', fn)} took over {timeout_s} s; its process was killed")
            try:
                status, value = self._connection.recv()
            except EOFError:  # the child died (e.g. out of memory)
                self._kill()
                raise RuntimeError(f"{getattr(fn, '__name__', fn)}: its process died") from None
        if status == "error":
            raise value
        return value
