# -*- test-case-name: tests.test_store -*-
"""The directory backend: JSON records under ``state_dir/store/`` (dirs 0700, files 0600, atomic writes).

Layout: ``entries/<ID>.json``, ``names/<NAME>.json``, ``pending/<NAME>.json``, ``.lock`` (flock);
a ``/`` in a name is written ``%2F`` in its file name.
Change callbacks fire for writes made through this process's store objects.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import datetime
from typing import Any, Callable, Iterator

from txgate.fileio import make_private_dir, write_private_file
from txgate.store.base import Call, Callback, LocalSubscriptions, RecordStore, Subscription
from txgate.store.model import StoreError

# One registry per directory, so two store objects on the same directory in one process see each other.
_REGISTRIES: dict[str, LocalSubscriptions] = {}


class DirectoryStore(RecordStore):
    """A store kept in a local directory (``open_store("dir", state_dir, secret)`` uses ``state_dir/store``)."""

    def __init__(
        self, root: str, secret: bytes | str | None = None, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(secret, clock=clock)
        self.root = os.path.abspath(root)
        try:
            for sub in ("", "entries", "names", "pending"):
                make_private_dir(os.path.join(self.root, sub))
        except OSError as e:
            raise StoreError("backend_error", f"{self.root}: cannot create the store directory: {e.strerror or e}") from None
        self._subs = _REGISTRIES.setdefault(self.root, LocalSubscriptions())

    def __repr__(self) -> str:
        return f"<DirectoryStore {self.root} encrypted={self._box is not None}>"

    # --- files --------------------------------------------------------------------------------

    def _path(self, kind: str, key: str) -> str:
        # A namespaced name (acme/NAME) stays one file: '%' is not allowed in names, so this is reversible.
        return os.path.join(self.root, kind, f"{key.replace('/', '%2F')}.json")

    def _read(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self._path(kind, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError("backend_error", f"{path}: cannot read: {e.strerror or e}") from None
        try:
            record = json.loads(data)
        except ValueError:
            raise StoreError("backend_error", f"{path}: corrupted store record") from None
        if not isinstance(record, dict):
            raise StoreError("backend_error", f"{path}: corrupted store record")
        return record

    def _write(self, kind: str, key: str, record: dict[str, Any]) -> None:
        path = self._path(kind, key)
        try:
            write_private_file(path, json.dumps(record, sort_keys=True, indent=1).encode(), 0o600)
        except OSError as e:
            raise StoreError("backend_error", f"{path}: cannot write: {e.strerror or e}") from None

    def _remove(self, kind: str, key: str) -> None:
        try:
            os.unlink(self._path(kind, key))
        except FileNotFoundError:
            pass

    def _keys(self, kind: str) -> list[str]:
        try:
            names = os.listdir(os.path.join(self.root, kind))
        except FileNotFoundError:
            return []
        return [n[:-5].replace("%2F", "/") for n in names if n.endswith(".json") and not n.startswith(".")]

    # --- primitives ---------------------------------------------------------------------------

    def _r_get_entry(self, entry_id: str) -> dict[str, Any] | None:
        return self._read("entries", entry_id)

    def _r_put_entry(self, entry_id: str, record: dict[str, Any]) -> None:
        self._write("entries", entry_id, record)

    def _r_delete_entry(self, entry_id: str) -> None:
        self._remove("entries", entry_id)

    def _r_entry_ids(self) -> list[str]:
        return self._keys("entries")

    def _r_get_name(self, name: str) -> dict[str, Any] | None:
        return self._read("names", name)

    def _r_put_name(self, name: str, record: dict[str, Any]) -> None:
        self._write("names", name, record)

    def _r_delete_name(self, name: str) -> None:
        self._remove("names", name)

    def _r_names(self) -> list[str]:
        return self._keys("names")

    def _r_get_pending(self, name: str) -> dict[str, Any] | None:
        return self._read("pending", name)

    def _r_put_pending(self, name: str, record: dict[str, Any]) -> None:
        self._write("pending", name, record)

    def _r_delete_pending(self, name: str) -> None:
        self._remove("pending", name)

    def _r_pending_names(self) -> list[str]:
        return self._keys("pending")

    @contextlib.contextmanager
    def _backend_lock(self) -> Iterator[None]:
        path = os.path.join(self.root, ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _notify(self, name: str, op: str) -> None:
        self._subs.dispatch(name)

    def subscribe(self, callback: Callback, *, call: Call | None = None) -> Subscription:
        return self._subs.add(callback, call)
