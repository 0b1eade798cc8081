"""txgate.http.h2settings: LeanSettings behaves as h2's Settings."""
from __future__ import annotations

import h2.connection
import h2.config
from h2.settings import SettingCodes, Settings

from txgate.http.h2settings import LeanSettings, lean_remote_settings

SC = SettingCodes


def _same(lean: LeanSettings, ref: Settings) -> None:
    assert lean._settings == {k: list(v) for k, v in ref._settings.items()}
    assert lean.max_concurrent_streams == ref.max_concurrent_streams
    assert lean.max_header_list_size == ref.max_header_list_size


def test_defaults_and_initial_values_match_h2():
    init = {SC.MAX_CONCURRENT_STREAMS: 100, SC.INITIAL_WINDOW_SIZE: 1 << 20}
    _same(LeanSettings(client=False, initial_values=init), Settings(client=False, initial_values=init))
    _same(LeanSettings(client=True), Settings(client=True))


def test_changes_apply_in_order_on_acknowledge():
    lean, ref = LeanSettings(client=False), Settings(client=False)
    for s in (lean, ref):
        s[SC.INITIAL_WINDOW_SIZE] = 1000
        s[SC.INITIAL_WINDOW_SIZE] = 2000
        s[SC.MAX_CONCURRENT_STREAMS] = 7  # new to the object: no current value until acknowledged
    _same(lean, ref)
    a, b = lean.acknowledge(), ref.acknowledge()
    assert {k: (v.original_value, v.new_value) for k, v in a.items()} == {
        k: (v.original_value, v.new_value) for k, v in b.items()}
    _same(lean, ref)
    assert lean.acknowledge().keys() == ref.acknowledge().keys()
    _same(lean, ref)
    assert lean.initial_window_size == 2000 and lean.max_concurrent_streams == 7


def test_values_are_kept_in_lists():
    s = LeanSettings(client=False)
    s[SC.ENABLE_CONNECT_PROTOCOL] = 1
    s[SC.MAX_FRAME_SIZE] = 1 << 15
    assert all(v.__class__ is list for v in s._settings.values())


def test_a_connection_with_lean_settings_talks_to_a_client():
    server = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    lean_remote_settings(server)
    server.local_settings = LeanSettings(client=False, initial_values={SC.MAX_CONCURRENT_STREAMS: 10})
    client = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({SC.INITIAL_WINDOW_SIZE: 12345})
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert server.remote_settings.initial_window_size == 12345
    assert server.local_settings.max_concurrent_streams == 10
