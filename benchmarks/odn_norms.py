"""Why ODN's shallow exits' validation accuracy swings: each depth phase validated as trained and after
re-estimating the batch norms' statistics, epoch by epoch.

    python -m benchmarks.odn_norms --seed-dir runs/odn-bench/mnist10k/odn-0/seed --depths 1 2

Starts from a trained seed network (a netfit model folder), warms all exits up jointly as ODN does, then trains
each depth at ODN's learning rates (the base lr at depth 1, half of it later; x0.6 after 5 stale epochs) WITHOUT
``precise_bn`` and, after every epoch, evaluates the same weights twice. Writes
benchmarks/results/odn_norms_<data>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from netfit.data import load_data
from netfit.engine import Callback, TrainConfig, evaluate, seed_everything, train
from netfit.engine.norms import recalibrate_norms
from netfit.export import load_model
from netfit.methods.odn import ODN, ExitNet, _joint_step, depth_lr

from .common import environment, write_results


class _BothValidations(Callback):
    """After every epoch: validation accuracy as trained (the engine's row) and after recalibration (on a copy)."""

    def __init__(self, data, samples: int) -> None:
        self.data, self.samples, self.rows = data, samples, []

    def on_epoch_end(self, state, metrics: dict) -> None:
        model = copy.deepcopy(state.model)
        recalibrate_norms(model, self.data, samples=self.samples)
        recalibrated = evaluate(model, self.data, "val")["accuracy"]
        self.rows.append({"epoch": state.epoch, "as_trained": metrics["val_acc"], "recalibrated": recalibrated})


def run(args: argparse.Namespace) -> dict:
    data = load_data(args.data)
    seed_everything(0)
    odn = ODN()  # its default warm-up and lr rules, so the probe trains as the method does
    net = ExitNet(load_model(args.seed_dir), data.input_shape, data.num_classes)
    warmup = TrainConfig(epochs=odn.warmup_epochs, lr=args.lr)
    warm = train(net, data, warmup, step_fn=_joint_step, progress=False).model
    depths = {}
    for depth in args.depths:
        model = copy.deepcopy(warm)
        model.depth = depth
        probe = _BothValidations(data, args.samples)
        plateau = {"schedule": "plateau", "plateau_factor": odn.lr_factor, "plateau_patience": odn.lr_patience}
        config = TrainConfig(epochs=args.epochs, lr=depth_lr(args.lr, depth), **plateau)
        train(model, data, config, callbacks=[probe], progress=False)
        depths[depth] = probe.rows
    settings = {k: str(v) for k, v in vars(args).items()} | {
        "warmup_epochs": odn.warmup_epochs,
        "lr_factor": odn.lr_factor,
        "lr_patience": odn.lr_patience,
    }
    return {"settings": settings, "environment": environment(), "depths": depths}


def to_markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        f"# ODN depth phases on {s['data']}: validation as trained vs after batch-norm recalibration",
        "",
        f"Seed {s['seed_dir']}; {s['warmup_epochs']} joint warm-up epochs, then {s['epochs']} epochs per "
        f"depth at ODN's lr (plateau x{s['lr_factor']} after {s['lr_patience']} stale epochs, read "
        f"from the as-trained accuracy); recalibration on {s['samples']} training samples, on a copy (training is "
        "unchanged).",
        "",
        "| depth | epoch | as trained % | recalibrated % |",
        "|---|---|---|---|",
    ]
    for depth, rows in payload["depths"].items():
        for r in rows:
            lines.append(f"| {depth} | {r['epoch']} | {100 * r['as_trained']:.1f} | {100 * r['recalibrated']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-dir", type=Path, required=True, help="a trained seed (netfit model folder)")
    parser.add_argument("--data", default="mnist10k")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args()
    payload = run(args)
    write_results(f"odn_norms_{args.data}", payload, to_markdown(payload))


if __name__ == "__main__":
    main()
