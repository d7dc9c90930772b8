"""The ssh provider: machines you own, reached over SSH (options, host, the process and docker runtimes)."""
