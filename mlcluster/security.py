"""What `up --tls/--tls-cert/--tls-key/--api-keys` adds to a cluster, and
`up`'s warning about an endpoint open beyond private ranges.

The public endpoint's threat model, per provider:
- local: the orchestrator listens on 127.0.0.1 (admin on another loopback
  port); only users of this machine reach it.
- ssh: it listens on the head host's address, reachable by whatever reaches
  that host's port; the admin endpoints only through SSH.
- aws: it is reachable from `allowed_cidr` over the internet; the admin
  endpoints only through SSH. Without TLS, requests and answers (and keys)
  cross the network in cleartext.
"""
from __future__ import annotations

import base64
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from . import apikeys, tls
from .errors import MlclusterError, UsageError
from .state import ApiKeyRecord, ClusterState

# Where an endpoint is not on the internet (ipaddress's is_private also counts documentation ranges).
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128"))


@dataclass(frozen=True)
class SecurityRequest:
    tls: bool = False               # serve HTTPS (a self-signed certificate unless cert/key are given)
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    api_keys: bool = False          # make the first API key if the cluster has none

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")


def prepare(state: ClusterState, request: SecurityRequest, hosts: list[str]) -> Optional[apikeys.NewKey]:
    """Record the certificate and the first key in `state` before the orchestrator
    starts (it reads them at start). Returns the new key, to be shown once.
    A running orchestrator is not restarted by `up`, so what it would not
    take is refused rather than recorded."""
    running = bool(state.orchestrator_url)
    cert = None
    if request.tls_cert is not None:
        cert = tls.given(request.tls_cert, request.tls_key)
    elif request.tls and not state.tls_fingerprint:
        if running:
            raise MlclusterError(f"cluster {state.name!r} already serves plain HTTP; TLS is chosen at its first `up`",
                                 f"`mlcluster down --name {state.name}`, then `mlcluster up --tls`")
        cert = tls.make_self_signed(state.dir, state.name, hosts)
    if cert is not None and cert.fingerprint != state.tls_fingerprint:
        if running:
            raise MlclusterError(f"cluster {state.name!r} already runs with another certificate",
                                 f"`mlcluster down --name {state.name}` first to change it")
        state.tls_cert, state.tls_key, state.tls_fingerprint = cert.cert_path, cert.key_path, cert.fingerprint
    made = None
    if request.api_keys and not state.api_keys and running:
        raise MlclusterError(f"cluster {state.name!r} already runs without API keys",
                             f"`mlcluster keys create --name {state.name}` adds one at once")
    if request.api_keys and not state.api_keys:
        made = apikeys.new_key()
        state.api_keys.append(ApiKeyRecord(made.id, apikeys.digest(made.key), time.time()))
    return made


def orchestrator_env(state: ClusterState, inline: bool = False) -> dict[str, str]:
    """The orchestrator's TLS and key settings: the key hashes, and the certificate and key by path (a
    process on this machine) or `inline` (base64 of the PEM files: a container, or another host, where
    the environment is kept as the cluster's token is: a 0600 file, the container's config)."""
    env = {}
    if state.tls_fingerprint and inline:
        env.update(ORCH_TLS_CERT_B64=base64.b64encode(Path(state.tls_cert).read_bytes()).decode(),
                   ORCH_TLS_KEY_B64=base64.b64encode(Path(state.tls_key).read_bytes()).decode())
    elif state.tls_fingerprint:
        env.update(ORCH_TLS_CERT=state.tls_cert, ORCH_TLS_KEY=state.tls_key)
    if state.api_keys:
        env["ORCH_API_KEYS"] = apikeys.orchestrator_setting(state.api_keys)
    return env


def scheme(state: ClusterState) -> str:
    return "https" if state.tls_fingerprint else "http"


def with_scheme(state: ClusterState, url: str) -> str:
    """`url` (made http://) with the scheme the cluster serves."""
    return f"{scheme(state)}://{url.split('://', 1)[1]}"


def http_session(state: ClusterState):
    """A requests session for the orchestrator: pinned to the cluster's certificate when it serves HTTPS."""
    import requests
    return tls.pinned_session(state.tls_cert, state.tls_fingerprint) if state.tls_fingerprint else requests.Session()


def exposure_warning(provider: str, url: str, allowed_cidr: str, tls_on: bool, keys_on: bool) -> Optional[str]:
    """A sentence when an ssh or aws endpoint is open beyond private ranges without keys or TLS."""
    if provider not in ("ssh", "aws") or (tls_on and keys_on):
        return None
    open_to = allowed_cidr or (urlsplit(url).hostname or "")
    try:
        network = ipaddress.ip_network(open_to, strict=False)
        private = any(network.version == p.version and network.subnet_of(p) for p in PRIVATE_RANGES)
    except ValueError:
        private = False  # a host name: assume it can be reached from anywhere
    if private:
        return None
    missing = " and ".join(w for w, on in (("TLS", tls_on), ("API keys", keys_on)) if not on)
    return (f"the endpoint {url} is open to {open_to}, beyond private ranges, without {missing}: "
            "anyone who reaches it can send requests" + ("" if tls_on else ", and traffic is cleartext") +
            "; `mlcluster up --tls --api-keys` adds both")
