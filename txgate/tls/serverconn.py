# -*- test-case-name: tests.test_serverconn -*-
"""The server side of a downstream TLS connection: pyOpenSSL on memory BIOs, lean.

It replaces Twisted's ``TLSMemoryBIOProtocol`` (wrapped by a ``WrappingFactory``) on the listeners,
with the same behaviour towards the protocol above it (the listener's ``Negotiator``, then h1/h2):
handshake, ``handshakeCompleted()``, writes buffered until the handshake is done, close_notify sent
on ``loseConnection()`` and answered when the peer's arrives, ``abortConnection()``, producers
(pause/resume merged with the TCP transport's), handshake and TLS errors reported as the
``connectionLost`` reason (an unexpected EOF as ``ConnectionLost``). What it leaves out is per
connection cost: no interfaces copied onto every instance (``directlyProvides``), no registry of
protocols in the factory, one object per connection with ``__slots__``, no buffering timer, reads and
BIO flushes that end without an exception (``WantReadError``) where pyOpenSSL's bindings allow it,
one ``write`` on the TCP transport per burst of TLS output, and, once the handshake is done, the
data goes straight to the HTTP protocol the negotiator chose (one call less per read).
"""
from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.interfaces import IConsumer, INegotiated, IPushProducer, ISystemHandle, ITransport
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.tls import handover
from txgate.tls.membio import read_bio
from txgate.tls.outcomes import PlainHTTPRequest, represents_eof
from txgate.tls.records13 import CLOSE_NOTIFY, RecordError

try:  # The raw calls under pyOpenSSL's recv() and bio_read(), to tell "no more data" without raising.
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _SSL_read = _lib.SSL_read
    _SSL_set_accept_state = _lib.SSL_set_accept_state
    _SSL_do_handshake = _lib.SSL_do_handshake
    _SSL_write = _lib.SSL_write
    _BIO_write = _lib.BIO_write
    _SSL_get_error = _lib.SSL_get_error
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _BUF_SIZE = 1 << 15
    _BUF = _ffi.new("char[]", _BUF_SIZE)  # one scratch buffer: the reactor runs one call at a time
    _unpack = _ffi.buffer
except Exception:  # pragma: no cover - other pyOpenSSL builds: the public calls and their exceptions
    _SSL_read = None

# What a plain HTTP request on a TLS port gets (as nginx's 497), instead of a TLS alert nobody reads.
PLAIN_HTTP_HINT = b"plain HTTP request sent to a TLS port: use https:// instead of http://\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(PLAIN_HTTP_HINT), PLAIN_HTTP_HINT))
_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ",
            b"PRI * ")


def looks_like_plain_http(first: bytes) -> bool:
    """Do a connection's first bytes start an HTTP request rather than a TLS record (which starts 0x16)?"""
    return first[:1].isupper() and first.startswith(_METHODS)


_RECORD = 1 << 14  # a TLS record's plaintext at most: writes are fed to OpenSSL in pieces of this size

_EOF_LOST = Failure(CONNECTION_LOST)  # the reason of a TLS 1.3 connection ended without the peer's close_notify

_holding: list[TLSServerProtocol] | None = None  # connections whose output waits for release_writes()


def hold_writes() -> bool:
    """Until `release_writes`, small writes on downstream TLS connections stay in OpenSSL's output
    buffer; then each connection's output goes out in one TCP write. For one reactor callback that
    writes several times (an upstream read carrying a response's head, chunks and end): True when
    this call started the hold (pass it to `release_writes`)."""
    global _holding
    if _holding is not None:
        return False
    _holding = []
    return True


def release_writes(started: bool) -> None:
    """Send what was held since `hold_writes` returned ``started`` (True); nothing for a nested hold."""
    global _holding
    if not started:
        return
    held, _holding = _holding, None
    for conn in held:
        conn._corked = False
        rec = conn._rec
        if rec is None:
            conn._flush()
        elif rec.out:  # (_flush's records13 case; a close_notify may have taken the output already)
            conn.transport.write(rec.take_output())


def read_app_data(tls) -> bytes | None:
    """Decrypted bytes of the next record; None when OpenSSL needs more input. Raises like recv()."""
    if _SSL_read is not None:
        ssl = tls._ssl
        n = _SSL_read(ssl, _BUF, _BUF_SIZE)
        if n > 0:
            return _unpack(_BUF, n)[:]
        if _SSL_get_error(ssl, n) == _WANT_READ:
            return None
        tls._raise_ssl_error(ssl, n)  # ZeroReturnError, Error, SysCallError: as recv() raises them
        return None
    try:
        return tls.recv(_BUF_SIZE)
    except WantReadError:
        return None


def feed(tls, data: bytes) -> None:
    """Hand bytes received from the peer to OpenSSL (its incoming memory BIO)."""
    if _SSL_read is not None and data.__class__ is bytes:
        size = len(data)
        if _BIO_write(tls._into_ssl, data, size) == size:
            return
    tls.bio_write(data)  # the public call (and its error) for anything else


def encrypt(tls, data: bytes) -> int:
    """Give OpenSSL plaintext to send (at most one record's worth); bytes taken. Raises like send()."""
    if _SSL_read is not None and data.__class__ is bytes:
        ssl = tls._ssl
        n = _SSL_write(ssl, data, len(data))
        if n > 0:
            return n
        tls._raise_ssl_error(ssl, n)  # WantReadError, Error: as send() raises them
    return tls.send(data)


def handshake_step(tls) -> bool:
    """Advance the handshake with what was fed in: True once it is complete, False while OpenSSL
    waits for more input. Raises as do_handshake() does on a failure."""
    if _SSL_read is not None:
        ssl = tls._ssl
        n = _SSL_do_handshake(ssl)
        if n == 1:
            return True
        if _SSL_get_error(ssl, n) == _WANT_READ:
            return False
        tls._raise_ssl_error(ssl, n)
        return True  # pragma: no cover - _raise_ssl_error raised
    try:
        tls.do_handshake()
    except WantReadError:
        return False
    return True


def read_tls_output(tls) -> bytes:
    """Everything OpenSSL has written to its outgoing memory BIO (b"" when nothing)."""
    if _SSL_read is not None:
        return read_bio(tls._from_ssl)
    parts = []
    while True:
        try:
            parts.append(tls.bio_read(_BUF_SIZE))
        except WantReadError:
            return b"".join(parts)


@implementer(IPushProducer)
class _Membrane:
    """The producer registered on TCP for the application's one: TLS and TCP pauses merged."""

    __slots__ = ("producer", "paused")

    def __init__(self, producer) -> None:
        self.producer = producer
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()


@implementer(ITransport, ISystemHandle, INegotiated, IConsumer)
class TLSServerProtocol:
    """One accepted TLS connection: the TCP transport's protocol and the transport of ``app``."""

    __slots__ = ("factory", "transport", "app", "sink", "_tls", "_rec", "_done", "_lost", "_aborted",
                 "disconnecting", "connected", "_pending", "_producer", "_reason", "_fresh", "_corked", "_handing",
                 "__weakref__")

    def __init__(self, factory: TLSServerFactory, app) -> None:
        self.factory = factory
        self.app = app  # connectionLost and handshakeCompleted go here
        self.sink = app  # dataReceived goes here: the HTTP protocol itself once the negotiator chose it
        self.transport = None
        self._tls = None  # the pyOpenSSL connection (None once handed over to _rec)
        self._rec = None  # after a TLS 1.3 handshake: the records13.Records carrying on without OpenSSL
        self._done = False  # handshake completed
        self._lost = False  # TLS is over (shut down or failed): nothing more is read or written
        self._aborted = False
        self.disconnecting = False
        self.connected = False
        self._pending: list[bytes] | None = None  # application writes made before the handshake is done
        self._producer: _Membrane | None = None
        self._reason: Failure | None = None
        self._fresh = True  # nothing received yet
        self._corked = False  # while reads are delivered: small writes wait for the flush at the end
        # While handshakeCompleted runs before a hand-over: every record OpenSSL writes stays in its
        # output BIO, where _hand_over counts them (the next sequence number of records13's writes).
        self._handing = False

    # -- IProtocol (below: TCP) -------------------------------------------------------------
    def makeConnection(self, transport) -> None:
        self.transport = transport
        tls = self._tls = self.factory.creator.serverConnectionForTLS(self)
        if _SSL_read is not None:
            _SSL_set_accept_state(tls._ssl)  # (what set_accept_state() does, without its frame)
        else:
            tls.set_accept_state()
        self.connected = True
        self.app.makeConnection(self)
        # A server has nothing to send before the ClientHello: the handshake starts with the first bytes.

    def dataReceived(self, data: bytes) -> None:
        rec = self._rec
        if rec is not None:  # after a hand-over: records13's records, straight to the application
            if not self._lost:
                self._deliver_protected(rec, data)
            return
        if self._lost:
            return
        tls = self._tls
        if self._fresh:
            self._fresh = False
            if data[:1] != b"\x16" and looks_like_plain_http(data):  # (a handshake record starts 0x16)
                self.transport.write(PLAIN_HTTP_ANSWER)  # in clear: the client speaks no TLS
                self._failed(Failure(PlainHTTPRequest()))
                return
        feed(tls, data)
        if not self._done:
            if self._aborted:
                return
            try:
                done = handshake_step(tls)
            except Error:
                self._failed(Failure())
                return
            if not done:
                self._flush()
                return
            self._done = True
            corked = self._corked
            self._corked = True  # what the application writes now stays in OpenSSL until the hand-over
            self._handing = self.factory.hand_over
            try:
                done = getattr(self.app, "handshakeCompleted", None)
                if done is not None:
                    done()
                inner = getattr(self.app, "inner", None)
                if inner is not None:
                    self.sink = inner
                rest = None
                if self.factory.hand_over and not self.disconnecting and not self._lost:
                    rest = self._hand_over(tls)
            finally:
                if self._handing:
                    # Handed over or not (the application closing from handshakeCompleted, or raising):
                    # the traffic secrets stay on no object once the handshake is done (take() clears them too).
                    tls.traffic = None
                self._corked = corked
                self._handing = False
            if self._pending:
                self._unbuffer()
            if rest is not None:
                rec = self._rec
                if rec is not None:
                    self._deliver_protected(rec, rest)  # (sends the session tickets taken over too)
                return
        self._deliver()

    def _hand_over(self, tls) -> bytes | None:
        """TLS 1.3: carry on with `records13` and free OpenSSL's connection; the input it had not
        read yet (None: the connection stays with OpenSSL)."""
        if tls.traffic is None:  # TLS 1.2: no TLS 1.3 traffic secrets were seen
            return None
        out = read_tls_output(tls)
        taken = handover.take(tls, out)
        if taken is None:
            if out:
                self.transport.write(out)
            return None
        self._rec, rest = taken
        self._tls = None
        return rest

    def _deliver(self) -> None:
        """Hand every record OpenSSL decrypts to the application, then send what was written
        meanwhile: the responses written during the reads go out in one TCP write."""
        corked = self._corked
        self._corked = True
        try:
            self._deliver_records(self._tls)
        finally:
            self._corked = corked
            if not corked:
                self._flush()

    def _deliver_protected(self, rec, data: bytes) -> None:
        """After a hand-over: hand every record ``data`` completes to the application, then send
        what was written meanwhile (when anything was) in one TCP write."""
        corked = self._corked
        self._corked = True
        try:
            try:
                plain = rec.unprotect(data)  # one item per record
            except RecordError as e:
                if e.alert >= 0:
                    rec.alert(e.alert)
                self._failed(Failure(e))
                return
            for data in plain:
                if self._lost or self._aborted:
                    break
                self.sink.dataReceived(data)
            if rec.closed_by_peer and not self._lost:
                # The peer's close_notify: answer it, then the connection ends with the TCP one's reason.
                self._shutdown_tls()
                self._failed(None)
        finally:
            self._corked = corked
            if not corked and rec.out:
                self._flush()

    def _deliver_records(self, tls) -> None:
        while not self._lost:
            try:
                data = read_app_data(tls)
            except ZeroReturnError:
                # The peer's close_notify: answer it, then the connection ends with the TCP one's reason.
                self._shutdown_tls()
                self._failed(None)
                break
            except Error:
                self._failed(Failure())
                break
            if data is None:
                break
            if not self._aborted:
                self.sink.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        if not self._lost:
            rec = self._rec
            if rec is not None:
                # An EOF without the peer's close_notify is reported as OpenSSL's would be: lost.
                # (The TCP connection is gone: nothing more to send, nothing to close.)
                if not rec.closed_by_peer:
                    self._reason = _EOF_LOST
            else:
                # No more bytes will come: let OpenSSL see the EOF (a truncation is reported as an error).
                self._tls.bio_shutdown()
                self._deliver()
            self._lost = True
        reason = self._reason or reason
        self._reason = None
        self.connected = False
        app = self.app
        try:
            app.connectionLost(reason)
        finally:
            self._tls = self._rec = None
            self.sink = self.app = None

    # -- TLS state ---------------------------------------------------------------------------
    def _flush(self) -> None:
        rec = self._rec
        if rec is not None:
            if rec.out:
                self.transport.write(rec.take_output())
            return
        tls = self._tls
        if tls is not None:
            out = read_bio(tls._from_ssl) if _SSL_read is not None else read_tls_output(tls)
            if out:
                self.transport.write(out)

    def _shutdown_tls(self) -> None:
        """Send close_notify (or answer the peer's); close TCP once both sides have sent theirs."""
        rec = self._rec
        if rec is not None:
            rec.alert(CLOSE_NOTIFY)
            done = rec.closed_by_peer
        else:
            try:
                done = self._tls.shutdown()
            except Error:
                done = False  # mid-handshake OpenSSL may want to read first
        self._flush()
        if done:
            self.transport.loseConnection()

    def _failed(self, reason: Failure | None) -> None:
        """TLS is over: keep the reason for connectionLost (None: TCP's own), send any alert, close TCP."""
        if reason is not None and isinstance(reason.value, Error) and represents_eof(reason.value):
            reason = Failure(CONNECTION_LOST)
        if self._reason is None:
            self._reason = reason
        self._lost = True
        self._flush()
        self.transport.loseConnection()

    # -- ITransport (above: the application) -------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.disconnecting and self._producer is None:
            return
        self._write(data)

    def writeSequence(self, seq) -> None:
        if self.disconnecting and self._producer is None:  # (as write: one call less)
            return
        self._write(b"".join(seq))

    def _write(self, data: bytes) -> None:
        if self._lost:
            return
        if not self._done:
            self._buffer(data)
            return
        size = len(data)
        rec = self._rec
        if rec is not None:
            if rec.closed_by_us:
                return
            if size > _RECORD:
                # A record at a time, as with OpenSSL: TCP's buffer (and its producer) sees it as it comes.
                view = memoryview(data)
                for start in range(0, size, _RECORD):
                    rec.protect(view[start:start + _RECORD].tobytes())
                    self._flush()
                return
            rec.protect(data)
        elif size <= _RECORD:
            try:
                encrypt(self._tls, data)
            except WantReadError:
                self._buffer(data)
                return
            except Error:
                self._failed(Failure())
                return
        else:
            self._write_large(self._tls, data, size)
            return
        # A small write is protected: send it now, or at the end of the read being handled, or at
        # `release_writes` (the output of one reactor callback leaves in one TCP write).
        if self._corked:
            return
        if _holding is not None:
            self._corked = True
            _holding.append(self)
            return
        self._flush()

    def _write_large(self, tls, data: bytes, size: int) -> None:
        """More than a record's worth through OpenSSL: a record at a time."""
        sent = 0
        while sent < size:
            try:
                sent += encrypt(tls, data[sent:sent + _RECORD])
            except WantReadError:
                self._buffer(data[sent:])
                break
            except Error:
                self._failed(Failure())
                break
            # A piece at a time: OpenSSL's output BIO never holds more than one record (it keeps its size);
            # not before a hand-over, which must count every record written under the application key.
            if not self._handing:
                self._flush()

    def _buffer(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = []
        self._pending.append(data)
        if self._producer is not None:
            self._producer.pauseProducing()

    def _unbuffer(self) -> None:
        pending, self._pending = self._pending, None
        for data in pending:
            self._write(data)
        if self._pending:
            return
        if self._producer is not None:
            self._producer.resumeProducing()
        elif self.disconnecting:
            self._shutdown_tls()

    def loseConnection(self) -> None:
        """close_notify after what is written (abort if the handshake is not even done)."""
        if self.disconnecting or not self.connected:
            return
        if not self._done and not self._pending:
            self.abortConnection()
        self.disconnecting = True
        if not self._pending and self._producer is None:
            self._shutdown_tls()

    def abortConnection(self) -> None:
        self._aborted = True
        self.disconnecting = True
        if self._tls is not None or self._rec is not None:
            self._shutdown_tls()
        self.transport.abortConnection()

    def getHandle(self):
        """The pyOpenSSL Connection (peer certificate, version, cipher, ALPN, client-verify state)
        until the handshake is complete (what the listener reads then); None once a TLS 1.3
        connection was handed over to `records13` and OpenSSL's object is freed."""
        return self._tls

    def getPeerCertificate(self):
        tls = self._tls
        return tls.get_peer_certificate() if tls is not None else None

    @property
    def negotiatedProtocol(self) -> bytes | None:
        tls = self._tls
        if tls is None:
            rec = self._rec
            return rec.alpn if rec is not None else None
        return tls.get_alpn_proto_negotiated() or None

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(enabled)

    # Reading from TCP: the application's backpressure on the request stream.
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # -- IConsumer: the application's producer, paused by TCP's buffer or by our handshake wait --------
    def registerProducer(self, producer, streaming: bool) -> None:
        if self._lost:
            producer.stopProducing()
            return
        pull = None
        if not streaming:
            producer = pull = _PullToPush(producer, self)
        membrane = _Membrane(producer)
        self.transport.registerProducer(membrane, True)  # raises if one is registered already
        self._producer = membrane
        if pull is not None:
            pull.startStreaming()

    def unregisterProducer(self) -> None:
        membrane = self._producer
        if membrane is None:
            return
        if isinstance(membrane.producer, _PullToPush):
            membrane.producer.stopStreaming()
        self._producer = None
        self.transport.unregisterProducer()
        if self.disconnecting and not self._pending:
            self._shutdown_tls()

    def logPrefix(self) -> str:
        return self.factory.logPrefix()


class TLSServerFactory(Factory):
    """Accepted TCP connection -> `TLSServerProtocol` around the listener factory's protocol."""

    noisy = False

    def __init__(self, creator: Any, wrapped: Any) -> None:
        self.creator = creator  # IOpenSSLServerConnectionCreator (txgate.tls.server.ServerTLS)
        self.wrappedFactory = wrapped  # the ListenerFactory (max_connections: its accepting())
        # TLS 1.3 connections leave OpenSSL after their handshake (txgate.tls.handover).
        self.hand_over = bool(getattr(creator, "hand_over", False))

    def buildProtocol(self, addr):
        app = self.wrappedFactory.buildProtocol(addr)
        if app is None:
            return None
        return TLSServerProtocol(self, app)

    def logPrefix(self) -> str:
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        return f"{inner() if inner else self.wrappedFactory.__class__.__name__} (TLS)"


__all__ = ["TLSServerFactory", "TLSServerProtocol", "encrypt", "feed", "handshake_step", "hold_writes",
           "looks_like_plain_http", "read_app_data", "read_tls_output", "release_writes"]
