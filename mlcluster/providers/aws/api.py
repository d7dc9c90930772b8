"""The one door to AWS: boto3 clients, narrow retries, and errors a person can read.

Credentials come only from boto3's own chain (environment, shared config and
profiles, SSO, container or instance role); mlcluster never asks for them and
never writes them anywhere. boto3's silent retries are turned off
(`total_max_attempts=1`) so that what is retried is decided here, narrowly:
throttling and AWS's own transient server errors, with capped exponential
backoff and jitter. Everything else becomes an `AWSError` carrying the AWS
error code, so callers decide on codes and no boto exception leaves the
`aws_*` modules.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import boto3
from botocore import exceptions as bx
from botocore.config import Config

from ...errors import MlclusterError, see_docs

THROTTLING = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
                        "RequestThrottledException", "TooManyRequestsException", "ThrottledException",
                        "SlowDown", "PriorRequestNotComplete"})
TRANSIENT = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})
EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
REJECTED = frozenset({"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch",
                      "UnrecognizedClientException", "InvalidAccessKeyId"})
FORBIDDEN = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
POLICY_HINT = "the minimal IAM policy lists what mlcluster needs; " + see_docs("aws-not-allowed")


class AWSError(MlclusterError):
    """An AWS call failed; `code` is AWS's error code ("" when no call was answered)."""

    def __init__(self, message: str, hint: str = "", code: str = "", operation: str = ""):
        super().__init__(message, hint)
        self.code, self.operation = code, operation


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter; `sleep` is injectable for tests."""
    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def wait(self, attempt: int) -> None:
        self.sleep(random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt)))


class AWS:
    """The clients of one region's session, with `call(service, op, **kw)` (and `ec2(op, **kw)`,
    `iam(op, **kw)`) that retries narrowly and raises only `AWSError`."""

    def __init__(self, region: str = "", profile: str = "", endpoint_url: str = "",
                 backoff: Optional[Backoff] = None):
        self.profile = profile
        self.backoff = backoff or Backoff()
        try:
            session = boto3.Session(profile_name=profile or None, region_name=region or None)
        except bx.ProfileNotFound:
            raise AWSError(f"the AWS profile {profile!r} is not in your AWS configuration",
                           "`aws configure list-profiles` shows the profiles you have") from None
        self._session = session
        self.region = session.region_name or ""
        if not self.region:
            raise AWSError("no AWS region is set",
                           "pass --region, set `region` in the [aws] table, or set AWS_REGION")
        self._endpoint = endpoint_url or None
        self._config = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60,
                              user_agent_extra="mlcluster")
        self._clients: dict[str, Any] = {}
        for service in ("ec2", "ssm"):  # the others at first use: most commands never call IAM
            self._client(service)

    def require_credentials(self) -> None:
        """Raise AWSError unless boto3's chain finds credentials. Local: no AWS
        call (whether AWS accepts them shows at the first call)."""
        try:
            found = self._session.get_credentials()
        except bx.BotoCoreError as exc:
            raise translate(exc, "sts", self.profile) from None
        if found is None:
            raise translate(bx.NoCredentialsError(), "sts", self.profile)

    def ec2(self, operation: str, **kwargs: Any) -> dict:
        return self.call("ec2", operation, **kwargs)

    def iam(self, operation: str, **kwargs: Any) -> dict:
        return self.call("iam", operation, **kwargs)

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(service, endpoint_url=self._endpoint, config=self._config)
        return self._clients[service]

    def call(self, service: str, operation: str, **kwargs: Any) -> dict:
        """One call to a service of the session (ec2, ssm, iam, sts, service-quotas)."""
        method = getattr(self._client(service), operation)
        for attempt in range(self.backoff.attempts):
            try:
                return method(**kwargs)
            except bx.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if (code in THROTTLING or code in TRANSIENT) and attempt + 1 < self.backoff.attempts:
                    self.backoff.wait(attempt)
                    continue
                raise translate(exc, service, self.profile) from None
            except bx.BotoCoreError as exc:
                raise translate(exc, service, self.profile) from None
        raise AssertionError("unreachable: the last attempt returns or raises")


def retry_while(retryable: Callable[[AWSError], bool], call: Callable[[], Any], timeout_s: float, poll_s: float,
                sleep: Callable[[float], None] = time.sleep) -> Any:
    """`call()`, again every `poll_s` s while it fails with an error `retryable` accepts (AWS not
    consistent yet), for at most `timeout_s` s; any other error propagates at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except AWSError as exc:
            if not retryable(exc) or time.monotonic() > deadline:
                raise
        sleep(poll_s)


def translate(exc: Exception, service: str, profile: str = "") -> AWSError:
    """One sentence (and a hint) for a boto exception."""
    login = f"aws sso login --profile {profile}" if profile else "aws sso login"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AWSError("no AWS credentials were found",
                        "set AWS_PROFILE or pass --profile (or use environment variables, `aws sso login` or an "
                        "instance role); mlcluster never asks for keys and never stores them")
    if isinstance(exc, (bx.SSOError, bx.TokenRetrievalError, bx.CredentialRetrievalError)):
        return AWSError("your AWS login session has expired or was never started", f"run `{login}`, then try again")
    if isinstance(exc, bx.EndpointConnectionError):
        return AWSError(f"cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')}",
                        "check the network and the region name")
    if isinstance(exc, bx.ConnectionError):
        return AWSError(f"the connection to AWS failed: {exc}", "check the network, then run the command again")
    if not isinstance(exc, bx.ClientError):
        return AWSError(f"the AWS SDK failed: {exc}")
    error = exc.response.get("Error", {})
    code, message, operation = error.get("Code", ""), error.get("Message", ""), exc.operation_name
    said = {EXPIRED: ("your AWS credentials have expired", f"renew them (for example `{login}`), then run again"),
            REJECTED: (f"AWS did not accept your credentials ({code})",
                       "`aws sts get-caller-identity` shows which identity boto3 finds"),
            FORBIDDEN: (f"your AWS identity is not allowed to call {service}:{operation}", POLICY_HINT),
            THROTTLING: (f"AWS kept throttling {operation} after several retries", "wait a minute and run again")}
    sentence, hint = next((words for codes, words in said.items() if code in codes),
                          (f"AWS refused {operation}: {message or code} ({code})", ""))
    return AWSError(sentence, hint, code, operation)
