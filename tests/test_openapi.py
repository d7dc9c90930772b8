"""The orchestrator's OpenAPI document: valid OpenAPI 3.1, served at /openapi.json, and true of the real
answers of a running orchestrator (a real worker with a tiny model behind it) for each documented route."""
from __future__ import annotations

import json

import jsonschema
import pytest
import requests
from openapi_spec_validator import validate

from mlcluster_orchestrator.openapi import DOCUMENT
from support.serving import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model):
    c = Cluster(tmp_path_factory.mktemp("openapi"))
    try:
        c.start_orchestrator()
        yield c
    finally:
        c.stop()


def conforms(answer: requests.Response, path: str, method: str = "get") -> None:
    """The answer's status is documented for this route, and its body matches the documented schema."""
    responses = DOCUMENT["paths"][path][method]["responses"]
    assert str(answer.status_code) in responses, f"{method.upper()} {path} answered {answer.status_code}: undocumented"
    documented = responses[str(answer.status_code)]
    media = answer.headers["Content-Type"].split(";")[0]
    assert media in documented["content"], f"{path} answered {media}"
    schema = documented["content"][media]["schema"]
    for header in documented.get("headers", {}):
        assert header in answer.headers, f"{path} {answer.status_code} lacks its documented {header} header"
    if media == "application/json":
        jsonschema.Draft202012Validator({**schema, "components": DOCUMENT["components"]}).validate(answer.json())


def test_the_document_is_valid_openapi():
    validate(DOCUMENT)


def test_the_orchestrator_serves_the_document(cluster):
    answer = requests.get(cluster.url + "/openapi.json", timeout=10)
    assert answer.status_code == 200 and answer.json() == json.loads(json.dumps(DOCUMENT))
    conforms(answer, "/openapi.json")


def test_answers_without_containers_conform(cluster):
    answer = cluster.new_request({"text": "nobody is here"})
    assert answer.status_code == 503
    conforms(answer, "/new_request", "post")


@pytest.mark.parametrize("body", [{"text": "a short sentence"}, {"texts": ["one", "two words"]},
                                  {"payload": {"anything": [1, 2]}}, {}])
def test_served_answers_conform(cluster, tiny_model, body):
    if not cluster.workers:
        cluster.start_workers(["w1"], model=tiny_model)
        cluster.register()
    answer = cluster.new_request(body)
    assert answer.status_code == 200, answer.text
    conforms(answer, "/new_request", "post")


@pytest.mark.parametrize("raw, status", [(b"not json", 400), (b'{"text": ""}', 400), (b'{"other": 1}', 400),
                                         (b'{"text": "a", "texts": ["b"]}', 400)])
def test_refusals_conform(cluster, raw, status):
    answer = requests.post(cluster.url + "/new_request", data=raw, timeout=10)
    assert answer.status_code == status
    conforms(answer, "/new_request", "post")


@pytest.mark.parametrize("path", ["/status", "/workers_info", "/health_check", "/metrics"])
def test_read_only_routes_conform(cluster, path):
    conforms(requests.get(cluster.url + path, timeout=10), path)
    wrong = requests.put(cluster.url + path, timeout=10)
    assert wrong.status_code == 405
    conforms(wrong, path, "get")


def test_an_unknown_path_is_a_json_404(cluster):
    answer = requests.get(cluster.url + "/nowhere", timeout=10)
    assert answer.status_code == 404
    jsonschema.validate(answer.json(), DOCUMENT["components"]["schemas"]["Error"])
