"""Guardrails benchmark: per-check and input-chain latency p50 on the built chain, injection grouped CV, PII
recall/precision per type on a Faker set (several locales and formats, embedded in sentences), false refusals on
demo_qa's answerable items. Prints one JSON object.

The baseline for latency is the seed article's budget of 50 ms per check (ratio = budget / measured). Latency is
measured in-process on the built chain with the question already embedded (the service's one forward pass is not
charged to the guard; ``embed_p50_ms`` reports it separately).

Usage: python bench/guardrails.py [--injections ../shared/datasets/prompt_injections/train.jsonl] [--pii N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import cpu_flags, cpu_model  # noqa: E402
from flows.settings import Settings  # noqa: E402
from pipelines.embed import Embedder  # noqa: E402
from pipelines.settings import EmbedderSettings  # noqa: E402
from rag.guardrails.chain import CorpusProfile, InputGuard  # noqa: E402
from rag.guardrails.classifier import Example, load_examples  # noqa: E402
from rag.guardrails.config import GuardrailsConfig  # noqa: E402
from rag.guardrails.pii import PiiDetector  # noqa: E402
from rag.guardrails.training import evaluate, fit  # noqa: E402

ARTICLE_BUDGET_MS = 50.0
TEMPLATES = (
    "Please contact me at {v} about my order.",
    "Meine Nummer ist {v}, bitte zurückrufen.",
    "Voici mes coordonnées: {v}. Merci!",
    "The value {v} was entered in the form yesterday.",
    "{v}",
)


def _grouped(value: str) -> str:
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def pii_set(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(sentence, type, value) with Faker values of several locales and formats."""
    from faker import Faker

    fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR"])
    Faker.seed(seed)
    rng = random.Random(seed)
    makers = {
        "EMAIL_ADDRESS": lambda: fake.email(),
        "CREDIT_CARD": lambda: rng.choice([fake.credit_card_number(), _grouped(fake.credit_card_number("visa16"))]),
        "IBAN_CODE": lambda: rng.choice([fake.iban(), _grouped(fake.iban())]),
        "US_SSN": lambda: Faker("en_US").ssn(),
        "IP_ADDRESS": lambda: rng.choice([fake.ipv4(), fake.ipv6()]),
        "PHONE_NUMBER": lambda: rng.choice([Faker("en_US").phone_number(), Faker("de_DE").phone_number(),
                                            Faker("en_GB").phone_number(), Faker("fr_FR").phone_number()]),
    }  # fmt: skip
    out = []
    for kind, make in makers.items():
        for _ in range(n):
            value = make()
            out.append((rng.choice(TEMPLATES).format(v=value), kind, value))
    return out


def pii_scores(detector: PiiDetector, items: list[tuple[str, str, str]]) -> dict[str, dict[str, float]]:
    """Per type: recall (value's span found with its type) and precision (spans of that type that are a value)."""
    found: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    predicted: dict[str, int] = defaultdict(int)
    correct: dict[str, int] = defaultdict(int)
    for sentence, kind, value in items:
        start = sentence.index(value)
        span = (start, start + len(value))
        total[kind] += 1
        hits = detector.detect(sentence)
        if any(h.type == kind and h.start <= span[0] + 1 and h.end >= span[1] - 1 for h in hits):
            found[kind] += 1
        for h in hits:
            predicted[h.type] += 1
            if h.type == kind and h.start < span[1] and h.end > span[0]:
                correct[h.type] += 1
    return {
        kind: {
            "recall": round(found[kind] / total[kind], 4),
            "precision": round(correct[kind] / predicted[kind], 4) if predicted[kind] else 1.0,
            "n": total[kind],
        }
        for kind in total
    }


def classifier_latency(examples: list[Example], embedder: Embedder, questions: list[str]) -> float:
    """p50 of the injection check with the trained classifier (materialised in a scratch home, as from MLflow)."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        fit(examples, embedder).save(settings.models_dir / "injection-classifier" / "1")
        config = GuardrailsConfig.model_validate({"injection": {"model_uri": "models:/injection-classifier/1"}})
        guard = InputGuard.build(config, settings=settings, embedder=embedder, corpus=None)
        times = []
        for question in questions * 3:
            prepared = guard.prepare(question)
            result = guard.check(prepared, embedder.encode([prepared.text])[0])
            times.extend(v.ms for v in result.verdicts if v.name == "injection")
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--injections", type=Path, default=ROOT.parent / "shared/datasets/prompt_injections/train.jsonl"
    )
    parser.add_argument("--pii", type=int, default=200, help="Faker values per PII type.")
    args = parser.parse_args()
    settings = Settings()
    embedder = Embedder(EmbedderSettings(), cache_dir=settings.cache_dir)
    embedder.warm_up()
    corpus = ROOT / "pipelines" / "demo_corpus"
    texts = []
    for path in sorted(corpus.rglob("*")):
        if path.suffix in {".md", ".txt", ".html"}:
            body = path.read_text(encoding="utf-8", errors="ignore")
            texts.extend(body[i : i + 800] for i in range(0, len(body), 800))
    profile = CorpusProfile.from_vectors(embedder.encode(texts))
    guard = InputGuard.build(GuardrailsConfig(), settings=settings, embedder=embedder, corpus=profile)
    rows = [json.loads(x) for x in (ROOT / "evaluation/testsets/demo_qa.jsonl").read_text().splitlines() if x.strip()]
    questions = [r["question"] for r in rows]
    per_check: dict[str, list[float]] = defaultdict(list)
    chain_ms: list[float] = []
    embed_ms: list[float] = []
    for _ in range(3):
        for question in questions:
            t0 = time.perf_counter()
            prepared = guard.prepare(question)
            t1 = time.perf_counter()
            vector = embedder.encode([prepared.text])[0]
            t2 = time.perf_counter()
            result = guard.check(prepared, vector)
            t3 = time.perf_counter()
            chain_ms.append((t1 - t0 + t3 - t2) * 1000)
            embed_ms.append((t2 - t1) * 1000)
            for verdict in result.verdicts:
                per_check[verdict.name].append(verdict.ms)
    answerable = [r for r in rows if not {"adversarial", "unanswerable"} & set(r.get("tags", []))]
    refused = sum(guard.check(r["question"], None).blocked for r in answerable)
    attacks = [r for r in rows if "adversarial" in r.get("tags", [])]
    triggered = sum(guard.check(r["question"], None).blocked for r in attacks)
    detector = PiiDetector(
        phone_regions=GuardrailsConfig().pii.phone_regions, min_score=GuardrailsConfig().pii.min_score
    )
    pii = pii_scores(detector, pii_set(args.pii))
    check_p50 = {name: round(statistics.median(values), 4) for name, values in per_check.items()}
    chain_p50 = statistics.median(chain_ms)
    out: dict[str, object] = {
        "cpu": {"model": cpu_model(), **cpu_flags()},
        "check_p50_ms": check_p50,
        "input_chain_p50_ms": round(chain_p50, 4),
        "embed_p50_ms": round(statistics.median(embed_ms), 3),
        "ratio_article_budget_to_worst_check": round(ARTICLE_BUDGET_MS / max(check_p50.values()), 1),
        "pii_recall": {k: v["recall"] for k, v in pii.items()},
        "pii_precision": {k: v["precision"] for k, v in pii.items()},
        "pii_n_per_type": args.pii,
        "false_refusal_rate": round(refused / len(answerable), 4),
        "answerable_items": len(answerable),
        "adversarial_refused": f"{triggered}/{len(attacks)} (the rest are false-premise questions, answered safely)",
    }
    if args.injections.is_file():
        examples = load_examples(args.injections)
        out["injection_with_classifier_p50_ms"] = round(classifier_latency(examples, embedder, questions), 4)
        report = evaluate(examples, embedder)
        out["injection_recall"] = round(report.recall, 4)
        out["injection_fpr"] = round(report.fpr, 4)
        out["injection_auc"] = round(report.auc, 4)
        out["injection_cv"] = report.to_json()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
