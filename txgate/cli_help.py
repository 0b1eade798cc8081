# -*- test-case-name: tests.test_cli -*-
"""How every `txgate` command describes itself: a description, its exit statuses and an example."""
from __future__ import annotations

import argparse
import textwrap

# The status every command shares (argparse's); a command adds its own 0, 1 (and 3 where it talks to a gateway).
USAGE_ERROR = "usage error (unknown command or option, missing argument)"


def add_command(sub, name: str, *, summary: str, description: str, exits: dict[int, str],
                examples: tuple[str, ...], func=None) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``description``, its exit statuses and ``examples``."""
    lines = ["exit status:"]
    for code, meaning in sorted({**exits, 2: USAGE_ERROR}.items()):
        lines.append(f"  {code}  {meaning}")
    lines.append("")
    lines.append("example:" if len(examples) == 1 else "examples:")
    lines.extend(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=summary, description=textwrap.dedent(description).strip(),
                       epilog="\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_group(sub, name: str, *, summary: str, description: str, dest: str):
    """A command with subcommands (``txgate store``, ``txgate cert``): returns its subparsers."""
    p = sub.add_parser(name, help=summary, description=textwrap.dedent(description).strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return p.add_subparsers(dest=dest, required=True, metavar="COMMAND")


def add_config_option(p: argparse.ArgumentParser) -> None:
    """``--config/-c gw.ini`` (the embedded defaults without it)."""
    p.add_argument("--config", "-c", metavar="GW.INI", help="path to gw.ini (default: the embedded defaults)")
