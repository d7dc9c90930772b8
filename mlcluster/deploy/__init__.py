"""What runs on machines, whoever provided them: the deployment layer.

A provider (mlcluster/providers) says which machines a cluster has; this
package starts, checks, stops and reads the logs of the services on them:
- `remote.RemoteDeployment`: the cluster onto hosts reached over SSH (the ssh
  provider's hosts from the config and the aws provider's instances alike),
  with the two runtimes of a host (`process.ProcessRuntime`,
  `docker.DockerRuntime`) behind one contract (`runtime.RemoteRuntime`);
- `localhost` and `local_docker`: this machine's processes and Docker engine;
- `watchdog`: autostop on any host, one agent per host (`agent.py`).

Nothing here imports a provider. The submodules are imported where used, so a
local command never loads paramiko.
"""
