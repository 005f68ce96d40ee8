#!/usr/bin/env python3
"""Counts the public API of a crate from its rustdoc HTML.

Usage: scripts/api_count.py CRATE [CHECKOUT]

Builds `cargo doc -p CRATE --no-deps` in CHECKOUT (default: this repository; the docs land in
$CARGO_TARGET_DIR if set) and prints, as
JSON, the items listed on the crate's all-items page (structs, enums, traits, functions,
constants, type aliases) and, on their pages, the inherent and trait-required methods, the
public fields and the enum variants. Trait implementations (Debug, Clone, From, ...) are not
counted. Items re-exported from another crate are listed by rustdoc, and counted, as the
crate's own.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    crate = sys.argv[1]
    root = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parents[1])
    subprocess.run(
        ["cargo", "doc", "-p", crate, "--no-deps", "--quiet"], cwd=root, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")
    doc = target / "doc" / crate.replace("-", "_")
    all_items = (doc / "all.html").read_text()
    links = re.findall(
        r'<a href="((?:[\w/]+/)?(?:struct|enum|trait|fn|constant|type|static|macro|union)\.\w+\.html)">',
        all_items,
    )
    kinds: dict[str, int] = {}
    members = {"methods": 0, "fields": 0, "variants": 0}
    for link in sorted(set(links)):
        kind = Path(link).name.split(".")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        page = (doc / link).read_text()
        # Only the inherent part of a type's page: trait impls follow "trait-implementations".
        inherent = page.split('id="trait-implementations"')[0]
        inherent = inherent.split('id="synthetic-implementations"')[0]
        members["methods"] += len(re.findall(r'<section id="(?:method|tymethod)\.', inherent))
        members["fields"] += len(re.findall(r'<span id="structfield\.', inherent))
        members["variants"] += len(re.findall(r'<section id="variant\.', inherent))
    top = sum(kinds.values())
    print(
        json.dumps(
            {
                "crate": crate,
                "items": top,
                "by_kind": kinds,
                **members,
                "total": top + sum(members.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
