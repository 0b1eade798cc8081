"""HTTP/1.1 responses read off a raw (or TLS-wrapped) blocking socket, for tests that speak HTTP by hand."""
from __future__ import annotations


def read_response(sock, buffered: bytes = b"", *, default_length: int | None = None
                  ) -> tuple[int, list[str], bytes, bytes]:
    """One response with a Content-Length body: (status, head lines with the status line first, body,
    the bytes read past the body: a pipelined next response's start, to pass back as ``buffered``).

    A response without Content-Length fails the test unless ``default_length`` is given; so does a peer
    that closes before the whole response arrived.
    """
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    lengths = [v for k, _, v in (x.partition(":") for x in lines[1:]) if k.strip().lower() == "content-length"]
    assert lengths or default_length is not None, f"no Content-Length in {lines}"
    n = int(lengths[0]) if lengths else default_length
    while len(rest) < n:
        chunk = sock.recv(65536)
        assert chunk, f"closed {n - len(rest)} bytes before the end of the body"
        rest += chunk
    return int(lines[0].split()[1]), lines, rest[:n], rest[n:]
