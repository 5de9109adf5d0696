"""Run pytest on parts of the test suite, each in its own process, a few at a time.

    python .ci/pytest_parts.py [--jobs N] PART [PART ...] [-- PYTEST_ARGS]

A PART is a space-separated list of test paths (quote it). Each part runs as one pytest
process (one process compiling every test's models crashed inside XLA, segfault, once the
suite grew); ``--jobs`` parts run at once, longest first as given. Each part's output is
printed when it ends, with its time; the exit status is the first failing part's, else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_part(part: str, pytest_args: list[str]) -> tuple[str, int, str, float]:
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, "-m", "pytest", "-q", *pytest_args, *part.split()]
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        log.seek(0)
        return part, code, log.read(), time.perf_counter() - start


def main() -> int:
    argv, pytest_args = sys.argv[1:], []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)
    missing = [p for part in args.parts for p in part.split() if not Path(p).exists()]
    if missing:
        print(f"pytest_parts: no such test path(s): {missing}", file=sys.stderr)
        return 4
    status = 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_part, part, pytest_args) for part in args.parts]
        for future in futures:
            part, code, output, seconds = future.result()
            print(f"===== {part} ({seconds:.0f} s, exit {code})", flush=True)
            print(output, flush=True)
            if code and not status:
                status = code
    return status


if __name__ == "__main__":
    sys.exit(main())
