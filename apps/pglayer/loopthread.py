"""The event loop a channel layer runs on: its own, in a daemon thread, or the ASGI server's.

Why a loop of its own: a connection or pool bound to the caller's loop dies with that loop. Every
``async_to_sync`` call from a plain thread runs on a fresh loop, so a layer that kept its
connections on the caller's loop would fail (or leak) for sync callers after the first call, and
after a database restart. By default the listener and the pool live on a loop that lives as long
as the process; callers on any loop submit work to it and await the result.

Why the server's loop, in an ASGI server: daphne runs one loop in its main thread for the life
of the process, and every consumer receives and sends on it (``async_to_sync`` inside Django's
sync views runs there too). Running the layer on that loop spares each call two thread hops (a
wake-up of the other loop and one back), which on a busy machine cost more than the statement
itself. So the first call made on daphne's loop (``daphne.server.twisted_loop``), or on a loop
registered with :func:`treat_as_server_loop` (benchmarks, tests), adopts it; callers on other
threads then submit to it as they would to the thread. A layer configured with
``event_loop="own"`` never adopts.

Guarantees: ``submit`` works from any thread and any loop, including loops that are closed
afterwards, as long as the layer's loop runs (its own always does; an adopted one until the
server stops). Does NOT: survive ``fork()`` (start it after forking, as daphne does); outlive an
adopted loop (a call after it has closed raises; the server is shutting down then).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

_server_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def treat_as_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Let layers adopt ``loop`` as daphne's: for a loop that runs as long as the layers are used."""
    _server_loops.add(loop)


def is_server_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` runs for the life of the process: daphne's, or one registered as such."""
    if loop in _server_loops:
        return True
    if sys.modules.get("daphne.server") is None:
        return False
    # daphne installs Twisted's asyncio reactor on its own loop (daphne.server.twisted_loop), or
    # keeps an asyncio reactor installed before it: the loop that reactor drives.
    reactor = sys.modules.get("twisted.internet.reactor")
    return loop is getattr(sys.modules["daphne.server"], "twisted_loop", None) or (
        loop is getattr(reactor, "_asyncioEventloop", None)
    )


class LoopThread:
    def __init__(self, name: str, *, adopt: bool = True) -> None:
        self._name = name
        self._adopt = adopt
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.adopted = False

    def adopt_caller(self) -> None:
        """Called on the caller's loop at each use of the layer: the first use adopts that loop if
        it is the server's (see :func:`is_server_loop`)."""
        if self._loop is not None or not self._adopt:
            return
        loop = asyncio.get_running_loop()
        if is_server_loop(loop):
            with self._lock:
                if self._loop is None:
                    self._loop = loop
                    self.adopted = True
                    logger.info("channel layer: running on the server's event loop")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            elif self._loop.is_closed():
                raise RuntimeError("channel layer: the server's event loop it ran on has closed")
            return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None

    def in_loop(self) -> bool:
        try:
            return self._loop is not None and asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def runnable(self) -> bool:
        """Whether work submitted now will run: the loop exists and runs (an adopted one may not)."""
        return self._loop is not None and not self._loop.is_closed() and self._loop.is_running()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except BaseException:
            coro.close()  # never to run: no "never awaited" warning
            raise

    def stop(self) -> None:
        """Stop the layer's own loop and thread; forget an adopted loop (it is not ours to stop)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self.adopted = False
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(5)
