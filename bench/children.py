"""`Child`: a forked helper process of the benchmark (load generator, peers), called over a pipe."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from typing import Any


class Child:
    """A forked process answering calls over a pipe (load.main / peers.main)."""

    def __init__(self, entry: Callable[[Any], None], name: str) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=entry, args=(child_conn,), name=name, daemon=True)
        self.process.start()
        child_conn.close()

    def call(self, name: str, timeout: float = 600.0, **kwargs: Any) -> dict[str, Any]:
        self.conn.send((name, kwargs))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{name}: no answer from the load generator in {timeout} s")
        status, result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(result)
        return result  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("exit", {}))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
