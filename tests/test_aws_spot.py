"""Spot workers with an on-demand fallback (issue 21), against moto's server
with the fault layer refusing spot by the request's market parameter; boto3
over real HTTP. The CLI's usage errors and cost line through the command."""
from __future__ import annotations

import pytest

from mlcluster.elastic.events import read
from mlcluster.output import plan_rows, plan_text
from mlcluster.providers.aws.options import plan
from mlcluster.providers.aws.spot import SpotRefused
from mlcluster.state import ClusterState, ContainerRecord
from support.aws import RecordingUI, make_provider, make_spec, provision
from support.console import cli
from support.moto import Fault, ec2_client, nothing_tagged, tagged

SPOT_ASKED = {"InstanceMarketOptions.MarketType": "spot"}  # how EC2's query protocol carries the market


def lifecycles(server, cluster: str = "lab") -> dict[str, str]:
    """instance name -> EC2's InstanceLifecycle ("on-demand" when absent), read with a plain client."""
    answer = ec2_client(server).describe_instances(Filters=[{"Name": "tag:mlcluster:cluster", "Values": [cluster]}])
    out = {}
    for inst in (i for r in answer["Reservations"] for i in r["Instances"]):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        out[tags["mlcluster:name"]] = inst.get("InstanceLifecycle", "on-demand")
    return out


def test_spot_launches_the_workers_as_spot_and_the_orchestrator_on_demand(moto):
    instances, state = provision(make_spec(moto, workers=2, spot=True))
    assert lifecycles(moto) == {"orchestrator": "on-demand", "worker1": "spot", "worker2": "spot"}
    assert state.resources.aws.markets == {"orchestrator": "on-demand", "worker1": "spot", "worker2": "spot"}
    assert ClusterState.load("lab").resources.aws.markets["worker1"] == "spot"  # saved, not only in memory
    asked = [p.get("InstanceMarketOptions.MarketType") for p in moto.faults.params("RunInstances")]
    assert asked == [None, "spot", "spot"]  # orchestrator first, never spot
    spot_request = moto.faults.params("RunInstances")[1]
    assert spot_request["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert spot_request["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    provider = make_provider()
    assert {d["market"] for d in provider.details(_with_containers(state)).values()} == {"spot"}
    assert "2 of them spot" in provider.describe(state)


def _with_containers(state: ClusterState) -> ClusterState:
    """The state as `up` leaves it: one container record per worker (what `details` reports on)."""
    state.containers = [ContainerRecord(id=f"{w}-1", worker=w, host="10.0.0.1", port=5000)
                        for w in ("worker1", "worker2")]
    return state


def test_without_spot_every_instance_is_on_demand(moto):
    _, state = provision(make_spec(moto, workers=1))
    assert set(lifecycles(moto).values()) == {"on-demand"}
    assert all("InstanceMarketOptions.MarketType" not in p for p in moto.faults.params("RunInstances"))
    assert set(state.resources.aws.markets.values()) == {"on-demand"}


@pytest.mark.parametrize("code,times", [("SpotMaxPriceTooLow", 1),            # account-wide: no zone helps
                                        ("InsufficientInstanceCapacity", 6)])  # refused in each of the 6 zones
def test_a_refused_spot_worker_falls_back_to_on_demand_and_says_so(moto, code, times):
    moto.faults.inject(Fault("RunInstances", code, times=times, when=SPOT_ASKED))
    ui = RecordingUI()
    _, state = provision(make_spec(moto, workers=2, spot=True), ui=ui)
    assert lifecycles(moto) == {"orchestrator": "on-demand", "worker1": "on-demand", "worker2": "spot"}
    assert state.resources.aws.markets["worker1"] == "on-demand"
    fallback = [w for w in ui.warnings if "launched" in w and "on-demand instead" in w]
    assert len(fallback) == 1 and fallback[0].startswith("worker1:") and code in fallback[0]
    events = [e for e in read(state.dir) if e.kind == "spot_fallback"]
    assert [(e.container, code in e.reason) for e in events] == [("worker1", True)]
    assert state.resources.aws.instances["worker1"] in events[0].reason


def test_spot_fallback_never_refuses_and_down_leaves_nothing(moto):
    moto.faults.inject(Fault("RunInstances", "MaxSpotInstanceCountExceeded", times=-1, when=SPOT_ASKED))
    spec = make_spec(moto, workers=2, spot=True, spot_fallback="never")
    with pytest.raises(SpotRefused) as raised:
        provision(spec)
    assert raised.value.code == "MaxSpotInstanceCountExceeded" and "worker1" in raised.value.message
    assert "mlcluster down --name lab" in raised.value.hint
    assert lifecycles(moto) == {"orchestrator": "on-demand"}  # nothing launched on-demand in spot's place
    assert tagged(moto, "lab")["instances"] and tagged(moto, "lab")["instance_profiles"]
    state = ClusterState.load("lab")
    options = {"region": "us-east-1", "endpoint_url": moto.url}
    assert make_provider(options=options).down("lab", state, RecordingUI()) == []
    assert nothing_tagged(moto, "lab")


def test_other_spot_errors_are_not_mistaken_for_a_refusal(moto):
    moto.faults.inject(Fault("RunInstances", "InvalidParameterCombination", when=SPOT_ASKED))
    with pytest.raises(Exception, match="InvalidParameterCombination"):
        provision(make_spec(moto, workers=1, spot=True))
    assert "worker1" not in lifecycles(moto)


def test_the_plan_shows_spot_as_up_to_the_on_demand_price(moto):
    p = plan(make_spec(moto, workers=4, spot=True))
    rows = {r[0]: r for r in plan_rows(p)}
    assert rows["worker instances (spot)"][1:] == ["4", "m4.large (on-demand $0.100)", "up to $0.100",
                                                  "up to $0.400"]
    assert rows["orchestrator instance"][3:] == ["$0.100", "$0.100"]
    assert rows["total (estimate)"][4].startswith("up to $")
    text = plan_text(p)
    assert "on-demand price ($0.100/h each" in text and "does not look up live spot prices" in text
    assert "reclaim" in text


def write_config(path, server, *lines: str):
    path.write_text("\n".join(['name = "lab"', 'provider = "aws"', "workers = 4", "[aws]",
                               f'endpoint_url = "{server.url}"', 'allowed_cidr = "203.0.113.5/32"',
                               'region = "us-east-1"', *lines]) + "\n")
    return str(path)


def test_cli_cost_line_for_spot(moto, tmp_path):
    result = cli("up", "--config", write_config(tmp_path / "c.toml", moto), "--spot", check=False)
    assert result.returncode == 1 and "pass --yes" in result.stderr
    assert "worker instances (spot)" in result.stderr and "up to $0.400" in result.stderr
    assert moto.faults.calls == [] and nothing_tagged(moto, "lab")


@pytest.mark.parametrize("args,words", [
    (["--spot-fallback", "sometimes"], "'sometimes' is not one of on-demand, never"),
    (["--provider", "local", "--spot"], "--spot and --spot-fallback are for the aws provider"),
    (["--provider", "ssh", "--spot-fallback", "never"], "are for the aws provider, not ssh"),
])
def test_cli_usage_errors_exit_2(moto, tmp_path, args, words):
    result = cli("up", *args, "--yes", check=False)
    assert result.returncode == 2, result.stderr
    assert words in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_a_bad_spot_fallback_in_the_config_is_a_usage_error(moto, tmp_path):
    config = write_config(tmp_path / "c.toml", moto, 'spot_fallback = "sometimes"')
    result = cli("up", "--config", config, "--yes", check=False)
    assert result.returncode == 2 and "spot_fallback must be one of on-demand, never" in result.stderr
    assert moto.faults.calls == []


def test_cli_no_spot_overrides_the_config(moto, tmp_path):
    config = write_config(tmp_path / "c.toml", moto, "spot = true")
    with_spot = cli("up", "--config", config, check=False)
    without = cli("up", "--config", config, "--no-spot", check=False)
    assert "worker instances (spot)" in with_spot.stderr and "up to" in with_spot.stderr
    assert "worker instances (spot)" not in without.stderr and "up to" not in without.stderr
    assert "$0.400" in without.stderr and moto.faults.calls == []
