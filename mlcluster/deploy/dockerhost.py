"""Docker on a host, for the Docker runtime (deploy/docker.py): installed with the
distribution's package manager where missing, started (with or without an init
system), and usable by the login user, through `sudo -n docker` until its new
`docker` group membership takes effect. Needs root or password-less sudo on the host.
"""
from __future__ import annotations

from ..errors import MlclusterError
from ..remote.results import quote
from .host import Host, RemoteHost

INSTALL_SCRIPT = r"""
set -e
. /etc/os-release
case " $ID $ID_LIKE " in
  *" debian "*|*" ubuntu "*)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io ;;
  *" amzn "*|*" fedora "*|*" rhel "*|*" centos "*)
    if command -v dnf >/dev/null; then dnf install -y -q docker; else yum install -y -q docker; fi ;;
  *) echo "no known way to install Docker on $ID ($PRETTY_NAME)" >&2; exit 3 ;;
esac
"""
START_SCRIPT = r"""
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl enable --now docker
elif command -v service >/dev/null && service docker start; then :
else setsid dockerd >/var/log/mlcluster-dockerd.log 2>&1 </dev/null & fi
for i in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done
echo "dockerd did not answer within 60 s" >&2; exit 1
"""


def docker(host: Host) -> str:
    """How to call docker on this host ("docker" or "sudo -n docker")."""
    return host.facts.get("docker", "docker")


def has_docker(host: Host) -> bool:
    if "docker" in host.facts:
        return True
    for command in ("docker", f"{host.sudo}docker"):
        if host.run(f"{command} info >/dev/null 2>&1", warn=True, timeout=30).ok:
            host.facts["docker"] = command
            return True
    return False


def ensure_docker(host: RemoteHost, step) -> None:
    """Docker installed, running and usable by the login user (or via sudo)."""
    if has_docker(host):
        return
    sudo = host.sudo
    if not host.run("command -v docker >/dev/null", warn=True).ok:
        step.update(f"{host.name}: installing Docker")
        result = host.run(f"{sudo}sh -c {quote(INSTALL_SCRIPT)}", timeout=900, warn=True)
        if not result.ok:
            raise MlclusterError(f"{host.name}: installing Docker failed: {result.tail(3)}",
                                 "install Docker on the host yourself, or use runtime = \"process\"")
    step.update(f"{host.name}: starting Docker")
    result = host.run(f"{sudo}sh -c {quote(START_SCRIPT)}", timeout=120, warn=True)
    if not result.ok:
        raise MlclusterError(f"{host.name}: Docker is installed but does not start: {result.tail(3)}")
    if sudo:
        # The group applies to new logins: reconnect so later commands have it.
        host.run(f"{sudo}usermod -aG docker {quote(host.config.user)}", warn=True)
        host.conn.close()
        host.facts.pop("docker", None)
    if not has_docker(host):
        raise MlclusterError(f"{host.name}: Docker runs but user {host.config.user!r} cannot use it, not even with sudo",
                             "give the user password-less sudo or membership of the docker group")
