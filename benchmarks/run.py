"""Every netfit method and every peer tool on the same seed network, data split, budgets and epochs.

    python -m benchmarks.run quick            # digits + mnist1d, minutes on 2 CPU cores (CI smoke test)
    python -m benchmarks.run mnist            # MNIST-10k + mnist1d, ResNet-18 / 1-D ResNet-18 / MobileNetV2
    python -m benchmarks.run gpu              # mnist plus throughput; picked automatically with CUDA present

Per case and seed the harness trains the seed ONCE (``seed_epochs``), then runs every entry from it:
netfit's own methods in this process, each peer tool in its own venv (``benchmarks.peers``, created on first
use). Epoch accounting: a method that starts from the trained seed gets ``epochs`` of adaption (DNA splits them
into search + fine-tune); ``uniform-scratch`` trains the same architecture as ``uniform`` from scratch for
``seed_epochs + epochs``. Every output is measured by netfit's own cost model. Finished runs are reused, so
an interrupted suite continues where it stopped. Writes benchmarks/results/suite_<name>.{json,md,png}.

Results accumulate: runs of this invocation replace those of the same case and seed in an existing
suite_<name>.json, and the others are kept (unless their case's settings changed, or with ``--fresh``). So
``--cases mnist1d --seeds 1 2`` adds seeds to one case without rerunning the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from netfit.api import adapt, train_model
from netfit.data import load_data
from netfit.engine.log import session_seconds
from netfit.errors import NetfitError
from netfit.health import candidate_warning

from .common import RESULTS, environment, epoch_seconds, seed_network, write_results
from .peers import setup
from .suite import SUITES, Case, Suite, check, entries
from .suite_report import plot, to_markdown

ROOT = Path(__file__).resolve().parents[1]

# ----- running


def train_seed(case: Case, suite: Suite, seed: int, out: Path) -> dict:
    """Train (or reuse) the seed network of one case and seed; returns its figures and training seconds."""
    facts = out / "seed.json"
    if facts.exists():
        return json.loads(facts.read_text())
    data = load_data(case.data)
    model = seed_network(case.model, data, case.width, seed)
    started = time.perf_counter()
    figures = train_model(
        model, data, out=out / "seed", epochs=case.seed_epochs, seed=seed, train=_train(suite), progress=False
    )
    figures["seconds"] = round(time.perf_counter() - started, 2)
    facts.write_text(json.dumps(figures, indent=2))
    return figures


def run_entry(label: str, case: Case, suite: Suite, seed: int, seed_dir: Path, out: Path) -> list[Path]:
    """Run one method or peer from the trained seed; returns its finished run directories (reused if done).

    All budgets run in one go; when one fails (a tool cannot reach it, a tiny network's training diverges),
    each budget runs alone and the failures are recorded in ``<dir>@<budget>.failed`` with the last message
    (the all-budgets attempt is marked ``<dir>.split`` so reruns go straight to the single budgets)."""
    if (out / "result.json").exists():
        return [out]
    if ":" in label:
        tool, variant = label.split(":")
        python = setup(tool)

        def attempt(budgets, where):
            return _peer_process(python, tool, variant, case, suite, seed, seed_dir, where, budgets)
    else:

        def attempt(budgets, where):
            return _netfit_process(label, case, suite, seed, seed_dir, where, budgets)

    budgets = case.budgets_for(label)
    tried_together = out.parent / f"{out.name}.split"
    if not tried_together.exists():
        if attempt(budgets, out) is None:
            return [out]
        tried_together.write_text("one budget failed; run per budget\n")
    done = []
    for budget in budgets:
        sub = out.parent / f"{out.name}@{budget:g}"
        failed = sub.parent / f"{sub.name}.failed"
        if (sub / "result.json").exists():
            done.append(sub)
        elif not failed.exists():
            error = attempt([budget], sub)
            if error is None:
                done.append(sub)
            else:
                failed.write_text(error + "\n")
    return done


def _netfit_process(label, case, suite, seed, seed_dir, out, budgets) -> str | None:
    """One netfit method in this process (resuming an interrupted run); None when it finished, else the error."""
    method, options, epochs = label, {}, case.epochs
    if label == "uniform-scratch":
        method, options, epochs = "uniform", {"inherit": False}, case.seed_epochs + case.epochs
    elif label == "random":
        options = {"samples": 1}
    elif label == "dna":
        options = {"search_epochs": case.dna_search_epochs}
        epochs = case.dna_finetune_epochs
    elif label == "dna-scratch":  # DNA's architectures trained like uniform-scratch: architecture quality alone
        method, options = "dna", {"search_epochs": case.dna_search_epochs, "inherit": False, "kd": False}
        epochs = case.seed_epochs + case.epochs
        _reuse_dna_search(out)
    try:
        adapt(
            case.model, case.data, _budget_spec(budgets), method, out=out, epochs=epochs, seed=seed,
            seed_weights=seed_dir, method_options=options, train=_train(suite), resume=out.exists(), progress=False,
        )  # fmt: skip
    except NetfitError as e:
        print(f"  {label} {list(budgets)}: {e}", file=sys.stderr, flush=True)
        return f"{type(e).__name__}: {e}"
    return None


def _reuse_dna_search(out: Path) -> None:
    """dna-scratch trains the architectures of the ``dna`` entry's search (same seed, same search settings, so
    the same search): start from that finished search's checkpoint instead of running it again."""
    search = out.parent / "dna" / "ckpt" / "dna-search.pt"
    if not out.exists() and search.exists():
        (out / "ckpt").mkdir(parents=True)
        shutil.copy(search, out / "ckpt" / search.name)


def _peer_process(python, tool, variant, case, suite, seed, seed_dir, out, budgets) -> str | None:
    """Run ``benchmarks.peers.adapt`` in the tool's venv; None when it finished, else its last error line."""
    command = [
        str(python), "-m", "benchmarks.peers.adapt", "--tool", tool, "--variant", variant,
        "--seed-weights", str(seed_dir), "--data", case.data, "--budgets", *[f"{b:g}" for b in budgets],
        "--epochs", str(case.epochs), "--seed", str(seed), "--train", json.dumps(_train(suite)), "--out", str(out),
    ]  # fmt: skip
    if out.exists():  # a killed earlier attempt: start it again
        shutil.rmtree(out)
    done = subprocess.run(command, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"  {tool}:{variant} {list(budgets)}: {last}", file=sys.stderr, flush=True)
    return last


def _train(suite: Suite) -> dict:
    return {"batch_size": suite.batch_size, "lr": suite.lr}


def _budget_spec(budgets) -> str:
    return ",".join(f"{b:g}%" for b in budgets)


# ----- collecting


def collect(label: str, run_dirs: list[Path], seed_facts: dict) -> list[dict]:
    """One row per candidate: budget, accuracy, cost, and the run's wall time relative to training the seed
    (and its CPU seconds)."""
    rows = []
    for run_dir in run_dirs:
        result = json.loads((run_dir / "result.json").read_text())
        search = result["timing"]["search_seconds"]
        if "interrupted_sessions_seconds" not in result["timing"]:  # made before resumed runs counted them
            search += sum(session_seconds(run_dir / "log.jsonl")[:-1])
        cpu = session_seconds(run_dir / "log.jsonl", "cpu")  # [] for runs logged before CPU time was
        for c in result["candidates"]:
            rows.append(
                {
                    "entry": label,
                    "budget_pct": float(c["target"].rstrip("%")),
                    "accuracy": c["accuracy"],
                    "macs": c["macs"],
                    "params": c["params"],
                    "within_budget": c["within_budget"],
                    "val_acc_inherited": c["info"].get("val_acc_inherited"),
                    "warning": c.get("warning"),
                    "search_over_seed": round(search / seed_facts["seconds"], 3),
                    "cpu_seconds": round(sum(cpu), 1) if cpu else None,
                    "budgets_in_run": len(result["candidates"]),
                    "run": run_dir.name,
                }
            )
    return rows


def flag_unsound(payload: dict) -> dict:
    """Give every row without a warning netfit's soundness check (near chance, far below the seed): peers'
    results carry no warnings of their own, and rows collected before the check have none."""
    classes = {}
    for run in payload["runs"]:
        data = run["case"]["data"]
        classes.setdefault(data, load_data(data).num_classes)
        seed_accuracy = run["seed_network"]["accuracy"]
        for row in run["rows"]:
            row["warning"] = row.get("warning") or candidate_warning(row["accuracy"], seed_accuracy, classes[data])
    return payload


def failures(out: Path) -> dict[str, str]:
    """Peer runs that could not meet a budget, with the tool's last message."""
    return {p.name.removesuffix(".failed"): p.read_text().strip() for p in sorted(out.glob("*.failed"))}


def throughput(seed_dir: Path, run_dirs: list[Path], case: Case) -> dict:
    """Images per second on CUDA at batch 256 (eval, fp32) of the seed and of every candidate (gpu suite)."""
    from netfit.export import load_model

    shape = load_data(case.data).input_shape
    x = torch.randn(256, *shape, device="cuda")

    def rate(model) -> float:
        model = model.cuda().eval()
        with torch.no_grad():
            for _ in range(10):
                model(x)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(50):
                model(x)
            torch.cuda.synchronize()
        return round(50 * 256 / (time.perf_counter() - started))

    rates = {"seed": rate(load_model(seed_dir))}
    for run_dir in run_dirs:
        for c in json.loads((run_dir / "result.json").read_text())["candidates"]:
            rates[f"{run_dir.name}/{c['id']}"] = rate(load_model(run_dir / c["weights"]))
    return rates


def merge(earlier: dict, payload: dict) -> dict:
    """``payload`` plus the runs of ``earlier`` for the other (case, seed) pairs, where that case is still
    configured the same way (a changed case makes its old runs incomparable, so they are dropped).

    A rerun of a (case, seed) with only some entries (``--only``) keeps the other entries' rows of the earlier
    run when both started from the same seed network (same MACs, params and accuracy); they are listed in the
    run's ``carried_over`` so the tables can say which figures come from an earlier invocation."""
    cases = SUITES[payload["suite"]].cases
    order = {c.key: i for i, c in enumerate(cases)}
    current = {json.dumps(asdict(c), sort_keys=True) for c in cases}  # as JSON: tuples and lists compare equal
    comparable = {
        (Case(**r["case"]).key, r["seed"]): r
        for r in earlier["runs"]
        if json.dumps(r["case"], sort_keys=True) in current
    }
    fresh = []
    for run in payload["runs"]:
        old = comparable.pop((Case(**run["case"]).key, run["seed"]), None)
        fresh.append(_carry_over(old, run) if old and _same_network(old, run) else run)
    runs = sorted(list(comparable.values()) + fresh, key=lambda r: (order[Case(**r["case"]).key], r["seed"]))
    seeds = sorted({r["seed"] for r in runs})
    return payload | {"runs": runs, "settings": payload["settings"] | {"seeds": seeds}}


def _same_network(a: dict, b: dict) -> bool:
    """Two runs started from the same seed network (its training time and folder may differ)."""
    return all(a["seed_network"][k] == b["seed_network"][k] for k in ("macs", "params", "accuracy"))


def _carry_over(old: dict, run: dict) -> dict:
    """``run`` plus the rows and failures of the entries that only ``old`` ran."""

    def name(entry: str) -> str:  # rows name entries by label, failures by run directory
        return entry.replace(":", "-")

    ran = {name(r["entry"]) for r in run["rows"]} | {k.partition("@")[0] for k in run["failed"]}
    rows = [r for r in old["rows"] if name(r["entry"]) not in ran]
    failed = {k: v for k, v in old["failed"].items() if k.partition("@")[0] not in ran}
    carried = sorted({r["entry"] for r in rows} | {k.partition("@")[0] for k in failed})
    return run | {"rows": rows + run["rows"], "failed": failed | run["failed"], "carried_over": carried}


def select_cases(suite: Suite, patterns: list[str] | None) -> Suite:
    """The suite with only the cases whose key contains one of ``patterns``; an unmatched pattern is an error."""
    if not patterns:
        return suite
    unknown = [p for p in patterns if not any(p in c.key for c in suite.cases)]
    if unknown:
        raise SystemExit(f"error: no case matches {unknown}; cases: {[c.key for c in suite.cases]}")
    return replace(suite, cases=tuple(c for c in suite.cases if any(p in c.key for p in patterns)))


def run_suite(name: str, suite: Suite, root: Path, only: set[str] | None) -> dict:
    runs = []
    for case in suite.cases:
        data_split = load_data(case.data).source
        for seed in suite.seeds:
            base = root / name / case.key / f"s{seed}"
            print(f"[{name}] {case.key} seed {seed}: training the seed", flush=True)
            seed_facts = train_seed(case, suite, seed, base)
            rows, rates = [], {}
            selected = [e for e in entries(suite) if not only or e in only or e.split(":")[0] in only]
            for label in selected:
                print(f"[{name}] {case.key} seed {seed}: {label}", flush=True)
                run_dirs = run_entry(label, case, suite, seed, base / "seed", base / label.replace(":", "-"))
                rows += collect(label, run_dirs, seed_facts)
                if suite.throughput and torch.cuda.is_available():
                    rates |= throughput(base / "seed", run_dirs, case)
            runs.append(
                {
                    "case": asdict(case),
                    "seed": seed,
                    "seed_network": seed_facts,
                    "data_split": data_split,
                    "rows": rows,
                    "failed": failures(base),
                    "dna_epoch_ratio": _dna_epoch_ratio(base),
                    "dna_step_ratios": _dna_step_ratios(base, case, suite, seed) if "dna" in selected else None,
                    "throughput": rates,
                }
            )
    return {"suite": name, "settings": asdict(suite), "environment": environment(), "runs": runs}


def _dna_step_ratios(base: Path, case: Case, suite: Suite, seed: int) -> dict:
    """DNA's supernet passes and search step over the dense seed's step, timed side by side in this process
    (once per case and seed; kept in ``dna_steps.json``)."""
    path = base / "dna_steps.json"
    if not path.exists():
        from netfit.export import load_model

        from .dna import step_ratios

        options = {"search_epochs": case.dna_search_epochs}
        model, data = load_model(base / "seed"), load_data(case.data)
        ratios = step_ratios(model, data, suite.batch_size, seed, case.budgets_for("dna"), options)
        path.write_text(json.dumps(ratios, indent=2))
    return json.loads(path.read_text())


def _dna_epoch_ratio(base: Path) -> float | None:
    """Median DNA search epoch over median seed epoch, from the two run logs (same process kind, same data)."""
    import statistics

    def median_epoch(run_dir: Path, phase: str) -> float | None:
        seconds = epoch_seconds(run_dir, phase) if (run_dir / "log.jsonl").exists() else []
        return statistics.median(seconds) if seconds else None

    search, seed = median_epoch(base / "dna", "dna-search"), median_epoch(base / "seed", "train")
    return round(search / seed, 2) if search and seed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", choices=sorted(SUITES), default=None)
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "bench", help="run directories (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where suite_<name>.{json,md,png} go")
    parser.add_argument("--only", nargs="+", default=None, help="entries or tools to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--cases", nargs="+", default=None, help="cases whose key contains one of these")
    parser.add_argument("--fresh", action="store_true", help="drop earlier results instead of merging")
    parser.add_argument("--check", action="store_true", help="assert every entry ran and met its budgets")
    parser.add_argument("--rewrite", action="store_true", help="only redo the markdown and plot from the JSON")
    args = parser.parse_args()
    name = args.suite or ("gpu" if torch.cuda.is_available() else "mnist")
    suite = SUITES[name]
    suite = select_cases(suite, args.cases)
    if args.seeds:
        suite = replace(suite, seeds=tuple(args.seeds))
    earlier_path = args.out / f"suite_{name}.json"
    earlier = json.loads(earlier_path.read_text()) if earlier_path.exists() else None
    if args.rewrite:
        if earlier is None:
            raise SystemExit(f"error: --rewrite needs {earlier_path}; run the suite first")
        payload = earlier
    else:
        payload = run_suite(name, suite, args.root, set(args.only) if args.only else None)
        if earlier and not args.fresh:
            payload = merge(earlier, payload)
    payload = flag_unsound(payload)
    if args.check:
        check(payload)
    markdown = to_markdown(payload)
    write_results(f"suite_{name}", payload, markdown, out=args.out)
    plot(payload, args.out / f"suite_{name}.png")
    print(markdown)


if __name__ == "__main__":
    main()
