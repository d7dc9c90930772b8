"""The local provider: the cluster on this machine, as processes (provider.py) or Docker containers (docker.py)."""
