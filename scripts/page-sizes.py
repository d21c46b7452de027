#!/usr/bin/env python3
"""How large a page of a Twilio list can be, from the OpenAPI specs in vendor/twilio-oai.

The paging rewrite buffers a list page to point its `meta` links back at the sidecar, so its
size cap (MAX_REWRITE_BODY in src/proxy/paging.rs) should hold a full page — Twilio's page
size is at most 1,000 records — of every list whose links it rewrites (the product hosts;
the 2010 API's pages carry relative links and stream untouched). This builds one record per
list from the spec's own `example` values (a typed stand-in where a property has none),
serialises it as Twilio does, and reports what 1,000 of them weigh.

    python3 scripts/page-sizes.py [--top N]
"""
import argparse
import glob
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGE = 1000


def resolve(spec, schema):
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def example(spec, schema, depth=0):
    schema = resolve(spec, schema)
    if not isinstance(schema, dict):
        return None
    if "example" in schema:
        return schema["example"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 3:
            return {}
        return {k: example(spec, v, depth + 1) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return []
    if kind == "integer":
        return 12345
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    fmt = schema.get("format", "")
    pattern = schema.get("pattern", "")
    if pattern.startswith("^") and "{32}" in pattern:
        return pattern[1:3] + "0" * 32
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "uri":
        return "https://example.twilio.com/v1/Services/IS00000000000000000000000000000000/Items"
    if "enum" in schema:
        return max(schema["enum"], key=lambda e: len(str(e)))
    return "x" * 16


def pages():
    for path in sorted(glob.glob(os.path.join(ROOT, "vendor/twilio-oai/spec/json/*.json"))):
        name = os.path.basename(path)
        if name == "twilio_api_v2010.json":
            continue
        spec = json.load(open(path))
        for route, ops in spec["paths"].items():
            get = ops.get("get")
            if not get:
                continue
            content = get.get("responses", {}).get("200", {}).get("content", {})
            schema = resolve(spec, content.get("application/json", {}).get("schema", {}))
            props = schema.get("properties", {}) if isinstance(schema, dict) else {}
            if "meta" not in props:
                continue
            for key, prop in props.items():
                prop = resolve(spec, prop)
                if key != "meta" and prop.get("type") == "array":
                    record = json.dumps(example(spec, prop.get("items", {})))
                    meta = json.dumps(example(spec, props["meta"]))
                    size = len(record) * PAGE + 2 * (PAGE - 1) + len(meta) + len(key) + 20
                    yield size, len(record), name[len("twilio_"):-len(".json")], route


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    found = sorted(pages(), reverse=True)
    sizes = [s for s, *_ in found]
    print(f"{len(found)} lists whose pages carry meta links")
    for q in (50, 90, 99, 100):
        i = min(len(sizes) - 1, len(sizes) * (100 - q) // 100)
        print(f"  p{q:<3} page of {PAGE}: {sizes[i] / 1024 / 1024:6.2f} MiB")
    print(f"largest {args.top}:")
    for size, record, spec, route in found[: args.top]:
        print(f"  {size / 1024 / 1024:6.2f} MiB  ({record:5} B/record)  {spec}  {route}")


if __name__ == "__main__":
    main()
