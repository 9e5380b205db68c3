"""The ``vilgkit`` console script.

Each subcommand lives in ``vilgkit/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)`` and
``main(args) -> int``. User errors print one line and exit 2 (the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from vilgkit.errors import NotYetImplementedError, VilgkitError, VilgkitWarning, os_error_line

SUBCOMMANDS = [
    "run",
    "plan",
    "generate",
    "caption",
    "vqa",
    "eval",
    "tokenize",
    "export",
    "plugins",
    "print-config",
    "ablation",
    "serve",
    "humaneval",
]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors are one line and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise VilgkitError(f"{self.prog}: {message}")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):  # type: ignore[override]
        # argparse drops a value of '--' (``--top-p=--``) and hands the flag an empty list,
        # unconverted: refuse it here instead of letting a list reach the command
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    from vilgkit.plugins import get_plugin_manager, notify

    parser = _Parser(prog="vilgkit", description="Unified bidirectional image-text generation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    get_plugin_manager()
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"vilgkit.commands.{name.replace('-', '_')}")
        help_action = getattr(module, "HELP_ACTION", None)  # a command may print more than the usage
        sp = sub.add_parser(name, help=module.HELP, description=module.HELP, add_help=help_action is None)
        if help_action is not None:
            sp.add_argument("-h", "--help", action=help_action, help="show this help message and exit")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
        notify("vilgkit_add_cli_arguments", subcommand=name, parser=sp)
    return parser


def _version() -> str:
    import vilgkit

    return f"vilgkit {vilgkit.__version__}"


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """vilgkit's own warnings as one ``vilgkit: warning:`` line; others as Python prints them."""
    if issubclass(category, VilgkitWarning):
        return f"vilgkit: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _format_warning
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        # a command takes recipe overrides (--key value after its flags) only if it says so
        if extra and not getattr(args._module, "ACCEPTS_OVERRIDES", False):
            raise VilgkitError(f"vilgkit {args.command}: unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        return int(args._module.main(args) or 0)
    except NotYetImplementedError as err:
        print(f"vilgkit: {err}", file=sys.stderr)
        return 3
    except (VilgkitError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"vilgkit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # last resort for the machine's limits (full disk, read-only folder), anywhere
        line = os_error_line(err)
        if debug or line is None:
            raise
        print(f"vilgkit: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vilgkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
