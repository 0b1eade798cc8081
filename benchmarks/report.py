"""The results: a table that fits 100 columns (every column with ``--verbose``) and the ``--plot`` chart."""
from __future__ import annotations

import textwrap

WIDTH = 100

# What one txgate process on one CPU core should sustain, per scenario.
GOALS = {"1": 12000.0, "2": 8000.0, "3": 900.0}
GOALS_TEXT = ("Goal: what one txgate process on one CPU core should sustain: (1) 12,000 requests/s over "
              "keep-alive HTTPS, (2) 8,000 requests/s over HTTP/2, (3) 900 new TLS connections/s. "
              "A miss never fails the harness.")
SHORT = {
    "1": "(1) HTTPS h1 keep-alive",
    "2": "(2) HTTPS h2, {streams} streams",
    "3": "(3) new TLS conn/request",
    "3r": "(3r) resumed TLS conn/req",
    "3m": "(3m) mTLS new conn/request",
    "3b": "(3b) bursts of new TLS conns",
    "baseline": "(1) plain HTTP, no proxy",
}


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _table(head: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(head[i]), *(len(l[i]) for l in lines)) for i in range(len(head))]

    def fmt(cols):
        return "| " + " | ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                                 for i, c in enumerate(cols)) + " |"

    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines]


def _goal(r) -> str:
    if r["target"] is None:
        return "-"
    return f"{r['target']:,.0f} {r['result']}"


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, break_on_hyphens=False)


def render(rows, meta: str, notes=(), streams: int = 10) -> str:
    """The short table (at most 100 columns) with its footnotes."""
    head = ["scenario", "server", "rate /s", "p50 ms", "p99 ms", "CPU us/req", "goal"]
    lines, marks, seen = [], [], {}
    for r in rows:
        server = r["server"]
        if r["note"]:
            if r["note"] not in seen:  # rows with the same note share its mark: the column stays narrow
                marks.append(f"{'*' * (len(marks) + 1)} {SHORT[r['scenario']].format(streams=streams)}, "
                             f"{server}: {r['note']}")
                seen[r["note"]] = len(marks)
            server += "*" * seen[r["note"]]
        lines.append([
            SHORT[r["scenario"]].format(streams=streams), server, f"{r['rate']:,.0f}",
            _ms(r["p50_ms"]), _ms(r["p99_ms"]),
            "-" if r["server_cpu_us_per_req"] is None else f"{r['server_cpu_us_per_req']:.0f}", _goal(r),
        ])
    out = _table(head, lines) + [""]
    for m in marks:
        out.extend(_wrap(m))
    out.extend(_wrap(meta))
    engines = list(dict.fromkeys(r["engine"] for r in rows if r.get("engine")))
    if engines:
        out.extend(_wrap(f"txgate {' / '.join(engines)} = txgate with [gateway] h2_engine = {' / '.join(engines)}."))
    out.extend(_wrap("rate /s = requests per second ((3): new TLS connections per second); CPU us/req = the server's CPU time (user + system) per request or connection: its "
                     "process and workers for txgate, its worker for nginx. " + GOALS_TEXT
                     + " --verbose shows every column."))
    for n in notes:
        out.extend(_wrap(n))
    return "\n".join(out)


def render_verbose(rows, meta: str, notes=()) -> str:
    """Every column (wider than 100 characters)."""
    head = ["scenario", "server", "rate", "p50 ms", "p99 ms", "srv CPU s", "CPU us/req", "core %", "at 100%",
            "load CPU s", "errors", "goal", "result"]
    lines = []
    for r in rows:
        lines.append([
            r["title"] + (f" [{r['note']}]" if r["note"] else ""), r["server"],
            f"{r['rate']:,.0f} {r['unit']}", _ms(r["p50_ms"]), _ms(r["p99_ms"]), f"{r['server_cpu_s']:.2f}",
            "-" if r["server_cpu_us_per_req"] is None else f"{r['server_cpu_us_per_req']:.0f}",
            "-" if r["server_core_pct"] is None else f"{r['server_core_pct']:.0f}",
            "-" if not r["server_cpu_us_per_req"] else f"{1e6 / r['server_cpu_us_per_req']:,.0f}",
            f"{r['load_cpu_s']:.2f}", str(r["errors"]),
            "-" if r["target"] is None else f">= {r['target']:,.0f}", r["result"] or "-",
        ])
    out = _table(head, lines) + ["", meta]
    out.append("srv CPU s = utime+stime of the server over the run (txgate: its process and workers; nginx: its "
               "worker); core % = that / wall time; at 100% = 1e6 / CPU us/req, the rate if the server had its "
               "core to itself and saturated it (an estimate); load CPU s = h2load or the scenario-3 clients. "
               + GOALS_TEXT)
    out.extend(notes)
    return "\n".join(out)


def plot(rows, path: str, streams: int = 10) -> None:
    """Rates and CPU per request, per scenario, the servers side by side, as a PNG (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'txgate[benchmarks]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [k for k in ("1", "2", "3") if any(r["scenario"] == k for r in rows)]
    servers: list[str] = []
    for r in rows:
        if r["scenario"] in scenarios and r["server"] not in servers:
            servers.append(r["server"])
    if not scenarios or not servers:
        raise RuntimeError("--plot: no scenario row to plot")
    by = {(r["scenario"], r["server"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(servers)
    labels = [SHORT[k].format(streams=streams) for k in scenarios]
    for ax, field, title in ((axes[0], "rate", "rate (requests/s; (3): connections/s)"),
                             (axes[1], "server_cpu_us_per_req", "server CPU per request (us)")):
        for i, server in enumerate(servers):
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(scenarios))]
            ys = [(by.get((k, server)) or {}).get(field) or 0 for k in scenarios]
            bars = ax.bar(xs, ys, width, label=server)
            ax.bar_label(bars, labels=[f"{y:,.0f}" if y else "" for y in ys], fontsize=8)
        if field == "rate":
            for j, k in enumerate(scenarios):
                goal = GOALS.get(k)
                if goal:
                    ax.hlines(goal, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.set_xticks(range(len(scenarios)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("txgate beside its peers (dashed: txgate's goal on one core)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
