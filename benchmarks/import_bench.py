"""How does a large import behave next to a training worker? Generates a run database of
RUNS completed runs (depth 8, 50 epochs: 510 rows each), imports it into a fresh SQLite file
and prints rows/s, the peak RSS of the importing process and the longest write transaction
(the longest time the import held SQLite's write lock).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/import_bench.py [--runs 2500]

2,500 runs = 1,275,000 rows (about 485 MB: each layer_stats row carries a 232-byte histogram),
close to the documented 512 MiB limit; --runs 1000 (194 MB) makes it quicker.
Targets (issue 14): the longest lock hold a few seconds at most (SQLite's busy timeout is 30 s),
peak RSS under ~300 MB whatever the file. The import runs in a child process so its peak RSS
is its own, not the generator's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CHILD = """
import json, resource, sys, time
from gradscope.db.engine import make_engine
from gradscope.db.share.importing import import_file
engine = make_engine(sys.argv[2])
started = time.monotonic()
report = import_file(engine, sys.argv[1], max_bytes=2**40)
print(json.dumps({"seconds": time.monotonic() - started, "added": len(report.added),
                  "longest_write_s": report.longest_write_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2500)
    args = parser.parse_args()
    from share_helpers import make_big_export

    with tempfile.TemporaryDirectory(prefix="gradscope-import-bench-") as tmp:
        source = Path(tmp) / "big.db"
        started = time.monotonic()
        rows = make_big_export(str(source), runs=args.runs)
        size_mb = source.stat().st_size / 2**20
        print(
            f"generated {args.runs:,} runs, {rows:,} rows, {size_mb:,.0f} MB "
            f"in {time.monotonic() - started:.0f} s"
        )
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), str(Path(tmp) / "target.db")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"imported {result['added']:,} runs in {result['seconds']:.1f} s: "
        f"{rows / result['seconds']:,.0f} rows/s"
    )
    print(f"peak RSS of the importing process: {result['peak_rss_mb']:.0f} MB")
    print(
        f"longest write transaction (SQLite write lock held): {result['longest_write_s']:.2f} s "
        f"(busy timeout 30 s: ratio {result['longest_write_s'] / 30:.3f})"
    )


if __name__ == "__main__":
    main()
