"""The provider registry: a provider's name -> its implementation, imported lazily.

Adding a provider means adding one line here; the interface (`base.py`) knows
no implementation. Lazy imports keep `mlcluster status` on a local cluster from
importing boto3 or paramiko (tests/test_layout.py checks it).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import MlclusterError
from ..state import PROVIDERS

if TYPE_CHECKING:
    from .base import Provider

# name -> "module:class", imported only when that provider is used
REGISTRY: dict[str, str] = {
    "local": "mlcluster.providers.local:LocalProvider",
    "ssh": "mlcluster.providers.ssh.provider:SSHProvider",
    "aws": "mlcluster.providers.aws.provider:AWSProvider",
}
NAMES = PROVIDERS
assert set(REGISTRY) == set(NAMES), "every provider a spec may name has an implementation"


def check_provider_name(name: str) -> str:
    if name not in REGISTRY:
        raise MlclusterError(f"unknown provider {name!r}", f"choose {', '.join(NAMES[:-1])} or {NAMES[-1]}")
    return name


def get_provider(name: str) -> "Provider":
    """A new instance of the provider called `name`."""
    module, _, cls = REGISTRY[check_provider_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)()
