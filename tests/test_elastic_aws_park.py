"""`up`'s worker instances scaled away on aws (issue 20): moto's server on the
SSH test network's gateway, instances mapped (`address_map`) onto SSH test
hosts, the orchestrator instance's metadata service there too. A 2-worker
cluster of one container each, --min-containers 1 --max-containers 2: under
one client the controller parks one of `up`'s containers, and once its
instance has held nothing but that parked container for the downscale delay
it terminates it (moto says so) and does not replace it (scaled away, not
lost). The test host of that instance is then cut off and loses its copy of
the model, as a terminated machine would. A step load launches the instance
again under its name (within the cap: never more than 2 worker instances nor
2 containers), the model is copied onto it, and the parked container serves
there again. No request fails; `status --json` and the events say what
happened; `down` leaves nothing tagged."""
from __future__ import annotations

import json
import shutil
import time

from support.awscluster import SHRINKING, AwsConfig, up_with_metadata
from support.console import cli
from support.imds import CREDENTIALS
from support.load import ClosedLoop, failed
from support.moto import instances_by_name, live_workers, nothing_tagged
from support.sshcluster import autoscale, controller_events, controller_shown, host_network, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awspark"  # unique to this file
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}
net = host_network(*HOSTS.values())


def test_an_emptied_worker_instance_is_terminated_and_launched_again_for_its_parked_container(
        gateway_moto, net, tiny_model, tmp_path):
    moto, orch = gateway_moto, net.hosts["orch"]
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, autoscale=SHRINKING,
                       ssh={"host_grace": 3})
    with up_with_metadata(config) as up:
        url, first, imds = up.url, up.instances, up.imds
        assert json.loads((orch.workdir / "controller.json").read_text())["aws"]["cap"] == 2
        assert live_workers(moto, CLUSTER) == ["worker1", "worker2"]

        light = ClosedLoop(url, clients=1, watch=True)
        step: ClosedLoop | None = None
        caps: list[int] = []
        try:
            started = time.monotonic()
            with controller_shown(orch):
                gone = wait_for(lambda: next((n for n in ("worker1", "worker2")
                                              if n not in live_workers(moto, CLUSTER)), None),
                                "one of up's worker instances terminated once its container is parked",
                                timeout=90, interval=0.5)
            print(f"\nidle: {gone} terminated {time.monotonic() - started:.1f} s after the light load began")
            stays = "worker2" if gone == "worker1" else "worker1"
            assert [s for _, s in instances_by_name(moto, CLUSTER)[gone]][0] in ("shutting-down", "terminated")
            assert [c["id"] for c in status(url)["containers"]] == [f"{stays}-1"]
            shown = wait_for(lambda: (lambda a: a if a.get("scaled_away") == [gone] else None)(autoscale(CLUSTER)),
                             "status --json showing the instance scaled away", timeout=30, interval=0.5)
            assert shown["parked"] == [f"{gone}-1"] and (shown["current"], shown["min"], shown["max"]) == (1, 1, 2)
            assert f"parked: {gone}-1" in shown["reason"], shown
            # the machine is gone: nothing of the cluster's on its test host any more
            host = net.hosts[HOSTS[gone]]
            net.cut(host)
            for model in host.workdir.glob("model-*"):
                shutil.rmtree(model)
            # scaled away is not lost: nothing launched in its place
            assert len(instances_by_name(moto, CLUSTER)[gone]) == 1
            wait_for(lambda: light.count() >= 20, "the light load served on the one container left", timeout=30)

            step = ClosedLoop(url, clients=4)
            stepped = time.monotonic()
            again = wait_for(lambda: next((i for i, s in instances_by_name(moto, CLUSTER)[gone]
                                           if s in ("pending", "running") and i != first[gone]), None),
                             f"{gone} launched again", timeout=60, interval=0.5)
            net.restore(host)  # the new instance boots at the mapped address, without the model

            def serving_again() -> bool:
                caps.append(len(live_workers(moto, CLUSTER)))
                return {c["id"]: c["status"] for c in status(url)["containers"]}.get(f"{gone}-1") in ("free", "busy")
            with controller_shown(orch):
                wait_for(serving_again, f"{gone}-1 serving on the new instance", timeout=120, interval=0.5)
            print(f"step: {gone}-1 serving on {again} {time.monotonic() - stepped:.1f} s after the step")
            wait_for(lambda: sum(1 for a in list(step.answers) if a.container == f"{gone}-1") >= 10,
                     f"answers from {gone}-1", timeout=30)
            assert max(caps) <= 2 and live_workers(moto, CLUSTER) == ["worker1", "worker2"]  # the cap
            assert list(host.workdir.glob("model-*"))  # the model was copied onto it
            shown = wait_for(lambda: (lambda a: a if a.get("current") == 2 else None)(autoscale(CLUSTER)),
                             "status --json showing 2 containers", timeout=30, interval=0.5)
            assert shown["parked"] == [] and shown["scaled_away"] == [], shown
        finally:
            answers = light.finish() + (step.finish() if step else [])
        assert light.most() <= 2  # never more than 2 containers in the orchestrator's registry
        assert failed(answers) == [] and len(answers) > 50
        assert imds.asked[CREDENTIALS] >= 1  # the profile's credentials, never the user's
        assert [s for _, s in instances_by_name(moto, CLUSTER)["orchestrator"]] == ["running"]
        # the one terminated, the one launched again: never replaced as a lost one, never launched twice
        with controller_shown(orch):
            assert sorted(i for i, _ in instances_by_name(moto, CLUSTER)[gone]) == sorted([first[gone], again])

    found = controller_events(orch)
    downs = [e["reason"] for e in found if e["kind"] == "scale_down"]
    ups = [e["reason"] for e in found if e["kind"] == "scale_up"]
    assert any(f"draining {gone}-1 (up's)" in r for r in downs), found
    assert any(f"terminated {gone} ({first[gone]}): scaled away" in r and "downscale delay 3 s" in r
               for r in downs), found
    assert any(f"launched {gone} again ({again}" in r and f"for {gone}-1 (up's, parked)" in r for r in ups), found
    assert any(f"{gone}-1 back on {gone}" in r for r in ups), found
    assert not [e for e in found if e["kind"] == "heal" and e.get("container") == gone], found  # never "lost"
    print("\n" + "\n".join(f"{e['kind']:<10} {e['current']} -> {e['desired']}  {e['reason']}" for e in found))
    listed = json.loads(cli("events", "--name", CLUSTER, "--json").stdout)["events"]
    assert any(e["kind"] == "scale_down" and "scaled away" in e["reason"] for e in listed), listed

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
