"""Regenerate the synthetic datasets that the example specs in specs/ point at.

The examples must validate and plan in this repository, so their data is real (synthetic,
deterministic, small) and committed under data/examples/. A real GitOps repo keeps its data
in DVC (`ftops data version`); these files are small enough for git.
Usage: python scripts/make_example_data.py
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.tiny.task import generate_examples  # noqa: E402

OUT = ROOT / "data" / "examples"

PARTIES = ("the Supplier", "the Customer", "the Licensee", "the Licensor", "the Contractor", "the Tenant", "the Landlord")
OBLIGATIONS = ("deliver the goods", "pay the invoice", "return all confidential material", "notify the other party",
               "remedy the breach", "provide written notice", "renew the insurance", "submit the audit report")


def legal_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        party, obligation, days = rng.choice(PARTIES), rng.choice(OBLIGATIONS), rng.choice((5, 10, 14, 30, 45, 60, 90))
        clause = f"{party} shall {obligation} no later than {days} days after {rng.choice(('the Effective Date', 'receipt of notice', 'termination', 'delivery'))}."
        clause = clause[0].upper() + clause[1:]
        answer = {"party": party.removeprefix("the "), "obligation": obligation, "deadlineDays": days}
        out.append({"messages": [
            {"role": "system", "content": "Extract the obligation from the clause as JSON with party, obligation and deadlineDays."},
            {"role": "user", "content": clause},
            {"role": "assistant", "content": json.dumps(answer, sort_keys=True)},
        ]})
    return out


def report_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        region = rng.choice(("North", "South", "East", "West", "Central"))
        revenue, growth, churn = rng.randint(100, 999), rng.randint(-20, 40), rng.randint(1, 15)
        trend = "up" if growth > 0 else "down" if growth < 0 else "flat"
        report = (f"## {region} region\n\n- Revenue: ${revenue}k ({trend} {abs(growth)}% year on year)\n"
                  f"- Churn: {churn}%\n- Risk: {'high' if churn > 10 else 'moderate' if churn > 5 else 'low'}")
        out.append({"messages": [
            {"role": "system", "content": "Write the quarterly region report in the house format."},
            {"role": "user", "content": f"region={region} revenue_k={revenue} growth_pct={growth} churn_pct={churn}"},
            {"role": "assistant", "content": report},
        ]})
    return out


def write(name: str, examples: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name}.jsonl", "w") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write("support-tickets", generate_examples(600, seed=1))
    write("legal-clauses", legal_examples(600, seed=2))
    write("region-reports", report_examples(600, seed=3))
    print(f"wrote {OUT}")
