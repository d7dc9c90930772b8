#!/usr/bin/env bash
# System setup for the `ssh` tests (tests/support/sshhosts.py): Debian's OpenSSH server
# (started by hand by the tests; there is no systemd) and iproute2 for network
# namespaces, veth pairs and the test bridge; tcpdump to watch what crosses the bridge
# (tests/test_admin_channel.py). Idempotent and quick: it installs
# only what is missing. Runs as root on Debian 12 (as CI does).
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)

if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The package's post-install tries to start sshd via the init system; with
    # no systemd that is refused harmlessly (the tests start their own daemons).
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The privilege-separation directory sshd insists on.
mkdir -p /run/sshd
chmod 0755 /run/sshd
/usr/sbin/sshd -V 2>&1 | head -1 || true
