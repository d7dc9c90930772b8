"""A second `up` while one of `up`'s worker instances is scaled away on aws
(issue 20's leftover): moto's server on the SSH test network's gateway,
instances mapped (`address_map`) onto SSH test hosts, as in
test_elastic_aws_park.py. A 2-worker cluster of one container each,
--min-containers 1 --max-containers 2: under one client the controller parks
one of `up`'s containers and terminates its emptied instance. The machine is
gone (its test host loses the model; a new instance boots there without it).
`up` again with the same config, under the same light load, launches that
worker's instance itself (exactly one: the controller launches none beside
it) and its container serves there again. The controller, told of the new
instance by `up`, counts it, and once the light load has wanted one
container for the downscale delay it parks that container and scales the
instance away again. No request fails; nothing is ever counted as lost;
`down` leaves nothing tagged."""
from __future__ import annotations

import shutil
import time

from support.awscluster import SHRINKING, AwsConfig, up_with_metadata
from support.console import cli
from support.load import ClosedLoop, failed
from support.moto import instances_by_name, live_workers, nothing_tagged
from support.sshcluster import autoscale, controller_events, controller_shown, host_network, ssh_marks, status
from support.waiting import wait_for

pytestmark = ssh_marks()

CLUSTER = "awsagain"  # unique to this file
HOSTS = {"orchestrator": "orch", "worker1": "w1", "worker2": "w2"}
net = host_network(*HOSTS.values())


def scaled_away(moto, first: dict[str, str]) -> str:
    """The name of one of `up`'s worker instances the controller terminated ("" while none is)."""
    return next((n for n in ("worker1", "worker2")
                 if dict(instances_by_name(moto, CLUSTER)[n]).get(first[n]) in ("shutting-down", "terminated")), "")


def test_a_second_up_brings_a_scaled_away_instance_back_once_and_the_controller_scales_it_away_again(
        gateway_moto, net, tiny_model, tmp_path):
    moto, orch = gateway_moto, net.hosts["orch"]
    config = AwsConfig(tmp_path / "aws.toml", moto, net, HOSTS, CLUSTER, tiny_model, autoscale=SHRINKING,
                       ssh={"host_grace": 3})
    with up_with_metadata(config) as up:
        url, first = up.url, up.instances
        light = ClosedLoop(url, clients=1, watch=True)
        caps: list[int] = []
        try:
            with controller_shown(orch):
                gone = wait_for(lambda: scaled_away(moto, first), "one of up's worker instances scaled away",
                                timeout=90, interval=0.5)
            stays = "worker2" if gone == "worker1" else "worker1"
            host = net.hosts[HOSTS[gone]]
            net.cut(host)  # the machine is gone ...
            for model in host.workdir.glob("model-*"):
                shutil.rmtree(model)
            wait_for(lambda: light.count() >= 10, "the light load served on the one container left", timeout=30)
            net.restore(host)  # ... and the instance `up` launches boots at its mapped address, without the model

            again = cli("up", "--config", str(config.path), "--yes", timeout=600, check=False)
            assert again.returncode == 0, again.stderr[-3000:]
            ids = [i for i, _ in instances_by_name(moto, CLUSTER)[gone]]
            assert len(ids) == 2, ids  # the first, terminated, and the one `up` launched
            relaunched = next(i for i in ids if i != first[gone])
            assert live_workers(moto, CLUSTER) == ["worker1", "worker2"]
            assert list(host.workdir.glob("model-*"))  # `up` copied the model onto the new instance

            def both_serving() -> bool:
                caps.append(len(live_workers(moto, CLUSTER)))
                shown = {c["id"]: c["status"] for c in status(url)["containers"]}
                return all(shown.get(f"{n}-1") in ("free", "busy") for n in (gone, stays))
            with controller_shown(orch):
                wait_for(both_serving, f"{gone}-1 serving again on {relaunched}", timeout=60, interval=0.5)

            # the light load wants one container: the controller scales the new instance away again
            # (or the other one: it parks whichever of `up`'s containers empties a host first)
            def scaled_away_again() -> str:
                caps.append(len(live_workers(moto, CLUSTER)))
                latest = {n: ([first[n]] if n == stays else [first[n], relaunched]) for n in (gone, stays)}
                states = dict(i for found in instances_by_name(moto, CLUSTER).values() for i in found)
                return next((n for n, known in latest.items()
                             if states.get(known[-1]) in ("shutting-down", "terminated")), "")
            started = time.monotonic()
            with controller_shown(orch):
                second = wait_for(scaled_away_again, "an instance scaled away again after the second up",
                                  timeout=90, interval=0.5)
            print(f"\nsecond up: {second} scaled away again {time.monotonic() - started:.1f} s after "
                  f"{gone}-1 served again")
            shown = wait_for(lambda: (lambda a: a if a.get("scaled_away") == [second] else None)(autoscale(CLUSTER)),
                             "status --json showing the instance scaled away", timeout=30, interval=0.5)
            assert shown["parked"] == [f"{second}-1"] and (shown["current"], shown["min"], shown["max"]) == (1, 1, 2)
            wait_for(lambda: light.count() >= 20, "more answers", timeout=30)
        finally:
            answers = light.finish()
        assert failed(answers) == [] and len(answers) > 20
        assert max(caps) <= 2  # never more than 2 worker instances
        assert light.most() <= 2  # never more than 2 containers in the orchestrator's registry
        with controller_shown(orch):  # nothing launched beside `up`'s: two instances ever under its name
            assert sorted(i for i, _ in instances_by_name(moto, CLUSTER)[gone]) == sorted([first[gone], relaunched])

    found = controller_events(orch)
    assert not [e for e in found if e["kind"] == "heal" and e.get("container") in ("worker1", "worker2")], found
    assert [e for e in found if e["kind"] == "scale_down" and "scaled away" in e["reason"]
            and second in e["reason"]], found
    print("\n" + "\n".join(f"{e['kind']:<10} {e['current']} -> {e['desired']}  {e['reason']}" for e in found))

    down = cli("down", "--name", CLUSTER, "--yes", check=False)
    assert down.returncode == 0, down.stderr[-3000:]
    assert nothing_tagged(moto, CLUSTER)
