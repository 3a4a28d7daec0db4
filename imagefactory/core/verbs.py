"""One CLI grammar: a wing's verbs are subcommands beside its default action.

`imagefactory unify GUEST... --store S` unifies (the default action) and `imagefactory unify
status --store S` runs a verb; likewise `imagefactory seed SOURCE NAME` and `imagefactory seed
check`. Verbs that used to be flags (`unify --status`, `seed --check`) stay accepted for one
release as hidden aliases, with one deprecation line on stderr.
"""

from __future__ import annotations

from typing import Any

import click

DEFAULT = "run"  # the hidden name of a group's default action


class DefaultCommand(click.Command):
    """The default action runs in its group's place: usage and errors name `imagefactory unify`."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if parent is not None and isinstance(parent.command, VerbGroup):
            info_name, parent = parent.info_name, parent.parent
        return super().make_context(info_name, args, parent=parent, **extra)


class VerbGroup(click.Group):
    """Subcommands (verbs) plus a hidden default command run when the first word is no verb.

    old_flags maps a deprecated flag to the verb that replaces it (`--status` -> `status`).
    """

    def __init__(self, *args: Any, old_flags: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old_flags = old_flags or {}

    def default(self, *args: Any, **kwargs: Any):
        """Decorator for the default action (a hidden command)."""
        return self.command(DEFAULT, *args, cls=DefaultCommand, hidden=True, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        old = [a for a in args if a in self.old_flags]
        if old:
            verb = self.old_flags[old[0]]
            click.echo(f"imagefactory: warning: `{ctx.info_name} {old[0]}` is deprecated and goes away in "
                       f"the next release; use `imagefactory {ctx.info_name} {verb}`", err=True)
            if len(old) > 1:
                raise click.UsageError(f"{' and '.join(old)} cannot be combined")
            args = [verb, *(a for a in args if a != old[0])]
        at = self._verb_at(args)
        if at is not None:  # `unify -q status ...` as well as `unify status -q ...`
            args = [args[at], *args[:at], *args[at + 1:]]
        elif not args or args[0] not in ctx.help_option_names:
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)

    def _verb_at(self, args: list[str]) -> int | None:
        """Index of the verb, when only flags (no option taking a value, no argument) precede it."""
        takes_value = {o for p in self.commands[DEFAULT].params if isinstance(p, click.Option) and not p.is_flag
                       for o in p.opts}
        for i, arg in enumerate(args):
            if arg in self.commands and arg != DEFAULT:
                return i
            if not arg.startswith("-") or arg in takes_value:
                return None
        return None

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The default action's usage and options, then the verbs."""
        default = self.commands[DEFAULT]
        with default.make_context(ctx.info_name, [], parent=ctx, resilient_parsing=True) as sub:
            default.format_help(sub, formatter)
        self.format_commands(ctx, formatter)
