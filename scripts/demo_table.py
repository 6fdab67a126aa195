"""Regenerate the README's demo table from the committed demo metrics (docs/demo/metrics-seed<N>.json).

Each file is the ``metrics.json`` a ``vaest demo OUT --seed N`` run writes (test and val CCC of every run, the
choices made on val, the time of each step). Copy a finished run's file in, then rewrite the README block:

    cp OUT/metrics.json docs/demo/metrics-seed0.json
    PYTHONPATH=src python scripts/demo_table.py            # rewrite README.md between the demo-table markers
    PYTHONPATH=src python scripts/demo_table.py --check    # exit 1 when README.md differs from the files

tests/test_readme_demo.py checks the README against the files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaest.io import atomic_write_text
from vaest.pipeline import README_BEGIN, README_END, demo_table, load_demo_metrics, readme_demo_block

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("demo_table")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--metrics", type=Path, default=ROOT / "docs" / "demo", help="folder of metrics-seed<N>.json")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is stale")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = demo_table(load_demo_metrics(a.metrics))
    text = a.readme.read_text(encoding="utf-8")
    if readme_demo_block(text) == table:
        log.info("%s: demo table up to date", a.readme)
        return 0
    if a.check:
        log.error("%s: demo table differs from %s (run scripts/demo_table.py)", a.readme, a.metrics)
        return 1
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    atomic_write_text(a.readme, f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")
    log.info("%s: demo table rewritten from %s", a.readme, a.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
