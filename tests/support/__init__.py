"""Shared test support, loaded by tests/conftest.py through `pytest_plugins`.

- console:   `cli(...)`, the installed console script run as a subprocess; `home_fixture(...)`
- waiting:   `wait_for(predicate, what)`; `holds(predicate, what, seconds)` (what must not happen meanwhile)
- services:  `free_port()`, `Service`, `start_worker()`, `start_orchestrator()` (real gunicorn processes)
- load:      `ClosedLoop(url, clients, watch)`: closed-loop clients keeping every `Answer`; `failed(answers)`
- serving:   a small cluster of real worker/orchestrator processes (`Cluster`, `Background`, `port_of`...)
- moto:      moto's EC2/SSM server with injected faults (fixtures `moto_server`, `moto`)
  and on the SSH test network's gateway (`gateway_moto`); `instances_by_name`, `live_workers`, `replacement`
- aws:       the aws provider against moto (`make_spec`, `make_provider`, `new_state`, `provision`, `RecordingUI`)
- sshhosts:  SSH test hosts in network namespaces (`SSHTestNetwork`, `missing_facilities`)
- sshcluster: an ssh-provider cluster on those hosts (`host_network`, `toml_config`, `cluster_fixture`,
  `up_cluster` -> `UpCluster`, `containers`, `autoscale`, `events`, `marked`, `docker_on`, `bench_network`...)
- awscluster: an aws cluster whose instances are mapped onto those hosts (`AwsConfig`, `provision_on_test_hosts`,
  `up_with_metadata` -> `AwsUp`)
- healing, scaledown: the elastic scenarios shared by the process and Docker runtimes' tests
"""
