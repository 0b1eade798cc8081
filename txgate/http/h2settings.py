# -*- test-case-name: tests.test_h2settings -*-
"""HTTP/2 settings for hyper-h2 without a ``deque`` per setting (memory per idle h2 connection).

h2's ``Settings`` keeps every setting's value and its in-flight changes in a ``collections.deque``:
~600 bytes each, about a dozen per connection (local and remote settings), most of an idle h2
connection's Python memory. `LeanSettings` keeps a short list instead, with the same behaviour
(current value first, changes applied in order when acknowledged).
"""
from __future__ import annotations

from h2.settings import ChangedSetting, Settings


class LeanSettings(Settings):
    """`h2.settings.Settings` storing each setting's values in a list (same API and semantics)."""

    def __init__(self, client: bool = True, initial_values=None) -> None:
        super().__init__(client=client, initial_values=initial_values)
        self._settings = {k: list(v) for k, v in self._settings.items()}

    def acknowledge(self) -> dict:
        """Apply the oldest in-flight value of every setting that has one; {setting: ChangedSetting}."""
        changed = {}
        for k, v in self._settings.items():
            if len(v) > 1:
                old = v.pop(0)
                changed[k] = ChangedSetting(k, old, v[0])
        return changed

    def __setitem__(self, key, value: int) -> None:
        super().__setitem__(key, value)
        values = self._settings[key]
        if values.__class__ is not list:  # a setting new to this object: h2 made it a deque
            self._settings[key] = list(values)


def lean_remote_settings(conn) -> None:
    """Give a fresh h2 connection a `LeanSettings` for its peer's settings (same initial state)."""
    conn.remote_settings = LeanSettings(client=not conn.config.client_side)
