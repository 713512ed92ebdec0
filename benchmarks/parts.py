"""Loading benchmark parts (JSONs of separate device calls) for merge_bwd.py and merge_fwd.py."""
from __future__ import annotations

import json
from pathlib import Path


def load_parts(paths, same, order, row_extra=lambda meta: {}):
    """(parts, rows): parts as (file name, JSON) pairs; their rows in `order` (names not in it last), each row tagged
    with its part's file name and row_extra(part meta). Refuses parts whose meta differ from the first's in a key of
    `same`, and a row name that two parts hold."""
    parts = [(Path(p).name, json.load(open(p))) for p in paths]
    first = parts[0][1]["meta"]
    rows = {}
    for name, d in parts:
        for key in same:
            if d["meta"].get(key) != first.get(key):
                raise SystemExit(f"{name}: {key} {d['meta'].get(key)!r} differs from {first.get(key)!r}")
        for r in d["rows"]:
            if r["name"] in rows:
                raise SystemExit(f"{name}: row {r['name']} already in another part")
            rows[r["name"]] = dict(r, part=name, **row_extra(d["meta"]))
    return parts, [rows[n] for n in order if n in rows] + [r for n, r in rows.items() if n not in order]
