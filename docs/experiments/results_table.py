"""The README's results table and its sentences, from `ganrec compare` JSONs on test and one
`ganrec evaluate` JSON for the baselines (which do not depend on the seed).

    python docs/experiments/results_table.py --eval docs/bench/eval-movielens-small.json \\
        --compare gan,ablation=docs/bench/compare-test-gan-ablation.json \\
        [--compare gan,sasrec=... ...]

Each model's row is its mean ± standard deviation over the paired seeds (each seed's mean over
the users both runs scored); each comparison's sentence is compare's own numbers: the mean
difference, its hierarchical bootstrap 95% interval, the seeds ahead, the verdict.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

BASELINES = {
    "popularity": "popularity",
    "als": "ALS (`implicit`, 64 factors, tuned)",
    "ease": "EASE (λ tuned)",
}


def model_rows(comparisons: list[tuple[str, str, dict]]) -> dict[str, list[float]]:
    """Each named model's per-seed test NDCG@10 (from the first comparison that has it)."""
    rows: dict[str, list[float]] = {}
    for a, b, result in comparisons:
        for name, key in ((a, "a"), (b, "b")):
            rows.setdefault(name, [p[key] for p in result["per_seed"]])
    return rows


def table(baselines: dict, models: dict[str, list[float]]) -> list[str]:
    lines = ["| model | NDCG@10 (test) | seeds |", "|---|---|---|"]
    for key, label in BASELINES.items():
        if key in baselines:
            lines.append(f"| {label} | {baselines[key]['ndcg@10']:.4f} | — |")
    for name, values in models.items():
        v = np.asarray(values)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        lines.append(f"| {name} | {v.mean():.4f} ± {sd:.4f} | {len(v)} |")
    return lines


def sentence(a: str, b: str, result: dict) -> str:
    low, high = result["interval"]
    sign = result["sign_test"]
    verdict = result["verdict"].replace("A", a).replace("B", b)
    return (
        f"{a} − {b}: {result['difference']:+.4f} NDCG@10, 95% interval [{low:+.4f}, {high:+.4f}]"
        f" over {result['seeds']} paired seeds, {a} ahead on {sign['ahead']} of them: {verdict}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, help="an evaluate JSON with the baselines")
    parser.add_argument(
        "--compare", action="append", default=[], help="A,B=compare.json (on test), repeatable"
    )
    args = parser.parse_args()
    baselines = json.load(open(args.eval))["models"]
    comparisons = []
    for spec in args.compare:
        names, path = spec.split("=", 1)
        a, b = names.split(",")
        result = json.load(open(path))
        if result.get("split") != "test":
            raise SystemExit(f"{path}: a comparison on {result.get('split')}, not on test")
        comparisons.append((a, b, result))
    print("\n".join(table(baselines, model_rows(comparisons))))
    print()
    for a, b, result in comparisons:
        print(sentence(a, b, result))


if __name__ == "__main__":
    main()
