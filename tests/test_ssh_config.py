"""The [ssh] config table: defaults, overrides, and a clear sentence for each mistake."""
from __future__ import annotations

import pytest

from mlcluster.errors import MlclusterError
from mlcluster.providers.ssh.options import parse_options
from mlcluster.state import ClusterSpec
from support.console import cli


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "id_ed25519"
    path.write_text("not read here")
    return str(path)


def spec(table, **kw) -> ClusterSpec:
    return ClusterSpec(name="lab", provider="ssh", provider_options={"ssh": table}, **kw)


def test_defaults_and_per_host_overrides(key, tmp_path):
    other = tmp_path / "other"
    other.write_text("x")
    options = parse_options(spec({
        "key": key, "user": "ubuntu",
        "orchestrator": {"address": "10.0.0.10"},
        "workers": ["10.0.0.11", {"address": "203.0.113.12", "private_address": "10.0.0.12", "runtime": "process",
                                  "user": "admin", "port": 2222, "key": str(other), "name": "big"}],
    }))
    o, (w1, w2) = options.orchestrator, options.workers
    assert (o.name, o.user, o.port, o.key, o.runtime, o.workdir, o.bind) == \
        ("orchestrator", "ubuntu", 22, key, "docker", ".mlcluster/lab", "10.0.0.10")
    assert (w1.name, w1.address, w1.private_address) == ("worker1", "10.0.0.11", "10.0.0.11")
    assert (w2.name, w2.address, w2.private_address, w2.user, w2.port, w2.key, w2.runtime) == \
        ("big", "203.0.113.12", "10.0.0.12", "admin", 2222, str(other), "process")
    # Services listen on the private address the orchestrator uses, never on every interface by default.
    assert (w1.bind, w2.bind) == ("10.0.0.11", "10.0.0.12")
    assert options.images == "build" and options.worker_port == 5000 and options.orchestrator_port == 8000
    assert [h.name for h in options.hosts()] == ["orchestrator", "worker1", "big"]


def test_bind_can_be_set_and_a_host_name_falls_back_to_all_addresses(key):
    options = parse_options(spec({"key": key, "bind": "0.0.0.0", "orchestrator": "10.0.0.10",
                                  "workers": [{"address": "w1.example", "bind": "10.0.0.21"}, "w2.example"]}))
    assert [h.bind for h in options.hosts()] == ["0.0.0.0", "10.0.0.21", "0.0.0.0"]
    options = parse_options(spec({"key": key, "orchestrator": "10.0.0.10", "workers": ["w2.example"]}))
    assert [h.bind for h in options.hosts()] == ["10.0.0.10", "0.0.0.0"]


def test_cli_runtime_is_the_default_and_the_orchestrator_may_share_a_worker_host(key):
    options = parse_options(spec({"key": key, "orchestrator": "10.0.0.11", "workers": ["10.0.0.11", "10.0.0.12"]},
                                 runtime="process"))
    assert {h.runtime for h in options.hosts()} == {"process"}
    assert [h.name for h in options.hosts()] == ["worker1", "worker2"]  # one machine, one connection


@pytest.mark.parametrize("table, words", [
    ({}, "needs an [ssh] table"),
    ({"workers": ["10.0.0.1"]}, "orchestrator"),
    ({"orchestrator": "10.0.0.1"}, "at least one host"),
    ({"orchestrator": "10.0.0.1", "workers": []}, "at least one host"),
    ({"orchestrator": "10.0.0.1", "workers": ["not an address!"]}, "neither an IP address nor a host name"),
    ({"orchestrator": {"adress": "10.0.0.1"}, "workers": ["10.0.0.2"]},
     "unknown setting 'adress'; did you mean 'address'?"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "key": "/nonexistent/id"},
     "key file /nonexistent/id does not exist"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "runtime": "podman"}, "docker or process"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "port": 70000}, "port number"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2", "10.0.0.2"]}, "listed twice"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "images": "pull"}, "worker_image"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "bind": "localhost"}, "must be an IP address"),
    ({"orchestrator": "10.0.0.1", "workers": [{"address": "10.0.0.2", "name": "Bad Name"}]}, "not allowed"),
    ({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], "worker_env": {"A": 1}}, "VARIABLE"),
])
def test_mistakes_are_named(table, words):
    with pytest.raises(MlclusterError) as info:
        parse_options(spec(table))
    assert words in str(info.value)


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('provider = "ssh"\n[ssh]\nkey = "/nonexistent/key"\n'
                      'orchestrator = { address = "10.0.0.1" }\nworkers = [ { address = "10.0.0.2" } ]\n')
    result = cli("up", "--config", str(config), home=tmp_path / "home", timeout=120, check=False)
    assert result.returncode == 1
    assert "/nonexistent/key does not exist" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "default" / "state.json").exists()


@pytest.mark.parametrize("table, words", [
    ({"host_grace": "soon"}, "[ssh] host_grace must be a number of seconds between 0 and 3600"),
    ({"host_grace": True}, "[ssh] host_grace must be a number of seconds"),
    ({"authorized_keys": ""}, "[ssh] authorized_keys must be the path of the hosts' authorized_keys file"),
    ({"orchestrator_port": 0}, "[ssh] orchestrator_port must be a port number from 1 to 65535"),
    ({"worker_port": "5000"}, "[ssh] worker_port must be a port number"),
])
def test_an_aws_clusters_ssh_settings_are_checked_as_an_ssh_clusters_are(table, words):
    # the aws provider reads the same [ssh] settings with the same checks (it makes the hosts itself)
    from mlcluster.providers.aws.hosts import ports, remote_options
    from mlcluster.providers.aws.options import AWSOptions
    aws = ClusterSpec(name="lab", provider="aws", provider_options={"ssh": table, "aws": {"region": "us-east-1"}})
    with pytest.raises(MlclusterError) as info:
        ports(aws)
        remote_options(aws, AWSOptions.from_spec(aws), {"orchestrator": ("10.0.0.1", "10.0.0.1")}, "key")
    assert words in str(info.value)
    with pytest.raises(MlclusterError) as info:  # and an ssh cluster's, word for word
        parse_options(spec({"orchestrator": "10.0.0.1", "workers": ["10.0.0.2"], **table}))
    assert words in str(info.value)
