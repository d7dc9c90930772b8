"""What runs on machines, whoever provided them: the deployment layer.

A provider (mlcluster/providers) says which machines a cluster has; this
package starts, checks, stops and reads the logs of the services on them:
- `host`: a Host (run -> Result, put, stream): `LocalHost` (this machine) and
  `RemoteHost` (over SSH); the two runtimes (`process.ProcessRuntime`,
  `docker.DockerRuntime`) run on either, behind one contract (`runtime.Runtime`);
- `remote.RemoteDeployment`: the cluster onto hosts reached over SSH (the ssh
  provider's hosts from the config and the aws provider's instances alike);
- `local_docker` and `localhost`: the cluster's containers on this machine
  (the Docker runtime on a LocalHost); its processes found by marker;
- `watchdog`: autostop on any host, one agent per host (`agent.py`).

Nothing here imports a provider. The submodules are imported where used, so a
local command never loads paramiko.
"""
