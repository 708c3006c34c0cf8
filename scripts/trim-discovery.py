#!/usr/bin/env python3
"""Trims the Compute v1 discovery document to the request schemas gce-sim checks.

gce-sim validates the bodies pm sends (instances.insert, instances.bulkInsert,
instances.setLabels) against the schemas of Google's discovery document. The full
document is 5 MB; this keeps the three request schemas and every schema they reference,
and of each property only what validation reads (type, format, $ref, items,
additionalProperties, enum) plus `readOnly`, set where the document marks the field
readOnly or its description says "[Output Only]".

Usage:
  scripts/trim-discovery.py [FULL_DOCUMENT] > gce-sim/discovery/compute-v1-requests.json

FULL_DOCUMENT defaults to the copy google-api-python-client ships in .venv.
"""

import glob
import json
import sys

ROOTS = ["Instance", "BulkInsertInstanceResource", "InstancesSetLabelsRequest"]
KEPT = ["type", "format", "$ref", "items", "additionalProperties", "enum"]


def default_document():
    found = glob.glob(
        ".venv/lib/python3*/site-packages/googleapiclient/discovery_cache/documents/compute.v1.json"
    )
    if not found:
        sys.exit("no compute.v1.json under .venv; pass the document's path")
    return found[0]


def package_version():
    try:
        from importlib.metadata import version

        return "google-api-python-client " + version("google-api-python-client")
    except Exception:  # the version is only a note; the document is what matters
        return "google-api-python-client (version unknown)"


def trim_property(prop):
    out = {key: prop[key] for key in KEPT if key in prop}
    if "items" in out:
        out["items"] = trim_property(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = trim_property(out["additionalProperties"])
    if prop.get("readOnly") or "[output only]" in prop.get("description", "").lower():
        out["readOnly"] = True
    return out


def refs(prop):
    if "$ref" in prop:
        yield prop["$ref"]
    for key in ("items", "additionalProperties"):
        if isinstance(prop.get(key), dict):
            yield from refs(prop[key])
    for sub in prop.get("properties", {}).values():
        yield from refs(sub)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else default_document()
    with open(path) as f:
        document = json.load(f)
    schemas = document["schemas"]
    kept = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        schema = schemas[name]
        kept[name] = {
            "id": name,
            "type": schema.get("type", "object"),
            "properties": {k: trim_property(v) for k, v in schema.get("properties", {}).items()},
        }
        todo.extend(refs(schema))
    out = {
        "source": f"compute.v1.json from {package_version()}, trimmed by scripts/trim-discovery.py",
        "id": document["id"],
        "revision": document["revision"],
        "schemas": kept,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
