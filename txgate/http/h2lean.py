# -*- test-case-name: tests.test_h2lean -*-
"""hyper-h2 connection state made smaller: memory per idle HTTP/2 connection.

A fresh ``h2.connection.H2Connection`` holds, besides what it needs, about a dozen
``collections.deque`` objects (~600 bytes each: one per setting in its local and remote
``Settings``, one per HPACK table) and a dict of a dozen bound methods for frame dispatch:
most of an idle h2 connection's Python memory. `slim` replaces them with equivalents that
behave the same: settings kept as a plain value (a list only while a change is in flight),
HPACK tables as lists, frame dispatch through one small object binding the method on use.
"""
from __future__ import annotations

from h2.exceptions import InvalidSettingsValueError
from h2.settings import ChangedSetting, Settings, _validate_setting


class LeanSettings(Settings):
    """`h2.settings.Settings` storing a setting's value itself, or a list while changes are in flight."""

    def __init__(self, client: bool = True, initial_values=None) -> None:
        super().__init__(client=client, initial_values=initial_values)
        self._settings = {k: (v[0] if len(v) == 1 else list(v)) for k, v in self._settings.items()}

    def acknowledge(self) -> dict:
        """Apply the oldest in-flight value of every setting that has one; {setting: ChangedSetting}."""
        changed = {}
        settings = self._settings
        for k, v in settings.items():
            if v.__class__ is list:
                old = v.pop(0)
                changed[k] = ChangedSetting(k, old, v[0])
                if len(v) == 1:
                    settings[k] = v[0]
        return changed

    def __getitem__(self, key) -> int:
        v = self._settings[key]
        if v.__class__ is list:
            v = v[0]
        if v is None:  # a setting only proposed so far has no current value
            raise KeyError(key)
        return v

    def __setitem__(self, key, value: int) -> None:
        invalid = _validate_setting(key, value)
        if invalid:
            raise InvalidSettingsValueError(f"Setting {key} has invalid value {value}", error_code=invalid)
        settings = self._settings
        if key not in settings:
            settings[key] = [None, value]  # proposed: no current value until acknowledged (as h2)
            return
        current = settings[key]
        if current.__class__ is list:
            current.append(value)
        else:
            settings[key] = [current, value]


class _Entries(list):
    """An HPACK dynamic table's entries: the part of deque's interface hpack uses, on a list."""

    __slots__ = ()

    def appendleft(self, item) -> None:
        self.insert(0, item)


class _FrameTable:
    """h2's frame-class -> handler table, binding the handler when a frame comes (not per connection)."""

    __slots__ = ("conn",)
    names: dict = {}

    def __init__(self, conn) -> None:
        self.conn = conn

    def __getitem__(self, frame_class):
        return getattr(self.conn, self.names[frame_class])


def slim(conn) -> None:
    """Make a freshly created h2 connection small (same behaviour); call before any frame is exchanged.

    Its local settings are the caller's to set (a `LeanSettings` with the initial values)."""
    table = conn._frame_dispatch_table
    if not _FrameTable.names:
        _FrameTable.names = {cls: fn.__name__ for cls, fn in table.items()}
    if _FrameTable.names.keys() == table.keys():
        conn._frame_dispatch_table = _FrameTable(conn)
    conn.remote_settings = LeanSettings(client=not conn.config.client_side)
    for table in (conn.encoder.header_table, conn.decoder.header_table):
        if not table.dynamic_entries:
            table.dynamic_entries = _Entries()
