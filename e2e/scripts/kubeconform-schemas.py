"""JSON schemas for kubeconform, made here from a kube-apiserver's OpenAPI v2 document (which
carries every built-in kind and every installed CRD, ours from crds/), because kubeconform's
usual schemas are downloaded from the internet.

usage: kubeconform-schemas.py OPENAPI_V2_JSON OUTDIR
Writes OUTDIR/_definitions.json (every definition, strict: objects refuse unknown fields unless
the API says they preserve them) and one OUTDIR/<kind>_<group>_<version>.json per kind, matched
by kubeconform's -schema-location 'OUTDIR/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json'.
"""
import json
import os
import sys

source, out = sys.argv[1:3]
doc = json.load(open(source))
definitions = doc["definitions"]


def fix(schema):
    """A strict copy of one schema, walking only the places that hold schemas (a property may
    be named `$ref` or `properties`, as in the CRD schema's own type)."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = dict(schema)
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/definitions/", "_definitions.json#/definitions/")
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: fix(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = fix(out[key])
    for key in ("allOf", "oneOf", "anyOf"):
        if isinstance(out.get(key), list):
            out[key] = [fix(s) for s in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


os.makedirs(out, exist_ok=True)
fixed = {name: fix(schema) for name, schema in definitions.items()}
# Inside _definitions.json, references point at the same file.
text = json.dumps({"definitions": fixed}).replace('"_definitions.json#/definitions/', '"#/definitions/')
open(os.path.join(out, "_definitions.json"), "w").write(text)
count = 0
for name, schema in definitions.items():
    for gvk in schema.get("x-kubernetes-group-version-kind", []):
        kind = gvk["kind"].lower()
        # kubeconform's {{ .Group }} of a core apiVersion ("v1") is the version itself.
        group = gvk.get("group") or gvk["version"]
        path = os.path.join(out, "%s_%s_%s.json" % (kind, group, gvk["version"]))
        json.dump({"$ref": "_definitions.json#/definitions/%s" % name}, open(path, "w"))
        count += 1
print("%d kinds" % count)
