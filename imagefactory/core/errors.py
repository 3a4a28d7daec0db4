"""Errors the CLI turns into one clear line and a documented exit code.

Every stage raises one of these for bad input or a failed check; anything else
is a bug and is reported as such (with the traceback only under --debug).
"""


def shown(value: str, limit: int = 40) -> str:
    """A user's value quoted for an error line, shortened so a 10 MB input still gives one short line."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} characters)"


class ImageFactoryError(Exception):
    """A failure the user can act on. The message is the whole story."""

    exit_code = 1


class RecipeError(ImageFactoryError):
    """A recipe is malformed or unknown."""

    exit_code = 1


class VerificationError(ImageFactoryError):
    """A signature, checksum or size did not match, or a Release expired."""

    exit_code = 3


class FetchError(ImageFactoryError):
    """A mirror or URL could not be reached or answered with an error."""

    exit_code = 4


class ResolveError(ImageFactoryError):
    """The requested package set cannot be satisfied."""

    exit_code = 5


class EnvironmentProblem(ImageFactoryError):
    """The host lacks something: a tool, root, a kernel feature, disk space."""

    exit_code = 6


class UnsafeInput(ImageFactoryError):
    """Hostile or malformed input: absolute or '..' archive members, symlink escapes."""

    exit_code = 7


class MirrorInconsistent(VerificationError):
    """A mirror offers no copy of a file that matches its signed Release (mid-sync, most likely)."""

    exit_code = 3
