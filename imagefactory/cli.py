"""Command-line entry point.

Each subcommand lives in the module that owns its stage; this file only wires
them together (lazily, so `imagefactory --help` stays fast) and turns errors
into one line plus a documented exit code.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from imagefactory.core.errors import ImageFactoryError

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "build": "imagefactory.build.cli:build",
    "recipes": "imagefactory.build.cli:recipes",
    "unify": "unify.composefs.cli:unify",
    "report": "unify.report.cli:report",
    "publish": "repo.cli:publish",
    "repo": "repo.cli:repo",
    "pull": "repo.cli:pull",
    "kernel": "kernel.cli:kernel",
    "seed": "imagefactory.seed.cli:seed",
    "guests": "imagefactory.seed.cli:guests",
    "start": "imagefactory.seed.run_cli:start",
    "stop": "imagefactory.seed.run_cli:stop",
    "exec": "imagefactory.seed.run_cli:exec_",
    "enter": "imagefactory.seed.run_cli:enter",
    "limits": "imagefactory.seed.run_cli:limits",
    "mount": "imagefactory.seed.mount_cli:mount_cmd",
    "umount": "imagefactory.seed.mount_cli:umount_cmd",
}

EXIT_CODES = """\b
Exit codes:
  0  success
  1  bad input (recipe, arguments, artifact)
  2  usage error
  3  verification failed (signature, checksum, size, expired Release)
  4  mirror or URL unreachable
  5  package set cannot be resolved
  6  host problem (missing tool, not root, no kernel support, disk full)
  7  unsafe input (absolute/.. paths, symlink escapes, stray device nodes)
  70 internal error (a bug: rerun with --debug and report it)
  130 interrupted (Ctrl-C)
See docs/errors.md for every failure class with an example line."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a stage whose module is missing
            reason = f"not available here: {exc}"

            def unavailable() -> None:
                raise click.ClickException(f"command {name!r} is {reason}")

            return click.Command(name, callback=unavailable, help=f"({reason})")


@click.group(cls=LazyGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="imagefactory")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build, unify, report on, publish and seed Linux guest images."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _fail(message: str, code: int) -> None:
    click.echo(f"imagefactory: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # Without standalone mode click *returns* the code of ctx.exit(n).
        rc = cli.main(args=argv, prog_name="imagefactory", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except ImageFactoryError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        if debug:
            raise
        if exc.errno == errno.ENOSPC:
            where = f" writing {exc.filename}" if exc.filename else ""
            _fail(f"disk full{where} (no space left on device); partial output was removed", 6)
        _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", 6)
    except Exception as exc:  # a bug: say so plainly
        if debug:
            raise
        _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback", 70)
