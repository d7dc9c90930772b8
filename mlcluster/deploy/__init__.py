"""What runs on machines, whoever provided them: the deployment layer.

A provider (mlcluster/providers) says which machines a cluster has; this
package starts, checks, stops and reads the logs of the services on them:
- `host`: a Host (run -> Result, put, stream): `LocalHost` (this machine) and
  `RemoteHost` (over SSH); the two runtimes (`process.ProcessRuntime`,
  `docker.DockerRuntime`) run on either, behind one contract (`runtime.Runtime`);
- `remote.RemoteDeployment`: the cluster onto its hosts, whoever provided them:
  the ssh provider's hosts from the config, the aws provider's instances, and
  this machine (the local provider's process clusters: LocalHosts); `reading`:
  what is read from a deployed cluster (logs, admin channel, details);
- `local_docker` and `localhost`: a local cluster's Docker containers (the
  Docker runtime on a LocalHost, with its network and volumes, still deployed
  apart); this machine's processes found by marker;
- `watchdog`: autostop on any host, one agent per host (`agent.py`).

Nothing here imports a provider. The submodules are imported where used, so a
local `list` or `status` never loads paramiko.
"""
