"""EC2's instance metadata service (IMDSv2) for one instance that moto
launched, on an address the SSH test hosts reach: what boto3's default
credential chain asks on an instance that carries an instance profile.

    with InstanceMetadata(moto.url, instance_id, bind=net.gateway) as imds:
        # on the host: AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url

It answers as EC2 does, from moto's records at the time of each request:
- PUT /latest/api/token (with a TTL header) -> a session token, required by
  every GET below (401 without it);
- GET /latest/meta-data/iam/security-credentials/ -> the role of the
  instance's profile, or 404 when the instance has none (so a test proves
  that `up` attached the profile, not only that it exists);
- GET /latest/meta-data/iam/security-credentials/<role> -> credentials of
  that role from moto's STS AssumeRole;
- GET /latest/meta-data/instance-id and /placement/region.
Every request is counted by path (`asked`)."""
from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import boto3

CREDENTIALS = "/latest/meta-data/iam/security-credentials/"


class InstanceMetadata:
    def __init__(self, moto_url: str, instance_id: str, bind: str = "127.0.0.1", region: str = "us-east-1"):
        self.moto_url, self.instance_id, self.region = moto_url, instance_id, region
        self.tokens: set[str] = set()
        self.asked: Counter[str] = Counter()
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                metadata.asked[self.path] += 1
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self.answer(400, "")
                token = secrets.token_urlsafe(24)
                metadata.tokens.add(token)
                self.answer(200, token)

            def do_GET(self) -> None:
                metadata.asked[self.path] += 1
                if self.headers.get("X-aws-ec2-metadata-token") not in metadata.tokens:
                    return self.answer(401, "")
                status, body = metadata.lookup(self.path)
                self.answer(status, body)

            def answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((bind, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{bind}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)
        self.thread.start()

    def client(self, service: str):
        return boto3.client(service, region_name=self.region, endpoint_url=self.moto_url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def role(self) -> Optional[str]:
        """The role of the instance's profile, as moto records it now."""
        found = self.client("ec2").describe_instances(InstanceIds=[self.instance_id])["Reservations"]
        profile = found[0]["Instances"][0].get("IamInstanceProfile") if found else None
        if not profile:
            return None
        name = profile["Arn"].rsplit("/", 1)[1]
        roles = self.client("iam").get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        return roles[0]["RoleName"] if roles else None

    def lookup(self, path: str) -> tuple[int, str]:
        if path == "/latest/meta-data/instance-id":
            return 200, self.instance_id
        if path == "/latest/meta-data/placement/region":
            return 200, self.region
        if path.startswith(CREDENTIALS):
            role = self.role()
            if role is None:
                return 404, ""
            if path == CREDENTIALS:
                return 200, role
            if path != CREDENTIALS + role:
                return 404, ""
            arn = self.client("iam").get_role(RoleName=role)["Role"]["Arn"]
            got = self.client("sts").assume_role(RoleArn=arn, RoleSessionName=self.instance_id)["Credentials"]
            return 200, json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": got["AccessKeyId"],
                                    "SecretAccessKey": got["SecretAccessKey"], "Token": got["SessionToken"],
                                    "Expiration": got["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    "LastUpdated": got["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")})
        return 404, ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "InstanceMetadata":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
