"""txgate.http.h2lean: a slimmed hyper-h2 connection behaves as a plain one."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from h2.settings import SettingCodes, Settings

from txgate.http.h2lean import LeanSettings, slim

SC = SettingCodes


def _view(s: Settings) -> dict:
    """Current value (or None) and in-flight values of every setting."""
    out = {}
    for k, v in s._settings.items():
        vals = list(v) if isinstance(v, (list, tuple)) or v.__class__.__name__ == "deque" else [v]
        out[k] = vals
    return out


def test_defaults_and_initial_values_match_h2():
    init = {SC.MAX_CONCURRENT_STREAMS: 100, SC.INITIAL_WINDOW_SIZE: 1 << 20}
    assert _view(LeanSettings(client=False, initial_values=init)) == _view(Settings(client=False, initial_values=init))
    assert _view(LeanSettings(client=True)) == _view(Settings(client=True))
    lean = LeanSettings(client=False, initial_values=init)
    assert lean.max_concurrent_streams == 100 and lean.initial_window_size == 1 << 20
    assert lean.max_header_list_size is None


def test_changes_apply_in_order_on_acknowledge():
    lean, ref = LeanSettings(client=False), Settings(client=False)
    for s in (lean, ref):
        s[SC.INITIAL_WINDOW_SIZE] = 1000
        s[SC.INITIAL_WINDOW_SIZE] = 2000
        s[SC.MAX_CONCURRENT_STREAMS] = 7  # new to the object: no current value until acknowledged
    assert _view(lean) == _view(ref)
    assert lean.max_concurrent_streams == ref.max_concurrent_streams
    for _ in range(3):
        a, b = lean.acknowledge(), ref.acknowledge()
        assert {k: (v.original_value, v.new_value) for k, v in a.items()} == {
            k: (v.original_value, v.new_value) for k, v in b.items()}
        assert _view(lean) == _view(ref)
    assert lean.initial_window_size == 2000 and lean.max_concurrent_streams == 7


def test_invalid_values_are_refused_as_by_h2():
    import pytest
    from h2.exceptions import InvalidSettingsValueError

    with pytest.raises(InvalidSettingsValueError):
        LeanSettings(client=False)[SC.MAX_FRAME_SIZE] = 1


def _serve_one_request(server) -> list:
    client = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({SC.INITIAL_WINDOW_SIZE: 12345, SC.HEADER_TABLE_SIZE: 8192})
    server.initiate_connection()
    events = server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for i in range(2):
        client.send_headers(1 + 2 * i, [(":method", "GET"), (":scheme", "https"), (":path", "/x"),
                                        (":authority", "example.com"), ("x-custom", "yes")], end_stream=True)
        events += server.receive_data(client.data_to_send())
        server.send_headers(1 + 2 * i, [(b":status", b"200"), (b"x-reply", b"1")], end_stream=True)
        events += client.receive_data(server.data_to_send())
    events += server.receive_data(client.data_to_send())
    return events


def test_a_slimmed_connection_serves_requests_as_a_plain_one():
    def make(slimmed):
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding=None))
        if slimmed:
            slim(c)
            c.local_settings = LeanSettings(client=False, initial_values={SC.MAX_CONCURRENT_STREAMS: 10})
        else:
            c.local_settings = Settings(client=False, initial_values={SC.MAX_CONCURRENT_STREAMS: 10})
        return c

    plain, lean = make(False), make(True)
    ev_plain, ev_lean = _serve_one_request(plain), _serve_one_request(lean)
    assert [e.__class__ for e in ev_lean] == [e.__class__ for e in ev_plain]
    req = [e for e in ev_lean if isinstance(e, h2.events.RequestReceived)]
    assert len(req) == 2 and (b"x-custom", b"yes") in req[1].headers
    assert lean.remote_settings.initial_window_size == 12345 == plain.remote_settings.initial_window_size
    assert lean.encoder.header_table.dynamic_entries == list(plain.encoder.header_table.dynamic_entries)
    assert lean.decoder.header_table.dynamic_entries == list(plain.decoder.header_table.dynamic_entries)
    assert lean.local_settings.max_concurrent_streams == 10
