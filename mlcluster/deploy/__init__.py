"""What runs on machines, whoever provided them: the deployment layer (docs/architecture.md#tree).

A provider (mlcluster/providers) says which machines a cluster has (a
`RemoteOptions`: its host records and the deployment settings); this package
starts, checks, stops and reads the logs of the services on them, the same for
every provider: `remote.deploy` and `remote.remove`, and `reading` for what is
read from a deployed cluster (logs, the admin channel, status facts). Nothing
here imports a provider, and neither `remote` nor `reading` loads paramiko at
import (only a remote host's connection does), so a local `list`, `status` or
`up` never loads it (tests/test_layout.py).
"""
