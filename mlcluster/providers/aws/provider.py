"""The aws provider, the order of things: image and network -> key pair ->
security group -> the controller's IAM profile -> instances (found by tag and
reused, stopped ones started) -> running -> SSH and first boot -> the deployment
layer's deployment onto them (`deploy.remote.deploy`), as onto the ssh provider's hosts.

Everything is tagged at creation and recorded in the state at once, so a failed
or interrupted `up` is resumed by `up` and removed by `down`, which finds it by
tag even without state (docs/providers.md, "What it creates, and how safely").
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Optional

from ...deploy import reading, remote
from ...deploy.options import SETTINGS, RemoteOptions, parse_settings
from ...deploy.runtime import Deployment
from ...errors import MlclusterError
from ...remote.connection import HostKeyStore
from ...resources import AWSResources
from ...state import ClusterSpec, ClusterState, write_private
from ...ui import QuietUI
from ..base import CostPlan
from . import ec2, iam, spot
from .api import AWS, AWSError, Backoff, retry_while
from .ec2 import Instance, LaunchSpec
from .fleet import fleet_of
from .hosts import addresses, ports, remote_options, user_data, wait_for_ssh
from .options import AMI_PARAMETERS, AWSOptions, Market, normalise_cidr, plan
from .placement import limit_error, match, skip_zone, zone_order
from .record import accounted, forget_reused_addresses, remember

__all__ = ["AWSProvider", "plan"]

KEY_FILE = "aws-key.pem"
IP_LOOKUP_URL = "https://checkip.amazonaws.com"


def lookup_public_ip() -> str:
    """This machine's public IP address, as AWS sees it."""
    import requests
    try:
        return str(ipaddress.ip_address(requests.get(IP_LOOKUP_URL, timeout=5).text.strip()))
    except (requests.RequestException, ValueError) as exc:
        raise MlclusterError(f"could not learn this machine's public IP from {IP_LOOKUP_URL} ({type(exc).__name__})",
                             "set `allowed_cidr` in the [aws] table (for example 203.0.113.5/32)") from None


class AWSProvider:
    """See the module docstring. What touches the outside world can be
    injected: `options` (the [aws] table, for a `down` without state),
    `ip_lookup`, `backoff` (throttling retries), `sleep`, `poll_s` and
    `timeout_s` (waiting on AWS and on SSH)."""

    name = "aws"

    def __init__(self, options: Optional[dict] = None, *, ip_lookup: Callable[[], str] = lookup_public_ip,
                 backoff: Optional[Backoff] = None, sleep: Callable[[float], None] = time.sleep,
                 poll_s: float = 5.0, timeout_s: float = 900.0):
        self.options = options or {}
        self.ip_lookup, self.backoff, self.sleep = ip_lookup, backoff, sleep
        self.poll_s, self.timeout_s = poll_s, timeout_s

    def plan(self, spec: ClusterSpec) -> CostPlan:
        """The region and credentials are checked first (so no plan is shown
        that cannot run); no AWS call is made."""
        aws = self.connect(AWSOptions.from_spec(spec))
        aws.require_credentials()
        return dataclasses.replace(plan(spec), region=aws.region)

    def connect(self, o: AWSOptions) -> AWS:
        return AWS(o.region, o.profile, o.endpoint_url, self.backoff)

    def _options_of(self, state: Optional[ClusterState]) -> AWSOptions:
        """The [aws] settings the cluster was made with (the region it was
        made in wins), else the ones given to this provider."""
        raw = dict(self.options)
        if state is not None:
            raw = dict(state.spec.provider_options.get("aws") or raw)
            raw["region"] = (state.resources.aws or AWSResources()).region or raw.get("region", "")
        return AWSOptions.from_dict(raw)

    # -- up: EC2 ------------------------------------------------------------
    def up(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> Deployment:
        instances = self.provision(spec, state, ui)
        return self.deploy(spec, state, instances, ui)

    def provision(self, spec: ClusterSpec, state: ClusterState, ui: QuietUI) -> dict[str, Instance]:
        """The EC2 part of `up`: every instance of the cluster, running, by name."""
        o = AWSOptions.from_spec(spec)
        with accounted(state, ui):
            aws = self.connect(o)
            cidr = self._allowed_cidr(o, ui)
            with ui.step(f"looking up the default network and the image in {aws.region}"):
                vpc, subnets = ec2.default_subnets(aws)
                image = ec2.resolve_image(aws, o.ami, AMI_PARAMETERS[o.os])
            ui.info(f"image {image.id} ({image.name or 'no name'}), {len(subnets)} availability zone(s)")
            key_name = self._key_pair(aws, o, state, ui)
            group_id = self._security_group(aws, spec, state, vpc, cidr, ui)
            with ui.step("the controller's IAM role and instance profile (launch and terminate only this cluster's "
                         "instances)"):
                remember(state, aws, instance_profile=iam.ensure(aws, spec.name))
            launch = LaunchSpec(spec.name, image, o.instance_type, key_name, group_id, o.volume_gb, user_data(o))
            return self._instances(aws, spec, state, launch, subnets, ui, o)

    def _allowed_cidr(self, o: AWSOptions, ui: QuietUI) -> str:
        if o.allowed_cidr:
            cidr = normalise_cidr(o.allowed_cidr)
            if ipaddress.ip_network(cidr).prefixlen == 0:
                ui.warn(f"allowed_cidr {cidr} opens SSH and the orchestrator to the whole internet, as asked")
            return cidr
        if not o.detect_ip:
            raise MlclusterError("no allowed_cidr is set and detect_ip is off",
                                 "set `allowed_cidr` in the [aws] table to the address that runs mlcluster")
        address = ipaddress.ip_address(self.ip_lookup())
        return f"{address}/{address.max_prefixlen}"

    def _key_pair(self, aws: AWS, o: AWSOptions, state: ClusterState, ui: QuietUI) -> str:
        if o.key_name:
            if not ec2.key_pair_exists(aws, o.key_name):
                raise MlclusterError(f"the key pair {o.key_name!r} does not exist in {aws.region}",
                                     "name an existing one in `key_name`, or leave it empty to create one")
            remember(state, aws, key_name=o.key_name, key_file=str(Path(o.key_file).expanduser()))
            return o.key_name
        path = state.dir / KEY_FILE
        found = ec2.find_tagged(aws, "key pair", state.name)
        if len(found) > 1:
            ui.warn(f"{len(found)} key pairs are tagged for cluster {state.name!r}; using {found[0]['KeyName']}")
        if found and path.exists():
            remember(state, aws, key_pair=found[0]["KeyPairId"], key_name=found[0]["KeyName"], key_file=str(path))
            return found[0]["KeyName"]
        if found:  # its private key is lost: only a key pair no instance uses may be replaced
            if ec2.find_instances(aws, state.name, ec2.UP_STATES):
                raise MlclusterError(f"the private key of key pair {found[0]['KeyName']} is no longer in {path}, "
                                     "and the cluster's instances need it",
                                     f"`mlcluster down --name {state.name}`, then `mlcluster up` again",
                                     names_cleanup=True)
            ec2.delete_key_pair(aws, found[0]["KeyName"])
        with ui.step("creating the cluster's key pair"):
            name, key_id, material = ec2.create_key_pair(aws, state.name)
            remember(state, aws, key_pair=key_id)
            write_private(path, material)
            remember(state, aws, key_name=name, key_file=str(path))
        return name

    def _security_group(self, aws: AWS, spec: ClusterSpec, state: ClusterState, vpc: str, cidr: str,
                        ui: QuietUI) -> str:
        groups = ec2.find_tagged(aws, "security group", spec.name)
        mine = [g for g in groups if g.get("VpcId") == vpc]
        if len(groups) > 1:
            ui.warn(f"{len(groups)} security groups are tagged for cluster {spec.name!r}: "
                    f"{', '.join(g['GroupId'] for g in groups)}; `mlcluster down` removes them all")
        if mine:
            group = mine[0]
        else:
            with ui.step("creating the cluster's security group"):
                group = {"GroupId": ec2.create_group(aws, spec.name, vpc), "IpPermissions": []}
        remember(state, aws, security_group=group["GroupId"])
        orchestrator_port, worker_port = ports(spec)
        internal = (worker_port, worker_port + spec.containers_per_worker - 1)
        watched = [orchestrator_port] if spec.autostop else []
        added, removed = ec2.sync_rules(aws, group, ec2.wanted_rules(group["GroupId"], cidr, [orchestrator_port],
                                                                     internal, watched))
        if removed:
            ui.info(f"security group {group['GroupId']}: removed {len(removed)} rule(s) no longer asked for")
        return group["GroupId"]

    def _instances(self, aws: AWS, spec: ClusterSpec, state: ClusterState, launch: LaunchSpec,
                   subnets: list[tuple[str, str]], ui: QuietUI, o: AWSOptions) -> dict[str, Instance]:
        names = ["orchestrator"] + [f"worker{i}" for i in range(1, spec.workers + 1)]
        chosen, extra = match(ec2.find_instances(aws, spec.name, ec2.UP_STATES), names)
        surplus = [i for i in extra if re.fullmatch(r"worker\d+", i.name) and i.name not in names]
        if surplus:  # a smaller cluster than last time: what is no longer asked for goes
            self._terminate_surplus(aws, state, surplus, ui)
            extra = [i for i in extra if i not in surplus]
        if extra:
            listed = ", ".join(f"{i.id} ({i.name or 'unnamed'})" for i in extra)
            ui.warn(f"{len(extra)} more instance(s) are tagged for cluster {spec.name!r} than it asks for: "
                    f"{listed}; left alone (`mlcluster down --name {spec.name}` removes them)")
        remember(state, aws, instances={n: i.id for n, i in chosen.items()},
                 markets={n: i.market for n, i in chosen.items()})
        stopped = [i.id for i in chosen.values() if i.state in ("stopping", "stopped")]
        if stopped:
            with ui.step(f"starting {len(stopped)} stopped instance(s)"):
                ec2.wait_for_state(aws, stopped, "stopped", self.timeout_s, self.poll_s, self.sleep)
                aws.ec2("start_instances", InstanceIds=stopped)
        if "orchestrator" in chosen and not chosen["orchestrator"].profile_arn:  # made before profiles existed
            aws.ec2("associate_iam_instance_profile", InstanceId=chosen["orchestrator"].id,
                    IamInstanceProfile={"Name": state.resources.aws.instance_profile})
            ui.info(f"attached the controller's instance profile to the orchestrator ({chosen['orchestrator'].id})")
        missing = [n for n in names if n not in chosen]
        zones = zone_order(subnets, chosen.values())

        def on_capacity(zone: str, code: str) -> None:
            skip_zone(zones, zone, code, ui)
        for n, name in enumerate(missing, 1):
            # the orchestrator on-demand with the controller's profile (retried until IAM has spread it)
            orchestrator = name == "orchestrator"
            market, profile = (Market(), state.resources.aws.instance_profile) if orchestrator else (o.market, "")
            with ui.step(f"launching {name} ({launch.instance_type}, {'spot' if market.spot else 'on-demand'}), "
                         f"{n} of {len(missing)}"):
                try:
                    launched = retry_while(iam.profile_not_ready, lambda: spot.launch_worker(
                        aws, launch, name, zones, on_capacity, market, profile), self.timeout_s, self.poll_s,
                        self.sleep)
                except AWSError as exc:
                    if exc.code in ec2.LIMIT_CODES:
                        raise limit_error(exc, aws.region, launch.instance_type, len(names), len(chosen),
                                           spec.name) from None
                    raise
            inst = chosen[name] = launched.instance
            remember(state, aws, instances={**state.resources.aws.instances, name: inst.id},
                     markets={**state.resources.aws.markets, name: launched.market})
            if launched.refused:
                ui.warn(f"{name}: {spot.refused_sentence(launched.refused, inst.id)}")
                spot.record_fallback(state.dir, name, launched)
            zones = zone_order(zones, [inst])
        with ui.step(f"waiting for {len(chosen)} instance(s) to run"):
            running = ec2.wait_for_state(aws, [chosen[n].id for n in names], "running",
                                         self.timeout_s, self.poll_s, self.sleep)
        by_id = {i.id: i for i in running}
        return {n: by_id[chosen[n].id] for n in names}

    @staticmethod
    def _terminate_surplus(aws: AWS, state: ClusterState, surplus: list[Instance], ui: QuietUI) -> None:
        """Terminate workers beyond the count asked for, and forget their hosts, services (which end with
        them) and addresses in the state (`_instances` then records the instances kept)."""
        with ui.step(f"terminating {', '.join(f'{i.name} ({i.id})' for i in surplus)}: no longer part of the cluster"):
            ec2.terminate(aws, [i.id for i in surplus])
        gone, ids, kept = {i.name for i in surplus}, {i.id for i in surplus}, state.resources
        kept.aws.address_owners = {a: i for a, i in kept.aws.address_owners.items() if i not in ids}
        kept.hosts = {n: h for n, h in kept.hosts.items() if n not in gone}
        kept.services = {k: r for k, r in kept.services.items() if r.host not in gone}
        state.save()

    # -- up: the ssh deployment ------------------------------------------------
    def deploy(self, spec: ClusterSpec, state: ClusterState, instances: dict[str, Instance],
               ui: QuietUI) -> Deployment:
        """Wait for SSH on the instances, then deploy onto them (`deploy.remote.deploy`)."""
        o = AWSOptions.from_spec(spec)
        with accounted(state, ui):
            addressed = addresses(o, instances)
            key_file = state.resources.aws.key_file
            options = remote_options(spec, o, addressed, key_file)
            store = HostKeyStore(forget_reused_addresses(state, instances, addressed), on_change=state.save)
            state.save()
            wait_for_ssh({n: a[0] for n, a in addressed.items()}, o.user, key_file, store, o.ssh_timeout_s, ui)
            fleet = fleet_of(self.connect(o), state, o, options.orchestrator.port)  # the controller replaces lost ones
            return remote.deploy(spec, state, options, ui, fleet)

    # -- down ---------------------------------------------------------------
    def down(self, name: str, state: Optional[ClusterState], ui: QuietUI) -> list[str]:
        """Everything tagged for the cluster, found by tag (no state needed); the instances first: the
        security group stays in use until they are gone."""
        aws = self.connect(self._options_of(state))
        instances = ec2.find_instances(aws, name)
        if instances:
            with ui.step(f"terminating {len(instances)} instance(s) of cluster {name!r} in {aws.region}"):
                ec2.terminate(aws, [i.id for i in instances if i.state != "shutting-down"])
                ec2.wait_for_state(aws, [i.id for i in instances], "terminated", self.timeout_s, self.poll_s,
                                   self.sleep)
        for group in ec2.find_tagged(aws, "security group", name):
            with ui.step(f"deleting security group {group['GroupId']}"):
                ec2.delete_group(aws, group["GroupId"], self.timeout_s, self.poll_s, self.sleep)
        for key in ec2.find_tagged(aws, "key pair", name):
            ec2.delete_key_pair(aws, key["KeyName"])
        for volume in ec2.find_tagged(aws, "volume", name):
            if volume["State"] == "available":  # detached from its instance, yet still billed
                aws.ec2("delete_volume", VolumeId=volume["VolumeId"])
        for removed in iam.remove(aws, name):
            ui.info(f"removed {removed}")
        left = ec2.leftovers(aws, name) + iam.leftovers(aws, name)
        if not left:
            ui.info(f"nothing tagged {ec2.TAG_CLUSTER}={name} is left in {aws.region}")
        return left

    def describe(self, state: ClusterState) -> str:
        o = self._options_of(state)
        record = state.resources.aws or AWSResources()
        spots = sum(1 for m in record.markets.values() if m == ec2.SPOT)
        market = f", {spots} of them spot" if spots else ""
        return (f"EC2 instances ({len(record.instances)} recorded{market}), a security group and a key pair tagged "
                f"{ec2.TAG_CLUSTER}={state.name} in {o.region or 'the default region'} (the EC2 console, "
                f"filtered by that tag, lists them), and the IAM role and instance profile "
                f"{iam.profile_name(state.name)}")

    # -- status and logs -----------------------------------------------------
    def details(self, state: ClusterState) -> dict[str, dict[str, str]]:
        """Each container's instance: id, type, zone, state, public IP and market (live from EC2)."""
        try:
            by_name = {i.name: i for i in ec2.find_instances(self.connect(self._options_of(state)), state.name)}
        except MlclusterError as exc:
            return {c.id: {"instance_state": f"unknown ({exc.message})"} for c in state.containers}
        facts = {}
        for c in state.containers:
            inst = by_name.get(c.worker)
            facts[c.id] = ({"instance_id": inst.id, "instance_type": inst.type, "zone": inst.zone,
                            "instance_state": inst.state, "host_address": inst.public_ip or "-",
                            "market": inst.market}
                           if inst else {"instance_state": "gone"})
        return facts

    def stopped_itself(self, state: ClusterState) -> Optional[str]:
        """The watchdogs power instances off (they then terminate): say so when
        every tagged instance is shutting down or gone."""
        try:
            found = ec2.find_instances(self.connect(self._options_of(state)), state.name)
        except MlclusterError:
            return None
        if all(i.state in ("shutting-down", "terminated", "stopped", "stopping") for i in found):
            return "autostop: its instances shut down and terminate"
        return None

    def logs(self, state: ClusterState, target: Optional[str], follow: bool, tail: int) -> Iterator[str]:
        return reading.logs(state, _recorded_options(state), target, follow, tail)

    def admin_channel(self, state: ClusterState) -> ContextManager[str]:
        # over the instances' checked SSH connections
        return reading.admin_channel(state, _recorded_options(state))


def _recorded_options(state: ClusterState) -> Optional[RemoteOptions]:
    """The deployment's hosts as `up` recorded them, with the `[ssh]` settings
    (None when no orchestrator host is recorded, or the settings changed)."""
    hosts = state.resources.hosts
    if "orchestrator" not in hosts:
        return None
    try:
        settings = parse_settings({k: v for k, v in (state.spec.provider_options.get("ssh") or {}).items()
                                   if k in SETTINGS})
    except MlclusterError:
        return None
    return RemoteOptions(orchestrator=hosts["orchestrator"],
                         workers=[h for n, h in sorted(hosts.items()) if n != "orchestrator"], **settings)
