# -*- test-case-name: tests.test_status_page -*-
"""The admin API's status page (``GET /``): one server-rendered HTML page, no script, every value escaped.

``render_status`` is a pure function of what the facade and the metrics report: listeners with their
certificates (days to expiry as bars), APIs with their upstream targets and state, and the recent failed
TLS handshakes. The page is served with a Content-Security-Policy that allows no script, no frame and no
outside resource.
"""
from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Iterable

from txgate.admin.facade import HeldCertificate, TargetState

BAR_DAYS = 90  # a full bar: 90 days or more left
CSP = b"default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; frame-ancestors 'none'; form-action 'none'"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;max-width:70em;background:#fff}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#eee;font-weight:600}.muted{color:#777}.mono{font-family:ui-monospace,monospace}
.bar{display:inline-block;width:12em;height:.8em;background:#e4e4e4;vertical-align:middle;margin-right:.5em}
.bar span{display:block;height:100%}
.ok{background:#3a3}.warn{background:#e90}.bad{background:#c33}
.state-up{color:#282}.state-failing{color:#b22;font-weight:600}.state-unused,.state-builtin{color:#777}
"""


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days from ``now`` to ``not_after`` (negative once expired)."""
    return int((not_after - now).total_seconds() // 86400)


def expiry_class(days: int, warning_days: int) -> str:
    """The bar's colour class: expired or under a week "bad", under the warning threshold "warn"."""
    if days < 7:
        return "bad"
    return "warn" if days < warning_days else "ok"


def _bar(days: int, warning_days: int) -> str:
    width = max(0, min(100, round(100 * days / BAR_DAYS)))
    word = f"{days} days left" if days >= 0 else f"expired {-days} days ago"
    return (f'<span class="bar" title="{escape(word)}"><span class="{expiry_class(days, warning_days)}" '
            f'style="width:{width}%"></span></span>{escape(word)}')


def _certificates_of(listener: str, held: Iterable[HeldCertificate]) -> list[HeldCertificate]:
    """The listener's certificates: its own ("listener:NAME") and its SNI ones ("listener:NAME sni:HOST")."""
    own = f"listener:{listener}"
    return [h for h in held if h.name == own or h.name.startswith(own + " ")]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_status(*, version: str, listeners: list[tuple[str, str, bool]], held: list[HeldCertificate],
                  targets: list[TargetState], failures: list[tuple[float, str, str, str]], now: datetime,
                  warning_days: int = 30) -> bytes:
    """The status page, UTF-8 HTML."""
    e = escape
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>txgate status</title><style>{STYLE}</style></head><body>",
           f'<h1>txgate status</h1><p class="muted">txgate {e(version)} &middot; {e(_when(now.timestamp()))}</p>']

    out.append("<h2>Listeners and certificates</h2><table><tr><th>listener</th><th>address</th>"
               "<th>certificate</th><th>expires</th></tr>")
    for name, address, tls in listeners:
        certs = _certificates_of(name, held) if tls else []
        scheme = "https" if tls else "http"
        first = (f'<td class="listener">{e(name)}</td><td class="mono">{e(scheme)}://{e(address)}</td>')
        if not certs:
            out.append(f'<tr>{first}<td class="muted">{"(no certificate)" if tls else "plain HTTP"}</td><td></td></tr>')
        for i, cert in enumerate(certs):
            lead = first if i == 0 else "<td></td><td></td>"
            label = cert.name[len(f"listener:{name}"):].strip() or cert.subject
            days = days_left(cert.not_after, now)
            out.append(f'<tr>{lead}<td title="{e(cert.subject)}">{e(label)}</td>'
                       f'<td class="expiry">{_bar(days, warning_days)}</td></tr>')
    out.append("</table>")

    others = [h for h in held if h.role not in ("listener", "sni")]
    if others:
        out.append("<h2>Other certificates</h2><table><tr><th>certificate</th><th>role</th><th>expires</th></tr>")
        for cert in others:
            days = days_left(cert.not_after, now)
            out.append(f"<tr><td>{e(cert.name)}</td><td>{e(cert.role)}</td>"
                       f'<td class="expiry">{_bar(days, warning_days)}</td></tr>')
        out.append("</table>")

    out.append("<h2>APIs and upstream targets</h2><table><tr><th>API</th><th>route</th><th>target</th>"
               "<th>connections</th><th>state</th></tr>")
    for t in targets:
        conns = "" if t.connections is None else str(t.connections)
        state = t.state + (f": {t.detail}" if t.detail else "")
        cls = "state-" + t.state.replace(" ", "-")
        out.append(f'<tr><td>{e(t.api)}</td><td class="mono">{e(t.route)}</td><td class="mono">{e(t.target)}</td>'
                   f'<td>{e(conns)}</td><td class="{e(cls)}">{e(state)}</td></tr>')
    out.append("</table>")

    out.append("<h2>Recent failed TLS handshakes</h2>")
    if not failures:
        out.append('<p class="muted" id="no-failures">None since the gateway started.</p>')
    else:
        out.append('<table id="failures"><tr><th>when</th><th>listener</th><th>client</th><th>result</th></tr>')
        for when, listener, client, result in failures:
            out.append(f'<tr class="failure"><td>{e(_when(when))}</td><td>{e(listener)}</td>'
                       f'<td class="mono">{e(client)}</td><td>{e(result)}</td></tr>')
        out.append("</table>")
    out.append("</body></html>\n")
    return "".join(out).encode("utf-8")
