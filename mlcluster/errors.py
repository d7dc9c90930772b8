"""The one kind of error a person sees: a sentence, and a hint of what to do next."""
from __future__ import annotations

TROUBLESHOOTING = "docs/troubleshooting.md"  # in the checkout; on the docs site: troubleshooting/


def see_docs(anchor: str) -> str:
    """Where an error's longer explanation is: a section (`anchor`) of the troubleshooting page."""
    return f"see {TROUBLESHOOTING}#{anchor}"


class MlclusterError(Exception):
    """A known failure. The CLI prints `message` (and `hint`) and exits 1;
    never a traceback, unless MLCLUSTER_DEBUG is set."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 1, names_cleanup: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        # the hint already says how to remove what was started: nothing need add it
        self.names_cleanup = names_cleanup

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(MlclusterError):
    """The command line (or a config file) asks for something that cannot be:
    a bad value, conflicting options, an unknown setting. Exit code 2."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint, exit_code=2)


class ClusterNotFound(MlclusterError):
    def __init__(self, name: str):
        super().__init__(f"no cluster named {name!r} is known here",
                         f"`mlcluster up --name {name}` creates it; `mlcluster list` shows the known ones")
