"""Run one peer inside its venv as a netfit adapt run (the harness calls this; usable by hand too).

    .venv-peers/torch_pruning/bin/python -m benchmarks.peers.adapt --tool torch_pruning --variant l1-uniform \\
        --seed-weights runs/seed --data mnist1d --budgets 50 25 --epochs 10 --out runs/tp
"""

from __future__ import annotations

import argparse
import json

from netfit.api import adapt

from . import method  # noqa: F401  (registers the "peer" method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed-weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--budgets", type=float, nargs="+", required=True, help="percent of the seed's MACs")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", default="{}", help="TrainConfig overrides as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    adapt(
        args.seed_weights,
        args.data,
        ",".join(f"{b:g}%" for b in args.budgets),
        "peer",
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        seed_weights=args.seed_weights,
        method_options={"tool": args.tool, "variant": args.variant},
        train=json.loads(args.train),
        progress=False,
    )


if __name__ == "__main__":
    main()
