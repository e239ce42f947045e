"""Two or more commits of frameiod side by side, in alternating runs: how docs/performance.md
says what a change saved.

    python bench/ab.py HEAD~1 HEAD --ingest frameiod-redis --rounds 3
    python bench/ab.py HEAD~1 HEAD --e2e full --rounds 3

Each revision is exported (``git archive``) to a scratch folder and run from there, with
this checkout's bench and interpreter; every round measures the baseline once, then each
revision in turn, so a noisy machine shifts all of them alike. The order turns by one each
round (A B, then B A), since the load that runs second is not like the first: on this
machine it ran about a tenth slower end to end, the first load's spool likely still being
written back. Run an even number of rounds. Prints each load and the medians, as ratios
to the baseline's median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import run

REPOSITORY = run.BENCH.parent


def export(revision: str, folder: Path) -> Path:
    """``revision``'s files in a folder of their own."""
    target = folder / revision.replace("/", "_").replace("~", "-")
    target.mkdir()
    archive = subprocess.run(  # noqa: S603 - git, on this repository
        ["git", "-C", str(REPOSITORY), "archive", revision],  # noqa: S607
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(  # noqa: S603 - tar, on git's own archive
        ["tar", "-x", "-C", str(target)],  # noqa: S607
        input=archive,
        check=True,
    )
    return target


def running_order(revisions: list[str], number: int) -> list[str]:
    """The revisions in the order round ``number`` (from 0) runs them: turned by one each
    round, so that each runs in each place equally often."""
    shift = number % len(revisions)
    return revisions[shift:] + revisions[:shift]


def main() -> int:
    """Alternate the revisions' loads; print every figure and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ingest", choices=[t for t in run.TARGETS if t.startswith("frameiod")])
    what.add_argument("--e2e", choices=["full", "normal", "redis"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="frameiod-ab-") as scratch:
        folder = Path(scratch)
        checkouts = {revision: export(revision, folder) for revision in args.revisions}
        original = run.start_frameiod
        figures: dict[str, list[float]] = {revision: [] for revision in args.revisions}
        baseline: list[float] = []
        for number in range(args.rounds):
            # Signed afresh each round: a round must stay within the source's tolerance.
            script = run.write_script(folder / "requests.lua", count=2 * 100_000 + 20_000)
            base, _ = run._load(
                "baseline", folder, script, connections=64, seconds=args.seconds, warm_up_at=200_000
            )
            baseline.append(base["rps"])
            print(f"round {number + 1} baseline {base['rps']:.0f} req/s", flush=True)
            for revision in running_order(args.revisions, number):
                checkout = checkouts[revision]

                # `python -m frameiod` imports from its working directory first.
                def start(*a: Any, checkout: Path = checkout, **kw: Any) -> Any:
                    return original(*a, cwd=checkout, **kw)

                run.start_frameiod = start
                try:
                    value = _measure(args, folder, script)
                finally:
                    run.start_frameiod = original
                figures[revision].append(value)
                unit = "req/s" if args.ingest else "calls/s end to end"
                print(f"round {number + 1} {revision} {value:.0f} {unit}", flush=True)
        base = statistics.median(baseline)
        print(f"baseline median {base:.0f} req/s")
        for revision, values in figures.items():
            value = statistics.median(values)
            print(f"{revision}: median {value:.0f}, {value / base:.3f} x the baseline")
    return 0


def _measure(args: argparse.Namespace, folder: Path, script: Path) -> float:
    if args.ingest:
        figures, _ = run._load(
            args.ingest, folder, script, connections=64, seconds=args.seconds, warm_up_at=200_000
        )
        return figures["rps"]
    end = run.measure_e2e(
        "NORMAL" if args.e2e == "normal" else "FULL",
        folder,
        script,
        script,
        seconds=2 * args.seconds,
        region=100_000,
        redis=args.e2e == "redis",
    )
    if end.errors or end.unhandled or end.wrapped:
        raise RuntimeError(f"invalid end-to-end load: {end}")
    return end.calls_per_s


if __name__ == "__main__":
    sys.exit(main())
