"""Task metrics for `macft eval`, the family chosen from the references.

- tool calls: references are JSON objects {"name": ..., "arguments": {...}} (or a list of them)
- JSON: references are JSON objects; per-field scores over top-level keys
- classification: references come from a small set of short labels
- free text: ROUGE-L F1 over words
A prediction that is empty or not valid JSON counts as predicting no field and no call.
"""

from __future__ import annotations

import json
from collections import Counter

from macft.dataprep.stats import label_counts


def parse_json(text: str):
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, TypeError, ValueError):
        return None


def _is_call(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and \
        isinstance(value.get("arguments", {}), dict)


def _calls(value) -> list[dict] | None:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    if items and all(_is_call(c) for c in items):
        return items
    return None


def family(references: list[str]) -> str:
    parsed = [parse_json(r) for r in references]
    if parsed and all(_calls(p) is not None for p in parsed):
        return "tool_calls"
    if parsed and all(isinstance(p, dict) for p in parsed):
        return "json"
    if label_counts(references):
        return "classification"
    return "text"


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def json_metrics(predictions: list[str], references: list[str], schema: dict | None = None):
    n = len(references)
    preds = [parse_json(p) for p in predictions]
    refs = [parse_json(r) for r in references]
    out = {"family": "json", "examples": n,
           "valid": sum(p is not None for p in preds) / n,
           "exact": sum(p is not None and p == r for p, r in zip(preds, refs)) / n}
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
        out["schema_valid"] = sum(p is not None and validator.is_valid(p) for p in preds) / n
    counts: dict[str, Counter] = {}
    for p, r in zip(preds, refs):
        p = p if isinstance(p, dict) else {}
        for key in set(p) | set(r):
            c = counts.setdefault(key, Counter())
            hit = key in p and key in r and p[key] == r[key]
            c["tp"] += hit
            c["fp"] += key in p and not hit
            c["fn"] += key in r and not hit
            c["support"] += key in r
    fields = {}
    for key in sorted(counts):
        c = counts[key]
        fields[key] = {**prf(c["tp"], c["fp"], c["fn"]), "support": c["support"],
                       "accuracy": c["tp"] / c["support"] if c["support"] else 0.0}
    total = Counter()
    for c in counts.values():
        total.update(c)
    out["micro"] = prf(total["tp"], total["fp"], total["fn"])
    out["fields"] = fields
    return out


def classification_metrics(predictions: list[str], references: list[str]):
    labels = sorted(set(r.strip() for r in references))
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    columns = labels + (["<other>"] if any(p not in labels for p in preds) else [])
    matrix = {r: {c: 0 for c in columns} for r in labels}
    for p, r in zip(preds, refs):
        matrix[r][p if p in labels else "<other>"] += 1
    per = {}
    for label in labels:
        tp = matrix[label][label]
        fp = sum(matrix[r][label] for r in labels if r != label)
        fn = sum(v for c, v in matrix[label].items() if c != label)
        per[label] = {**prf(tp, fp, fn), "support": tp + fn}
    return {"family": "classification", "examples": len(refs),
            "accuracy": sum(p == r for p, r in zip(preds, refs)) / len(refs),
            "macro_f1": sum(v["f1"] for v in per.values()) / len(per),
            "labels": per, "confusion": matrix}


def tool_call_metrics(predictions: list[str], references: list[str]):
    """Calls are compared in order; arguments partial match is the share of reference
    arguments whose value the prediction got right (0 for a call with the wrong name)."""
    name = exact = 0
    partial = 0.0
    total = 0
    for pred, ref in zip(predictions, references):
        p = _calls(parse_json(pred)) or []
        for i, rc in enumerate(_calls(parse_json(ref))):
            total += 1
            pc = p[i] if i < len(p) else None
            if pc is None or pc["name"] != rc["name"]:
                continue
            name += 1
            ra, pa = rc.get("arguments", {}), pc.get("arguments", {})
            exact += pa == ra
            partial += (sum(k in pa and pa[k] == v for k, v in ra.items()) / len(ra)
                        if ra else float(not pa))
    return {"family": "tool_calls", "examples": len(references), "calls": total,
            "name_accuracy": name / total, "arguments_exact": exact / total,
            "arguments_partial": partial / total}


def lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = prediction.lower().split(), reference.lower().split()
    if not p or not r:
        return float(p == r)
    n = lcs(p, r)
    if not n:
        return 0.0
    precision, recall = n / len(p), n / len(r)
    return 2 * precision * recall / (precision + recall)


def text_metrics(predictions: list[str], references: list[str]):
    scores = [rouge_l(p, r) for p, r in zip(predictions, references)]
    return {"family": "text", "examples": len(references), "rouge_l": sum(scores) / len(scores)}


def task_metrics(predictions: list[str], references: list[str], schema: dict | None = None):
    if not references:
        return None
    kind = family(references)
    if kind == "tool_calls":
        return tool_call_metrics(predictions, references)
    if kind == "json":
        return json_metrics(predictions, references, schema)
    if kind == "classification":
        return classification_metrics(predictions, references)
    return text_metrics(predictions, references)


def lines(m: dict | None) -> list[str]:
    """The metrics as the lines `macft eval` prints."""
    if not m:
        return []
    kind = m["family"]
    if kind == "json":
        out = [f"task          JSON ({m['examples']} examples)",
               f"  valid {m['valid']:.1%} · exact {m['exact']:.1%}" +
               (f" · schema-valid {m['schema_valid']:.1%}" if "schema_valid" in m else ""),
               f"  fields micro P {m['micro']['precision']:.3f} R {m['micro']['recall']:.3f} "
               f"F1 {m['micro']['f1']:.3f}"]
        out += [f"  {k:<14} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f} "
                f"acc {v['accuracy']:.1%} (n={v['support']})" for k, v in m["fields"].items()]
        return out
    if kind == "classification":
        out = [f"task          classification ({len(m['labels'])} labels)",
               f"  accuracy {m['accuracy']:.1%} · macro-F1 {m['macro_f1']:.3f}"]
        out += [f"  {k:<14} P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f} "
                f"(n={v['support']})" for k, v in m["labels"].items()]
        cols = list(next(iter(m["confusion"].values())))
        out.append("  confusion (rows: reference; columns: prediction " + ", ".join(cols) + ")")
        out += [f"  {r:<14} " + " ".join(f"{v:>4}" for v in row.values())
                for r, row in m["confusion"].items()]
        return out
    if kind == "tool_calls":
        return [f"task          tool calls ({m['calls']} calls)",
                f"  function name {m['name_accuracy']:.1%} · arguments exact "
                f"{m['arguments_exact']:.1%} · partial {m['arguments_partial']:.1%}"]
    return [f"task          free text · ROUGE-L F1 {m['rouge_l']:.3f}"]


def read_schema(path: str | None) -> dict | None:
    """A JSON Schema file, checked; errors name the file (and line for bad JSON)."""
    if not path:
        return None
    from pathlib import Path

    from macft.errors import MacftError

    p = Path(path)
    if not p.exists():
        raise MacftError(f"{path}: file not found")
    try:
        schema = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise MacftError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise MacftError(f"{path}: not a valid JSON Schema ({exc.message})") from None
    return schema
