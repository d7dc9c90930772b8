"""The elastic cluster: healing, autoscaling and their events (issue 20)."""
