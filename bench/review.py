"""The quality loop's benchmark: the review queue's round trip, and online A/B experiments of stack versions.

Usage: ``python bench/review.py [--only review|ab] [--requests N] [--repeats R] [--share S] [--callers C]
[--out FILE]``. Prints one JSON object. The review part is described in :mod:`bench._review` (keys
``reviewed_items``, ``testset_items_from_review``, ``pairs_from_review``). The A/B part in :mod:`bench._ab`: a
deliberately worse challenger (top-k 1) must be found within ``--requests`` requests (``ab_detected_worse_arm``),
``--repeats`` experiments with identical arms must raise at most one difference (``ab_false_alarm``), and no caller
may see two arms (``ab_sticky_violations``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._ab import AbParams, measure_ab  # noqa: E402
from bench._common import run_measured  # noqa: E402
from bench._review import review_round_trip  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    defaults = AbParams()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="Requests per experiment.")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="Experiments with identical arms.")
    parser.add_argument("--share", type=float, default=defaults.share, help="The challenger's share of callers.")
    parser.add_argument("--callers", type=int, default=defaults.callers, help="Simulated callers (reader keys).")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the simulated users.")
    parser.add_argument("--only", choices=("review", "ab"), default=None, help="Run one half only.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    params = AbParams(
        requests=args.requests, repeats=args.repeats, share=args.share, callers=args.callers, seed=args.seed
    )

    def measure(temp: Path) -> dict[str, object]:
        out: dict[str, object] = {}
        if args.only in (None, "review"):
            out.update(review_round_trip(temp / "review" / "home", REPO))
        if args.only in (None, "ab"):
            out.update(measure_ab(params, home=temp / "ab" / "home", repo=REPO))
        return out

    return run_measured("ragops-bench-review-", measure, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
