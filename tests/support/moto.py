"""moto's EC2, SSM and IAM in server mode on 127.0.0.1, with a small fault-injection
layer in front of it.

boto3 talks to it over real HTTP (`endpoint_url`), exactly as to AWS; nothing
is patched. moto validates key names, AMIs and instance types only when the
variables below are set before it is imported, so import this module before
anything imports moto.

`FaultLayer` answers chosen actions with AWS-shaped errors (EC2's XML, SSM's
JSON) before moto sees them, and records every action it passes on, so tests
can inject InsufficientInstanceCapacity, throttling, vCPU limits... and count
what was called.
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl

for _var in ("MOTO_ENABLE_KEYPAIR_VALIDATION", "MOTO_ENABLE_AMI_VALIDATION",
             "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION"):
    os.environ[_var] = "true"

import pytest  # noqa: E402
import requests  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)

# Credentials moto accepts; boto3 must never look further (no IMDS lookup).
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class Fault:
    """Answer `action` with error `code` (HTTP `status`) `times` times (-1:
    always), after letting the first `after` matching requests through, only
    for requests whose parameters include all of `when`."""
    action: str
    code: str
    status: int = 400
    times: int = 1
    after: int = 0
    when: dict[str, str] = field(default_factory=dict)
    message: str = "injected by the test"

    def matches(self, action: str, params: dict[str, Any]) -> bool:
        return action == self.action and all(str(params.get(k)) == v for k, v in self.when.items())

    def fires(self) -> bool:
        """Called for each matching request: does this one get the error?"""
        if self.after > 0:
            self.after -= 1
            return False
        if self.times == 0:
            return False
        self.times -= 1 if self.times > 0 else 0
        return True


class FaultLayer:
    """WSGI middleware: injected faults first, then moto."""

    def __init__(self, app: Any):
        self.app = app
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.calls.clear()

    def count(self, action: str) -> int:
        with self._lock:
            return sum(1 for a, _ in self.calls if a == action)

    def params(self, action: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for a, p in self.calls if a == action]

    def __call__(self, environ: dict, start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        target = environ.get("HTTP_X_AMZ_TARGET", "")   # JSON protocol (SSM): "AmazonSSM.GetParameter"
        if target:
            action, params = target.rpartition(".")[2], json.loads(body or b"{}")
        else:                                           # query protocol (EC2): form-encoded Action=...
            params = dict(parse_qsl(body.decode(errors="replace")))
            action = params.get("Action", "")
        with self._lock:
            if action:
                self.calls.append((action, params))
            fault = next((f for f in self.faults if f.matches(action, params) and f.fires()), None)
        if fault is None:
            return self.app(environ, start_response)
        return self._error(fault, json_protocol=bool(target), start_response=start_response)

    @staticmethod
    def _error(fault: Fault, json_protocol: bool, start_response: Any) -> list[bytes]:
        if json_protocol:
            body = json.dumps({"__type": fault.code, "message": fault.message}).encode()
            content_type = "application/x-amz-json-1.1"
        else:
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{fault.code}</Code>'
                    f"<Message>{fault.message}</Message></Error></Errors>"
                    f"<RequestID>{uuid.uuid4()}</RequestID></Response>").encode()
            content_type = "text/xml"
        start_response(f"{fault.status} Injected", [("Content-Type", content_type),
                                                    ("Content-Length", str(len(body)))])
        return [body]


class MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer on 127.0.0.1 (or `ip_address`: the SSH test network's
    gateway, for a controller on a test host) with `faults` (a FaultLayer) in front."""

    def __init__(self, port: int = 0, ip_address: str = "127.0.0.1"):
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self.faults: Optional[FaultLayer] = None

    def _server_entry(self) -> None:
        # The parent builds moto's app and serves it; wrap the app once built.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server
        self.faults = FaultLayer(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, self.faults, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every resource and fault (moto's own reset endpoint)."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
        assert self.faults is not None
        self.faults.clear()


# -- fixtures (tests/conftest.py loads this module as a plugin) ------------------
@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def isolated(server: MotoServer, monkeypatch, tmp_path) -> MotoServer:
    """`server` reset, fake credentials only (no profile, no config file, no
    instance metadata lookup) and a private MLCLUSTER_HOME, for one test."""
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("MLCLUSTER_HOME", str(tmp_path / "home"))
    server.reset()
    return server


@pytest.fixture
def moto(moto_server, monkeypatch, tmp_path):
    """The session's moto server, `isolated` for this test."""
    yield isolated(moto_server, monkeypatch, tmp_path)
    moto_server.reset()


@pytest.fixture(scope="module")
def gateway_moto_server(net):
    """A moto server on the gateway of the module's SSH test network (`net`),
    where a controller running on a test host reaches it."""
    server = MotoServer(ip_address=net.gateway)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway_moto(gateway_moto_server, monkeypatch, tmp_path):
    """`moto` for a test whose cluster runs on SSH test hosts: the server on
    the network's gateway (`gateway_moto_server`), `isolated` for this test."""
    yield isolated(gateway_moto_server, monkeypatch, tmp_path)
    gateway_moto_server.reset()


def ec2_client(server: MotoServer, region: str = "us-east-1"):
    """A plain boto3 client on the server, for checks independent of mlcluster's code."""
    import boto3
    return boto3.client("ec2", region_name=region, endpoint_url=server.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def instances_by_name(server: MotoServer, cluster: str) -> dict[str, list[tuple[str, str]]]:
    """Instance name (the mlcluster:name tag) -> [(instance id, state)] of
    every instance tagged for `cluster`, in any state."""
    found = ec2_client(server).describe_instances(
        Filters=[{"Name": "tag:mlcluster:cluster", "Values": [cluster]}])["Reservations"]
    out: dict[str, list[tuple[str, str]]] = {}
    for i in (i for r in found for i in r["Instances"]):
        name = next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "mlcluster:name"), "")
        out.setdefault(name, []).append((i["InstanceId"], i["State"]["Name"]))
    return out


def live_workers(server: MotoServer, cluster: str) -> list[str]:
    """The names of `cluster`'s worker instances pending or running, sorted
    (a name twice when two such instances carry it); the orchestrator's aside."""
    return sorted(name for name, found in instances_by_name(server, cluster).items() if name != "orchestrator"
                  for _, state in found if state in ("pending", "running"))


def replacement(server: MotoServer, cluster: str, name: str, old: str) -> str:
    """The id of a running instance of `cluster` named `name` other than `old` ("" while there is none)."""
    return next((i for i, state in instances_by_name(server, cluster).get(name, [])
                 if i != old and state == "running"), "")


def iam_client(server: MotoServer):
    """A plain boto3 IAM client on the server (moto serves IAM on the same endpoint)."""
    import boto3
    return boto3.client("iam", region_name="us-east-1", endpoint_url=server.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def tagged_iam(server: MotoServer, cluster: str) -> dict[str, list[str]]:
    """IAM roles and instance profiles tagged mlcluster:cluster=<cluster>, whatever their names."""
    iam = iam_client(server)
    mine = {"Key": "mlcluster:cluster", "Value": cluster}
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]
             if mine in iam.list_role_tags(RoleName=r["RoleName"])["Tags"]]
    # moto has no ListInstanceProfileTags; its ListInstanceProfiles carries the tags
    profiles = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
                if mine in p.get("Tags", [])]
    return {"iam_roles": roles, "instance_profiles": profiles}


def tagged(server: MotoServer, cluster: str, region: str = "us-east-1") -> dict[str, list[str]]:
    """Every resource tagged mlcluster:cluster=<cluster> that still exists or bills (EC2 and IAM)."""
    ec2 = ec2_client(server, region)
    by_tag = [{"Name": "tag:mlcluster:cluster", "Values": [cluster]}]
    live = ["pending", "running", "stopping", "stopped", "shutting-down"]
    reservations = ec2.describe_instances(Filters=by_tag + [{"Name": "instance-state-name", "Values": live}])
    return {
        "instances": [i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]],
        "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"]],
        "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=by_tag)["KeyPairs"]],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=by_tag)["Volumes"]],
        **tagged_iam(server, cluster),
    }


def nothing_tagged(server: MotoServer, cluster: str) -> bool:
    return not any(tagged(server, cluster).values())
