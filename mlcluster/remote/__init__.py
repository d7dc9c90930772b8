"""The SSH library: connections, results, host keys, work on many hosts. No cluster knowledge."""
