# -*- test-case-name: tests.test_eventloop -*-
"""The epoll reactor's event dispatch, lean for txgate's own TCP connections.

Twisted's ``EPollReactor.doPoll`` hands every event to ``log.callWithLogger(selectable,
_doReadOrWrite, ...)``: per read, the transport's ``logPrefix()``, a copy of the legacy log context
with ``system`` set, and three more frames of ``twisted.python.context``, ~12 Python calls around
each read of every connection. That context only reaches legacy ``twisted.python.log`` events (txgate
logs through ``twisted.logger``, which never reads it), i.e. Twisted's own error lines.

`install` replaces the running reactor's ``doIteration`` (the same poll) with one that, for a
read event (``EPOLLIN``, with or without a hang-up or error flag, not ``EPOLLOUT``) on a selectable
of a class marked ``_txgate_lean`` (txgate's TCP transports: accepted connections on the listeners,
upstream connections, see ``txgate.directwrite``; and txgate's listening ports, whose accept loop
handles its own errors, see ``txgate.runtime.accept``), calls ``doRead`` directly, with
``_doReadOrWrite``'s checks and error handling: an exception from the read is logged with
``log.err`` inside the connection's log context, exactly as before, and a disconnection runs in it
too. Every other event (writes, hang-ups alone, other protocols' sockets) goes through Twisted's
own path unchanged. It also counts its polls (``_txgate_polls``), which the listening ports read to
tell a burst of connections from one at a time. Only an ``EPollReactor`` whose
``doIteration`` is Twisted's own gets it; any other reactor is left alone.
"""
from __future__ import annotations

import errno
import sys
from types import MethodType

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
    from select import EPOLLIN, EPOLLOUT
except ImportError:  # pragma: no cover - not Linux
    EPollReactor = None
    EPOLLIN, EPOLLOUT = 1, 4

_READ_ONLY = EPOLLIN | EPOLLOUT  # (event & _READ_ONLY) == EPOLLIN: a read, no write


def _lean_do_poll(self, timeout) -> None:
    """``EPollReactor.doPoll``, with a read on a lean transport dispatched without the log context."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    self._txgate_polls += 1  # listening ports tell a burst (readable poll after poll) by it
    selectables = self._selectables
    drdw = self._doReadOrWrite
    call_with_logger = log.callWithLogger
    for fd, event in events:
        try:
            selectable = selectables[fd]
        except KeyError:
            continue
        # EPOLLIN with or without EPOLLHUP/EPOLLERR (a reset): _doReadOrWrite would only doRead too.
        if (event & _READ_ONLY) != EPOLLIN or not getattr(selectable, "_txgate_lean", False) \
                or selectable.fileno() == -1:
            call_with_logger(selectable, drdw, selectable, fd, event)
            continue
        in_read = False  # as in _doReadOrWrite: True only once doRead has returned
        try:
            why = selectable.doRead()
            in_read = True
        except BaseException:
            why = sys.exc_info()[1]
            call_with_logger(selectable, log.err)  # in the connection's log context, as Twisted logs it
        if why:
            call_with_logger(selectable, self._disconnectSelectable, selectable, why, in_read)


def install(reactor) -> bool:
    """Give ``reactor`` the lean dispatch when it is Twisted's epoll reactor; True when installed."""
    if EPollReactor is None or not isinstance(reactor, EPollReactor):
        return False
    current = getattr(reactor, "doIteration", None)
    if getattr(current, "__func__", None) is _lean_do_poll:
        return True
    if getattr(current, "__func__", None) is not EPollReactor.doPoll:
        return False  # someone else's loop: leave it
    reactor._txgate_polls = 0
    reactor.doIteration = MethodType(_lean_do_poll, reactor)
    return True


def uninstall(reactor) -> None:
    """Back to Twisted's own dispatch (tests)."""
    if getattr(getattr(reactor, "doIteration", None), "__func__", None) is _lean_do_poll:
        del reactor.doIteration


__all__ = ["install", "uninstall"]
