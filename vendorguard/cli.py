"""The ``vendorguard`` command.

Each command is a function that adds its parser to the ``COMMANDS`` subparsers and sets a
``handler`` default: ``handler(args) -> exit status``. Adding a command is writing one such
function and listing it in ``COMMANDS``.

Exit statuses: 0 success, 1 the command failed (e.g. it would overwrite files), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeAlias

from .remote import add_control, add_status

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["main"]

OK, FAILED, USAGE = 0, 1, 2

Handler: TypeAlias = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# -- vendorguard monitoring ----------------------------------------------------------------

BUNDLE_PACKAGE = "vendorguard.monitoring"
BUNDLE_SUFFIXES = (".json", ".yml")


def bundle_files() -> Iterator[tuple[PurePosixPath, Traversable]]:
    """The monitoring bundle's files (dashboards, alert rules, their tests), by relative path."""

    def walk(node: Traversable, prefix: PurePosixPath) -> Iterator[
            tuple[PurePosixPath, Traversable]]:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                if not child.name.startswith(("_", ".")):
                    yield from walk(child, prefix / child.name)
            elif child.name.endswith(BUNDLE_SUFFIXES):
                yield prefix / child.name, child

    yield from walk(files(BUNDLE_PACKAGE), PurePosixPath())


def monitoring_export(args: argparse.Namespace) -> int:
    """Write the monitoring bundle into ``args.dir``; never overwrite unless ``args.force``."""
    dest: Path = args.dir
    bundle = list(bundle_files())
    if not bundle:  # pragma: no cover - a broken installation
        print(f"vendorguard: no monitoring bundle found in {BUNDLE_PACKAGE}", file=sys.stderr)
        return FAILED
    if dest.exists() and not dest.is_dir():
        print(f"vendorguard: {dest} exists and is not a directory", file=sys.stderr)
        return FAILED
    targets = [(dest.joinpath(*rel.parts), source) for rel, source in bundle]
    existing = [target for target, _ in targets if target.exists()]
    if existing and not args.force:
        for target in existing:
            print(f"vendorguard: {target} exists", file=sys.stderr)
        print("vendorguard: nothing written; use --force to overwrite", file=sys.stderr)
        return FAILED
    try:
        for target, source in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            print(f"wrote {target}")
    except OSError as exc:
        print(f"vendorguard: {exc}", file=sys.stderr)
        return FAILED
    return OK


def add_monitoring(commands: Commands) -> None:
    parser = commands.add_parser(
        "monitoring", help="the Grafana dashboard and Prometheus alert rules",
        description="The monitoring bundle: a Grafana dashboard, Prometheus alert rules and "
                    "their promtool tests.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export", help="write the bundle into a directory",
        description="Write the dashboard, the alert rules and their promtool tests into DIR "
                    "(created if needed).")
    export.add_argument("dir", type=Path, metavar="DIR", help="the directory to write into")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.set_defaults(handler=monitoring_export)


# -- vendorguard discover -------------------------------------------------------------------

def discover_run(args: argparse.Namespace) -> int:
    from .discovery import run_command

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return run_command(command)


def add_discover(commands: Commands) -> None:
    parser = commands.add_parser(
        "discover", help="run a Python program and list the vendors it called",
        description="Run a Python program (a script, -m module, or pytest) with discovery on, "
                    "then print the hosts it sent HTTP requests to and which requests no "
                    "guard covered. Example: vendorguard discover -- python app.py")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the program and its arguments")
    parser.set_defaults(handler=discover_run)


# -- vendorguard demo -----------------------------------------------------------------------

def add_demo(commands: Commands) -> None:
    from .demo import add_arguments, run

    parser = commands.add_parser(
        "demo", help="watch an app ride out its vendors' outages (local, no network)",
        description="Run a small shop against local stand-ins for LaunchDarkly, SendGrid and "
                    "Stripe through the real SDKs and vendorguard's drop-ins, while a timeline "
                    "breaks them one after another; show each vendor's health live, serve the "
                    "status page, /metrics and /vendors, and check at the end that no "
                    "confirmation was lost and no order charged twice. Exit status: 0 when "
                    "that holds, 1 when it does not (or the demo cannot start), 130 after "
                    "Ctrl-C (the summary so far is printed first).")
    add_arguments(parser)
    parser.set_defaults(handler=run)


# -- the command line ----------------------------------------------------------------------

COMMANDS: tuple[Callable[[Commands], None], ...] = (
    add_monitoring,
    add_discover,
    add_control,
    add_status,
    add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vendorguard", description="Guards and visibility for third-party vendor calls.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.version:
        from . import __version__
        print(__version__)
        return OK
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return USAGE
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
