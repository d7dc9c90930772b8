"""Autoscaling on aws (issue 20): moto's server on the SSH test network's
gateway, instances mapped (`address_map`) onto SSH test hosts, the instance
metadata service of the orchestrator's instance there too. One worker
instance of one container, --min-containers 1 --max-containers 2: under a
closed-loop load the controller on the orchestrator's host launches a tagged
worker instance (spot, with the instance profile's credentials) within the
cap, copies the model onto it and serves from a container there; the load
gone, it drains and stops that container and terminates the instance (never
the orchestrator's, never up's). No request fails; nothing tagged is left
after `down`."""
from __future__ import annotations

import json

from support.awscluster import AwsConfig, up_with_metadata
from support.console import cli
from support.imds import CREDENTIALS
from support.load import ClosedLoop, failed
from support.moto import instances_by_name, live_workers, nothing_tagged
from support.sshcluster import autoscale, controller_events, controller_shown, host_network, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awsscale"  # unique to this file
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}
net = host_network(*HOSTS.values())


def test_the_load_launches_a_tagged_worker_within_the_cap_and_its_end_terminates_it(gateway_moto, net, tiny_model,
                                                                                     tmp_path):
    moto, orch = gateway_moto, net.hosts["orch"]
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, workers=1, spot=True,
                       autoscale={"min_containers": 1, "max_containers": 2, "target_ongoing": 1,
                                  "upscale_delay": 1, "downscale_delay": 3},
                       ssh={"host_grace": 3})
    with up_with_metadata(config) as up:
        url = up.url
        settings = json.loads((orch.workdir / "controller.json").read_text())
        assert settings["aws"]["cap"] == 2 and settings["autoscale"]["max_containers"] == 2
        assert live_workers(moto, CLUSTER) == ["worker1"]

        loop = ClosedLoop(url, clients=4, watch=True)
        caps: list[int] = []
        try:
            def serving_there() -> bool:
                caps.append(len(live_workers(moto, CLUSTER)))
                return any(c["id"].startswith("worker2-") and c["status"] in ("free", "busy")
                           for c in status(url)["containers"])
            with controller_shown(orch):
                wait_for(serving_there, "a container serving on a new worker instance", timeout=90, interval=0.5)
            wait_for(lambda: sum(1 for a in list(loop.answers) if a.container.startswith("worker2-")) >= 10,
                     "answers from worker2's container", timeout=30)
            # the cap: 2 containers of 1
            assert max(caps) <= 2 and live_workers(moto, CLUSTER) == ["worker1", "worker2"]
            shown = wait_for(lambda: (lambda a: a if a.get("current") == 2 else None)(autoscale(CLUSTER)),
                             "status --json showing 2 containers", timeout=30, interval=0.5)
            assert (shown["min"], shown["max"], shown["target"], shown["desired"]) == (1, 2, 1, 2), shown
        finally:
            answers = loop.finish()
        assert loop.most() <= 2
        wait_for(lambda: live_workers(moto, CLUSTER) == ["worker1"], "worker2 terminated once its container is gone",
                 timeout=60, interval=0.5)
        assert [c["id"] for c in status(url)["containers"]] == ["worker1-1"]
        assert failed(answers) == [] and len(answers) > 30
        assert up.imds.asked[CREDENTIALS] >= 1  # the profile's credentials, never the user's
        assert [s for _, s in instances_by_name(moto, CLUSTER)["orchestrator"]] == ["running"]

    found = controller_events(orch)
    ups = [e["reason"] for e in found if e["kind"] == "scale_up"]
    downs = [e["reason"] for e in found if e["kind"] == "scale_down"]
    assert any("launched worker2" in r and "spot" in r for r in ups), found
    assert any("started worker2-scale1 on worker2" in r for r in ups), found
    assert any("draining worker2-scale1" in r for r in downs), found
    assert any("terminated worker2" in r and "held no container" in r for r in downs), found
    print("\n" + "\n".join(f"{e['kind']:<10} {e['current']} -> {e['desired']}  {e['reason']}" for e in found))

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
