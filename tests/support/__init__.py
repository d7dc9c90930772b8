"""Shared test support, loaded by tests/conftest.py through `pytest_plugins`.

- console:   `cli(...)`, the installed console script run as a subprocess; `home_fixture(...)`
- waiting:   `wait_for(predicate, what)`
- services:  `free_port()`, `Service`, `start_worker()`, `start_orchestrator()` (real gunicorn processes)
- load:      `ClosedLoop(url, clients, watch)`: closed-loop clients keeping every `Answer`; `failed(answers)`
- serving:   a small cluster of real worker/orchestrator processes (`Cluster`, `Background`, `port_of`...)
- moto:      moto's EC2/SSM server with injected faults (fixtures `moto_server`, `moto`)
- aws:       the aws provider against moto (`make_spec`, `make_provider`, `new_state`, `provision`, `RecordingUI`)
- sshhosts:  SSH test hosts in network namespaces (`SSHTestNetwork`, `missing_facilities`)
- sshcluster: an ssh-provider cluster on those hosts (`toml_config`, `our_processes`, `load`, `status`)
"""
