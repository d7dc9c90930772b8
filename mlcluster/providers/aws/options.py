"""The `[aws]` settings, and the plan (with its estimated hourly cost) shown
before anything is created.

Settings come from the config file's `[aws]` table and the flags --region,
--instance-type and --profile (the CLI puts them in
`spec.provider_options["aws"]`). No AWS call happens here.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional

from ...config import check_known
from ...deploy.options import defaults_of, of_kind, parse
from ...errors import MlclusterError, UsageError
from ...state import ClusterSpec
from ..base import CostPlan, CostRow

# Public SSM parameters naming the current image in every region.
AMI_PARAMETERS = {
    "al2023": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "ubuntu": "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
}
DEFAULT_SSH_USER = {"al2023": "ec2-user", "ubuntu": "ubuntu"}

# On-demand Linux prices in us-east-1 (USD per hour) and vCPUs. An estimate
# only: other regions cost up to ~30% more and AWS changes prices.
PRICES = {
    "t3.medium": (0.0416, 2), "t3.large": (0.0832, 2), "t3.xlarge": (0.1664, 4),
    "m4.large": (0.10, 2), "m4.xlarge": (0.20, 4), "m5.large": (0.096, 2), "m5.xlarge": (0.192, 4),
    "m6i.large": (0.096, 2), "m6i.xlarge": (0.192, 4), "m7i.large": (0.1008, 2),
    "c5.large": (0.085, 2), "c5.xlarge": (0.17, 4), "c5.2xlarge": (0.34, 8),
    "c6i.large": (0.085, 2), "c6i.xlarge": (0.17, 4), "c7i.large": (0.08925, 2), "c7i.xlarge": (0.1785, 4),
}
GP3_PER_GB_MONTH = 0.08
PUBLIC_IPV4_PER_HOUR = 0.005
HOURS_PER_MONTH = 730
FALLBACK_ON_DEMAND, FALLBACK_NEVER = "on-demand", "never"
FALLBACKS = (FALLBACK_ON_DEMAND, FALLBACK_NEVER)


@dataclass(frozen=True)
class Market:
    """How worker instances are bought (the `[aws]` spot settings; providers/aws/spot.py)."""
    spot: bool = False
    fallback: str = FALLBACK_ON_DEMAND   # on-demand | never


@dataclass(frozen=True)
class AWSOptions:
    """Every setting of the `[aws]` table; docs/providers.md ("The `[aws]` table") explains them."""
    region: str = ""               # empty: boto3's chain (AWS_REGION, the profile's region)
    profile: str = ""              # empty: boto3's chain (AWS_PROFILE, environment, SSO, role)
    instance_type: str = "m4.large"
    os: str = "al2023"             # al2023 | ubuntu: which public SSM parameter names the AMI
    ami: str = ""                  # an explicit AMI id wins over `os`
    ssh_user: str = ""             # empty: ec2-user (al2023) or ubuntu
    key_name: str = ""             # an existing key pair; empty: one is created per cluster
    key_file: str = ""             # the private key of `key_name`
    allowed_cidr: str = ""         # who may reach SSH and the orchestrator; empty: this machine's public IP
    detect_ip: bool = True         # look the public IP up when allowed_cidr is empty
    volume_gb: int = 16            # root volume (gp3)
    ssh_timeout_s: float = 600.0   # how long to wait for SSH on new instances
    spot: bool = False             # workers as spot instances (the orchestrator stays on-demand)
    spot_fallback: str = "on-demand"  # when spot is refused: on-demand | never (refuse, exit 1)
    endpoint_url: str = ""         # tests: a local EC2/SSM endpoint (moto)
    metadata_url: str = ""         # emulators only: the instance metadata service the controller asks for its profile
    # Tests only (needs endpoint_url): instance name -> the address to use
    # instead of its public and private IPs, or { address = ..., workdir = ... }.
    address_map: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Optional[dict[str, Any]]) -> "AWSOptions":
        """The [aws] table: each setting of its default's kind (messages read "[aws]: volume_gb must be...")."""
        raw = raw or {}
        defaults = defaults_of(cls)
        check_known(raw, defaults, "[aws]")
        kinds = {name: of_kind(type(defaults[name])) for name in [*raw, *defaults]}  # checked in the table's order
        return cls(**parse(raw, kinds, "[aws]:", defaults)).validate()

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> "AWSOptions":
        return cls.from_dict(spec.provider_options.get("aws"))

    def validate(self) -> "AWSOptions":
        if self.os not in AMI_PARAMETERS:
            raise MlclusterError(f"[aws]: os must be one of {', '.join(AMI_PARAMETERS)}, not {self.os!r}")
        if self.allowed_cidr:
            normalise_cidr(self.allowed_cidr)
        if self.key_name and not self.key_file:
            raise MlclusterError(f"[aws]: key_name {self.key_name!r} needs key_file, the path of its private key")
        if not 8 <= self.volume_gb <= 1024:
            raise MlclusterError("[aws]: volume_gb must be between 8 and 1024")
        if self.spot_fallback not in FALLBACKS:
            raise UsageError(f"[aws]: spot_fallback must be one of {', '.join(FALLBACKS)}, not {self.spot_fallback!r}")
        if (self.address_map or self.metadata_url) and not self.endpoint_url:
            what = "address_map" if self.address_map else "metadata_url"
            raise MlclusterError(f"[aws]: {what} is only for tests against a local endpoint_url")
        for name, value in self.address_map.items():
            table = {"address": value} if isinstance(value, str) else value
            if (not isinstance(table, dict) or not isinstance(table.get("address"), str)
                    or set(table) - {"address", "workdir"}):
                raise MlclusterError(f"[aws]: address_map.{name} must be an address or {{ address, workdir }}")
        return self

    @property
    def market(self) -> Market:
        return Market(self.spot, self.spot_fallback)

    @property
    def user(self) -> str:
        return self.ssh_user or DEFAULT_SSH_USER[self.os]


def normalise_cidr(text: str) -> str:
    """`203.0.113.5` -> `203.0.113.5/32`; a clear error for anything not a network."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise MlclusterError(f"[aws]: allowed_cidr {text!r} is not an IP address or CIDR block",
                             "for example 203.0.113.5/32") from None


def spot_note(o: AWSOptions, price: Optional[float]) -> str:
    """What the spot rows assume: there is no live spot price without asking AWS."""
    on_demand = f"${price:.3f}/h" if price is not None else "the on-demand price"
    then = ("launched on-demand instead, at that price" if o.spot_fallback == "on-demand"
            else "not launched: `up` stops (spot_fallback = never)")
    return (f"Spot workers: billed at the spot price of the hour, at most the on-demand price ({on_demand} each, "
            f"shown as \"up to\": mlcluster does not look up live spot prices); when AWS refuses spot capacity a "
            f"worker is {then}; AWS may reclaim a spot worker at any time (2 minutes' notice): the orchestrator "
            f"retries its in-flight requests elsewhere and capacity is down until a replacement serves.")


def plan(spec: ClusterSpec) -> CostPlan:
    """The plan for `spec`, with no AWS call (nothing is looked up or created)."""
    o = AWSOptions.from_spec(spec)
    n = 1 + spec.workers
    price, cpus = PRICES.get(o.instance_type, (None, 0))
    lines = [
        CostRow("orchestrator instance", 1, o.instance_type, price),
        CostRow("worker instances" + (" (spot)" if o.spot else ""), spec.workers,
                o.instance_type + (f" (on-demand ${price:.3f})" if o.spot and price is not None else ""), price,
                up_to=o.spot),
        CostRow("root volumes (gp3)", n, f"{o.volume_gb} GB", o.volume_gb * GP3_PER_GB_MONTH / HOURS_PER_MONTH),
        CostRow("public IPv4 addresses", n, "address", PUBLIC_IPV4_PER_HOUR),
    ]
    source = o.ami or f"the latest {'Amazon Linux 2023' if o.os == 'al2023' else 'Ubuntu 24.04'} (AWS SSM)"
    allowed = normalise_cidr(o.allowed_cidr) if o.allowed_cidr else "this machine's public IP (looked up)"
    if allowed.endswith("/0"):
        allowed += " (THE WHOLE INTERNET, as allowed_cidr asks)"
    notes = [
        "Costs are an estimate: on-demand Linux prices in us-east-1; other regions differ, data transfer is extra."
        + ("" if price is not None else f" {o.instance_type} is not in mlcluster's price table."),
        *([spot_note(o, price)] if o.spot else []),
        f"Image: {source}; {spec.containers_per_worker} container(s) per worker.",
        f"Key pair: {o.key_name or 'a new one for this cluster (private key kept in its state directory)'}.",
        f"Security group: SSH and the orchestrator port only from {allowed}; worker ports only inside the group.",
        f"`mlcluster down --name {spec.name}` removes everything this creates.",
    ]
    return CostPlan(spec.name, o.region, o.instance_type, lines, notes, n * cpus or None)  # None: an unknown type
