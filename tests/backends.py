"""Extra test backends: a raw-socket streaming HTTP/1.1 server that never buffers bodies, and an h2 client."""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

CHUNK = 256 * 1024


class StreamingBackend:
    """HTTP/1.1 on loopback, one thread per connection, keep-alive.

    GET /download/N      -> N bytes of zeros (Content-Length), sent in 256 KiB writes;
                            ``sent`` counts bytes handed to the kernel, ``finished`` the completed downloads.
    POST|PUT /upload     -> reads the body (Content-Length or chunked) counting bytes, answers
                            {"received": N}; ``received`` is the running count.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.received = 0
        self.finished = 0
        self.uploads: list[int] = []
        self.closed = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb", buffering=CHUNK)
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if not self._answer(conn, f, target, headers):
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, f, target: str, headers: dict) -> bool:
        """Answer one request whose head was read; False ends the connection."""
        if target.startswith("/download/"):
            self._download(conn, int(target.split("/")[2]))
        elif target.startswith("/upload"):
            n = self._consume(f, headers)
            self.uploads.append(n)
            body = json.dumps({"received": n}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True

    def _download(self, conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % n)
        block = memoryview(bytes(CHUNK))
        left = n
        while left > 0:
            k = min(left, CHUNK)
            conn.sendall(block[:k])
            self.sent += k
            left -= k
        self.finished += 1

    def _consume(self, f, headers: dict) -> int:
        buf = bytearray(CHUNK)
        total = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    return total
                left = size
                while left:
                    got = f.readinto(memoryview(buf)[: min(left, CHUNK)])
                    if not got:
                        raise ValueError("eof in chunk")
                    left -= got
                    total += got
                    self.received += got
                f.readline()
        left = int(headers.get("content-length", "0"))
        while left:
            got = f.readinto(memoryview(buf)[: min(left, CHUNK)])
            if not got:
                raise ValueError("eof in body")
            left -= got
            total += got
            self.received += got
        return total


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class H2Client:
    """A small blocking HTTP/2 client over ssl (python h2), for header and stream tests."""

    def __init__(self, port: int, ca: str, host: str = "localhost", window: int | None = None) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            # A larger stream window, and a connection window that never limits.
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.conn.increment_flow_control_window(64 * 1024 * 1024)
        self.flush()
        self.authority = f"{host}:{port}"
        self.responses: dict[int, dict] = {}
        self.auto_ack: set[int] = set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, headers=(), method: str = "GET", body: bytes | None = None,
                auto_ack: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", self.authority), (":path", path)]
        hdrs += list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        self.responses[sid] = {"headers": None, "body": bytearray(), "ended": False, "reset": None}
        if auto_ack:
            self.auto_ack.add(sid)
        return sid

    def pump(self, timeout: float = 0.2) -> bool:
        """Read and process what arrives within timeout; False on EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        if not data:
            return False
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                r["headers"] = [(k.decode(), v.decode()) for k, v in ev.headers]
            elif isinstance(ev, h2.events.DataReceived):
                r["body"] += ev.data
                if ev.stream_id in self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    # The connection window is always given back; the stream's only when asked.
                    self.conn.increment_flow_control_window(ev.flow_controlled_length)
                    r.setdefault("unacked", 0)
                    r["unacked"] = r.get("unacked", 0) + ev.flow_controlled_length
            elif isinstance(ev, h2.events.StreamEnded):
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                r["reset"] = ev.error_code
                r["ended"] = True
        self.flush()
        return True

    def ack(self, sid: int) -> None:
        """Give a manually acknowledged stream its window back and switch it to auto."""
        r = self.responses[sid]
        n = r.get("unacked", 0)
        r["unacked"] = 0
        self.auto_ack.add(sid)
        if n:
            self.conn.increment_flow_control_window(n, sid)
            self.flush()

    def wait(self, sid: int, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while not self.responses[sid]["ended"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {sid} did not end within {timeout}s")
            if not self.pump():
                raise AssertionError("connection closed")
        return self.responses[sid]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
