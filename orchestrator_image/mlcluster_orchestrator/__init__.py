"""mlcluster's orchestrator: hands each request to a free worker container."""
