"""Changing what a running cluster serves without a gap: the roll's policy
(policy.py, pure), its record (record.py) and the roll of a local process
cluster (local.py)."""
