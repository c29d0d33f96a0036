"""gpcrun command line: thin click commands that parse, call the library and print (text or --json)."""
from __future__ import annotations

import json
import signal
import sys

import click

from .. import __version__
from ..exits import Exit
from .errors import report


class _Interrupted(KeyboardInterrupt):
    pass


def _interrupt(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


class _Group(click.Group):
    def main(self, *args, **kwargs):  # every command: one-line errors and table-driven exit codes
        kwargs.setdefault("standalone_mode", True)
        # a termination signal before a command installs its own handling (serve, bench, batch stop their server
        # cleanly) ends gpcrun like Ctrl-C: exit 130 with one line, temp files removed, never a silent death
        from ..launch.signals import TERMINATION_SIGNALS, on_termination
        try:
            before = {s: signal.getsignal(s) for s in TERMINATION_SIGNALS}
            on_termination(_interrupt)
        except ValueError:  # not the main thread (an embedding caller): its signals stay its own
            before = {}
        try:
            return self._main(*args, **kwargs)
        finally:
            for s, h in before.items():
                signal.signal(s, h)

    def _main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **{k: v for k, v in kwargs.items()
                                                                 if k != "standalone_mode"})
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort as e:  # click's own wrapping of a KeyboardInterrupt
            cause = e.__cause__
            print(f"gpcrun: interrupted by {cause}" if isinstance(cause, _Interrupted) else "gpcrun: aborted",
                  file=sys.stderr)
            sys.exit(Exit.INTERRUPTED.code)
        except KeyboardInterrupt as e:
            if isinstance(e, _Interrupted):
                print(f"gpcrun: interrupted by {e}", file=sys.stderr)
            sys.exit(Exit.INTERRUPTED.code)
        except Exception as e:  # noqa: BLE001 - mapped to a documented exit code
            sys.exit(report(e))


def _version(ctx, _param, value) -> None:
    """gpcrun's version, and the llama-server it would use with its build (or why there is none)."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"gpcrun {__version__}")
    from ..launch.binary import build_info, describe_build, find_tool
    try:
        server = find_tool("llama-server")
    except Exception as e:  # noqa: BLE001 - ServerBinaryNotFound: say where it looked
        click.echo(f"llama-server: not found ({e})")
    else:
        info = build_info(server)
        click.echo(f"llama-server: {server}\nllama.cpp: {describe_build(info)}")
        if info.get("cmake_flags"):
            click.echo(f"cmake flags: {' '.join(info['cmake_flags'])}")
    ctx.exit(0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show gpcrun's version, the llama-server it would use and that build, and exit.")
def main() -> None:
    """Plan, launch, supervise and measure llama.cpp's llama-server."""


def emit_json(doc: object) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


from . import inspect_cmd  # noqa: E402,F401  (registers commands)
from . import profile_cmd  # noqa: E402,F401
from . import plan_cmd  # noqa: E402,F401
from . import serve_cmd  # noqa: E402,F401
from . import receipt_cmd  # noqa: E402,F401
from . import bench_cmd  # noqa: E402,F401
from . import batch_cmd  # noqa: E402,F401
from . import ps_cmd  # noqa: E402,F401
