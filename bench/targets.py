"""The project's targets for the benchmark's headline ratios, checked against a bench JSON.

    python bench/targets.py [bench-results/bench-*.json]   (default: the newest one)

The installed benchmark (``python -m vkqlinear bench``) reports the figures; this script,
kept with the project, says which targets they meet (docs/benchmarks.md explains each).
Exit status 1 if any measured figure misses its target.
"""

import json
import sys
from pathlib import Path

# name -> (comparison, target)
TARGETS = {
    "gemv_T1_over_read": ("<=", 1.5),
    "gemv_T1_over_read_in_round": ("<=", 1.5),
    "coop_T1_over_best": ("<=", 1.3),
    "e2e_T1_over_kernel": ("<=", 1.1),
    "gemm_T512_alu_fraction": (">=", 0.70),
    "gemm_T512_alu_fraction_in_round": (">=", 0.70),
    "auto_regret_max": ("<=", 1.05),      # with the device tuned (`python -m vkqlinear tune`)
}


def check(figures):
    """``[(name, value, comparison, target, met)]`` for every target the figures measure."""
    rows = []
    for name, (cmp, target) in TARGETS.items():
        if name in figures:
            v = figures[name]
            rows.append((name, v, cmp, target, v <= target if cmp == "<=" else v >= target))
    return rows


def main(argv):
    if argv:
        path = Path(argv[0])
    else:
        found = sorted(Path("bench-results").glob("bench-*.json"))
        if not found:
            print("no bench-results/bench-*.json: run python -m vkqlinear bench first")
            return 2
        path = found[-1]
    doc = json.loads(path.read_text())
    rows = check(doc.get("headline", {}))
    print(f"{path} ({doc.get('device', {}).get('name', '?')}, commit {doc.get('commit', '?')})")
    for name, v, cmp, target, met in rows:
        print(f"  {name:34s} {v:7.3f}  target {cmp} {target:<5}  {'met' if met else 'MISSED'}")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
