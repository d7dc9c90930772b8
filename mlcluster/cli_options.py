"""The cluster-name option every command takes (-n/--name), checked once:
a bad name is a usage error (exit 2) with the rule in its message."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .errors import MlclusterError
from .state import check_name


def checked_name(value: Optional[str]) -> Optional[str]:
    try:
        return check_name(value) if value else value
    except MlclusterError as exc:
        raise typer.BadParameter(f"{exc.message} ({exc.hint})") from None


def checked_fallback(value: Optional[str]) -> Optional[str]:
    """--spot-fallback: on-demand or never (anything else is a usage error)."""
    if value is not None and value not in ("on-demand", "never"):
        raise typer.BadParameter(f"{value!r} is not one of on-demand, never")
    return value


Name = Annotated[str, typer.Option("--name", "-n", help="The cluster's name.", callback=checked_name)]
