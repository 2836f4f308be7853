"""The quality loop's benchmark: online A/B experiments of stack versions (and the review round trip).

Usage: ``python bench/review.py [--requests N] [--repeats R] [--share S] [--callers C] [--out FILE]``. Prints one
JSON object. The A/B part is described in :mod:`bench._ab`: a deliberately worse challenger (top-k 1) must be found
within ``--requests`` requests (``ab_detected_worse_arm``), ``--repeats`` experiments with identical arms must raise
at most one difference (``ab_false_alarm``), and no caller may see two arms (``ab_sticky_violations``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._ab import AbParams, measure_ab  # noqa: E402
from bench._common import cpu_flags, cpu_model, load_average  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    defaults = AbParams()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="Requests per experiment.")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="Experiments with identical arms.")
    parser.add_argument("--share", type=float, default=defaults.share, help="The challenger's share of callers.")
    parser.add_argument("--callers", type=int, default=defaults.callers, help="Simulated callers (reader keys).")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the simulated users.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    params = AbParams(
        requests=args.requests, repeats=args.repeats, share=args.share, callers=args.callers, seed=args.seed
    )
    temp = Path(tempfile.mkdtemp(prefix="ragops-bench-review-"))
    try:
        out: dict[str, object] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "load_before": load_average()}
        out.update(measure_ab(params, home=temp / "ab" / "home", repo=REPO))
        out["load_after"] = load_average()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
