"""MkDocs hooks (mkdocs.yml `hooks:`): pages generated from the code when the site is built, never by hand.

- docs/cli.md: `<!-- cli-reference -->` becomes the reference of the Typer app, as typer's own
  `typer mlcluster.cli utils docs` writes it (every command, argument and option).
- docs/api.md: `<!-- openapi -->` becomes the orchestrator's OpenAPI document rendered as Markdown: each
  route with its answers, then each schema as JSON (mlcluster_orchestrator.openapi.DOCUMENT).
"""
from __future__ import annotations

import json


def cli_reference() -> str:
    import typer
    from typer.cli import get_docs_for_click

    from mlcluster.cli import app
    command = typer.main.get_command(app)
    return get_docs_for_click(obj=command, ctx=typer.Context(command), name="mlcluster", indent=1).strip()


def _schema_name(schema: dict) -> str:
    ref = schema.get("$ref", "")
    if ref:
        name = ref.rsplit("/", 1)[1]
        return f"[{name}](#schema-{name.lower()})"
    return f"`{json.dumps(schema)}`" if len(json.dumps(schema)) < 60 else "object"


def api_reference() -> str:
    from mlcluster_orchestrator.openapi import DOCUMENT
    lines = [DOCUMENT["info"]["description"], ""]
    for path, methods in DOCUMENT["paths"].items():
        for method, op in methods.items():
            lines += [f"## {method.upper()} `{path}`", "", op["summary"], ""]
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                lines += [f"Body (JSON, optional): {_schema_name(schema)}", ""]
            lines += ["| status | meaning | body |", "|---|---|---|"]
            for status, answer in op["responses"].items():
                content = answer.get("content", {})
                media = next(iter(content), "")
                shown = _schema_name(content[media]["schema"]) if media == "application/json" else media
                headers = ", ".join(f"`{h}`" for h in answer.get("headers", {}))
                meaning = answer["description"] + (f" Headers: {headers}." if headers else "")
                lines.append(f"| {status} | {meaning} | {shown} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in DOCUMENT["components"]["schemas"].items():
        lines += [f"### {name} {{#schema-{name.lower()}}}", "", schema.get("description", ""), "",
                  "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- openapi -->" in markdown:
        markdown = markdown.replace("<!-- openapi -->", api_reference())
    return markdown
