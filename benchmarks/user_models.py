"""Prunable channel groups and the smallest reachable network of user-defined models, netfit vs Torch-Pruning.

    python -m benchmarks.user_models            # writes benchmarks/results/user_models.json and .md
    python -m benchmarks.user_models --no-tp    # netfit only (no Torch-Pruning venv needed)

The fixtures are the plain ``nn.Module`` classes of tests/user_zoo.py (the models tests/test_user_models.py
checks): concatenations meeting single convs in squeeze-excite gates and residuals, Ghost, DenseNet and
Inception blocks, chunks, a fixed split, a shared layer, a ResNet, MobileNetV2/V3 and an EfficientNet, all on
one-channel 8x8 inputs.

netfit: the traced channel groups (``trace_channel_groups``, through ``SubnetSpace``), how many are prunable,
why the others are frozen, and the smallest network of its space (one channel in every prunable group).

Torch-Pruning 1.6.1 (its own venv, ``benchmarks.peers.setup("torch_pruning")``, run as a subprocess): its
dependency groups (``DependencyGraph.get_all_groups`` rooted at convs and linears; "all" without ignored
layers, "eligible" with the classifier ignored, as Torch-Pruning's pruners use it), how many of them its
pruner actually shrinks, and its smallest network: ``MetaPruner`` with L1 group magnitude, local pruning,
``pruning_ratio`` 0.99 reached in ``--steps`` iterative steps (a single 0.99 step would empty the groups, which
Torch-Pruning refuses, and skip them); a single step to 0.9 ("one-shot"); and "groups allow": the smallest network
its dependency groups admit, each group cut through its graph to the fewest channels that leave each of its
layers one (netfit's own cut, not a Torch-Pruning pruner). Every network is counted by netfit's cost model (MACs
at batch 1) and run once (a network that no longer runs is reported as broken).
Torch-Pruning does not count the model input as a group; netfit does (always frozen), so netfit's
"all" is one more for the same structure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from .common import environment, write_results

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# the two groups netfit always freezes: nothing may change the model's input or output channels
BOUNDARY = ("these are the model input channels", "it feeds the model output")


def zoo() -> tuple[dict[str, type[nn.Module]], tuple[int, ...]]:
    """The fixtures (tests/user_zoo.py: ``ZOO`` by name) and their one-sample input shape."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import user_zoo

    return user_zoo.ZOO, user_zoo.SHAPE


def _seed_model(factory: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


def netfit_side(factory: type[nn.Module], shape: tuple[int, ...]) -> dict:
    """Groups, prunable groups, frozen reasons and the smallest reachable network's MACs (netfit's space)."""
    from netfit.cost import count_macs
    from netfit.space.subnet import SubnetSpace

    model = _seed_model(factory)
    seed_macs = count_macs(model, shape)
    space = SubnetSpace(model, shape)
    smallest = space.materialize({g.id: 1 for g in space.prunable})
    with torch.no_grad():
        runs = tuple(smallest(torch.zeros(2, *shape)).shape) == tuple(model(torch.zeros(2, *shape)).shape)
    macs = count_macs(smallest, shape)
    return {
        "groups": len(space.groups),
        "prunable": len(space.prunable),
        "seed_macs": seed_macs,
        "smallest_macs": macs,
        "smallest_fraction": macs / seed_macs,
        "smallest_runs": runs,
        "frozen": [
            {"size": g.size, "reason": g.reason, "members": [f"{m.module}:{m.role}@{m.offset}" for m in g.members]}
            for g in space.groups
            if not g.prunable
        ],
    }


def _out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _tp_graph(model: nn.Module, example: torch.Tensor):
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _tp_groups(graph, model: nn.Module, ignored: list[nn.Module]) -> list[dict]:
    """Torch-Pruning's groups rooted at convs and linears: root layer, width and the layers whose outputs follow."""
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        outs = {
            names[dep.target.module]
            for dep, _ in group
            if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)
        }
        groups.append({"root": names[root], "size": graph.get_out_channels(root), "out_layers": sorted(outs)})
    return groups


def tp_pruner(factory: type[nn.Module], shape: tuple[int, ...], steps: int) -> dict:
    """Torch-Pruning's groups and what its pruner reaches: ``MetaPruner``, L1 group magnitude, local, 0.99 in
    ``steps`` steps. A step that raises ends the run; the network of the steps before it is still measured (each
    step ranks every group before it prunes any, so a failed step leaves the network as it was)."""
    import torch_pruning as tp

    from netfit.cost import count_macs

    model = _seed_model(factory)
    example = torch.zeros(1, *shape)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seed_macs = count_macs(model, shape)
    try:
        graph = _tp_graph(model, example)
        every = _tp_groups(graph, model, [])
        eligible = _tp_groups(graph, model, [classifier])
    except Exception as exc:  # a model Torch-Pruning cannot trace: reported, not fatal
        return {"error": f"tracing: {type(exc).__name__}: {exc}"}
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.99,
        iterative_steps=steps,
        ignored_layers=[classifier],
    )
    row: dict = {"groups": len(every), "eligible": len(eligible)}
    for step in range(steps):
        try:
            pruner.step()
        except Exception as exc:
            row["error"] = f"pruner step {step + 1} of {steps}: {type(exc).__name__}: {exc}"
            break
    for group in eligible:
        group["pruned_to"] = _out_width(model.get_submodule(group["root"]))
    row |= {"prunable": sum(g["pruned_to"] < g["size"] for g in eligible), "seed_macs": seed_macs}
    row |= _measure(model, shape, classifier.out_features, seed_macs)
    return row | {"group_list": every, "eligible_list": eligible}


def tp_one_shot(factory: type[nn.Module], shape: tuple[int, ...], ratio: float = 0.9) -> dict:
    """One ``MetaPruner`` step straight to ``ratio`` (L1 group magnitude, local): a group whose cut would empty
    one of its layers is skipped whole (``check_pruning_group``)."""
    import torch_pruning as tp

    from netfit.cost import count_macs

    model = _seed_model(factory)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seed_macs = count_macs(model, shape)
    try:
        tp.pruner.MetaPruner(
            model,
            torch.zeros(1, *shape),
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[classifier],
        ).step()
    except Exception as exc:
        return {"ratio": ratio, "error": f"{type(exc).__name__}: {exc}"}
    return {"ratio": ratio, **_measure(model, shape, classifier.out_features, seed_macs)}


def tp_structural(factory: type[nn.Module], shape: tuple[int, ...]) -> dict:
    """The smallest network Torch-Pruning's dependency groups allow, whatever its pruners do: every eligible group
    (classifier ignored) keeps the fewest channels that leave each of its layers at least one, removed in one
    ``group.prune()`` per group through the dependency graph."""
    from netfit.cost import count_macs

    model = _seed_model(factory)
    example = torch.zeros(1, *shape)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    names = {m: n for n, m in model.named_modules()}
    seed_macs = count_macs(model, shape)
    kept, refused = {}, []  # refused: groups whose cut Torch-Pruning's check_pruning_group rejects
    try:
        graph = _tp_graph(model, example)
        for group in _tp_groups(graph, model, [classifier]):
            root = model.get_submodule(group["root"])
            prune_out = graph.get_pruner_of_module(root).prune_out_channels
            width = graph.get_out_channels(root)
            reach = []  # the output layers each root channel reaches, at which index
            for i in range(width):
                deps = graph.get_pruning_group(root, prune_out, [i])
                reach.append(
                    {
                        names[dep.target.module]
                        for dep, _ in deps
                        if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)
                    }
                )
            keep, uncovered = [], set().union(*reach)
            while uncovered:  # greedy cover: the channel that reaches the most layers left without a channel
                best = max(range(width), key=lambda i: len(reach[i] & uncovered))
                keep.append(best)
                uncovered -= reach[best]
            drop = [i for i in range(width) if i not in keep]
            deps = graph.get_pruning_group(root, prune_out, drop)
            if drop and graph.check_pruning_group(deps):
                deps.prune()
            elif drop:
                refused.append(group["root"])
            kept[group["root"]] = _out_width(root)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "kept": kept, "refused": refused}
    return {"kept": kept, "refused": refused, **_measure(model, shape, classifier.out_features, seed_macs)}


def _measure(model: nn.Module, shape: tuple[int, ...], classes: int, seed_macs: int) -> dict:
    from netfit.cost import count_macs

    try:
        with torch.no_grad():
            runs = tuple(model(torch.zeros(2, *shape)).shape) == (2, classes)
        macs = count_macs(model, shape)
    except Exception as exc:
        return {"smallest_runs": False, "run_error": f"{type(exc).__name__}: {exc}"}
    return {"smallest_macs": macs, "smallest_fraction": macs / seed_macs, "smallest_runs": runs}


def run_tp(names: list[str], steps: int) -> dict[str, dict]:
    """The Torch-Pruning side of every fixture, in its venv (created on first use), as JSON from a subprocess."""
    from .peers import setup

    python = setup("torch_pruning")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), str(ROOT / "src")])}
    command = [str(python), "-m", "benchmarks.user_models", "--tp-worker", "--steps", str(steps), *names]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Torch-Pruning worker failed:\n{done.stderr[-4000:]}")
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    return payload


def _tp_worker(names: list[str], steps: int) -> None:
    from importlib.metadata import version

    models, shape = zoo()
    rows = {
        name: tp_pruner(models[name], shape, steps)
        | {"one_shot": tp_one_shot(models[name], shape), "structural": tp_structural(models[name], shape)}
        for name in names
    }
    print(json.dumps({"version": version("torch-pruning"), "rows": rows}))


def _frozen_text(row: dict) -> str:
    other = [f["reason"] for f in row["frozen"] if f["reason"] not in BOUNDARY]
    return "; ".join(dict.fromkeys(other)) if other else "only input and logits"


def _pct(row: dict | None) -> str:
    """A smallest-network cell: % of the seed's MACs, or why there is none."""
    if row is None:
        return "not run"
    if "smallest_runs" not in row:
        return "error"
    if not row["smallest_runs"]:
        return "network broken"
    text = f"{100 * row['smallest_fraction']:.1f}"
    return text + (" (error)" if "error" in row else "")


def to_markdown(payload: dict) -> str:
    env = payload["environment"]
    tp = payload.get("torch_pruning", {})
    tp_rows = tp.get("rows", {})
    lines = [
        "# User models: prunable channel groups and the smallest reachable network",
        "",
        f"netfit's tracer vs Torch-Pruning {tp.get('version', '(not run)')} on the user-defined models of "
        "tests/user_zoo.py (one-channel 8x8 inputs, 10 logits; SharedNet has 3). Groups: prunable / all; netfit "
        "counts the model input as a (frozen) group, Torch-Pruning does not, and both leave the logits alone. "
        "Smallest: % of the seed's MACs (netfit's count, batch 1) of netfit's network with one channel per "
        "prunable group, and of Torch-Pruning's `MetaPruner` (L1 group magnitude, local, ratio 0.99 in "
        f"{payload['settings']['steps']} steps; one-shot: a single step to 0.9, where a group whose cut would "
        'empty one of its layers is skipped whole). "TP groups allow": the fewest channels Torch-Pruning\'s '
        "dependency groups allow (each group keeps the fewest channels that leave every layer it spans one, cut "
        "through its graph; n/a where `check_pruning_group` rejects that cut). Its pruner stops short of it where "
        "one group spans several branches: magnitude ranking empties the weakest branch first, and once any "
        "layer of a group is down to one channel the pruner leaves the whole group (`_check_pruning_ratio`).",
        "",
        "| fixture | seed MACs | netfit prunable/all | netfit smallest MACs % | TP prunable/all "
        "| TP smallest MACs % | TP one-shot 0.9 MACs % | TP groups allow MACs % | what netfit still freezes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in payload["netfit"].items():
        tp_row = tp_rows.get(name)
        if tp_row is None:
            groups = pruner = one_shot = structural = "not run"
        elif "prunable" not in tp_row:
            groups = pruner = one_shot = structural = "error"
        else:
            groups, pruner = f"{tp_row['prunable']}/{tp_row['groups']}", _pct(tp_row)
            one_shot = _pct(tp_row["one_shot"])
            refused = tp_row["structural"].get("refused")
            structural = f"n/a ({', '.join(refused)})" if refused else _pct(tp_row["structural"])
        lines.append(
            f"| {name} | {row['seed_macs']:,} | {row['prunable']}/{row['groups']} | {_pct(row)} "
            f"| {groups} | {pruner} | {one_shot} | {structural} | {_frozen_text(row)} |"
        )
    senet = payload["netfit"].get("SENet")
    if senet:
        verdict = "met" if senet["smallest_fraction"] <= 0.10 else "NOT met"
        lines += [
            "",
            "Target (issue 19): on the concat + SE + residual network (SENet) the smallest reachable network is "
            f"<= 10% of the seed's MACs: netfit {100 * senet['smallest_fraction']:.2f}% ({verdict}).",
        ]
    errors = {n: r["error"] for n, r in tp_rows.items() if "error" in r}
    for part, label in (("one_shot", "one-shot"), ("structural", "groups allow")):
        errors |= {f"{n} ({label})": r[part]["error"] for n, r in tp_rows.items() if "error" in r.get(part, {})}
    broken = {n: r["run_error"] for n, r in tp_rows.items() if "run_error" in r}
    for part, label in (("one_shot", "one-shot"), ("structural", "groups allow")):
        broken |= {f"{n} ({label})": r[part]["run_error"] for n, r in tp_rows.items() if "run_error" in r.get(part, {})}
    if errors or broken:
        lines += ["", "Torch-Pruning failures:"]
        lines += [f"- {n}: `{e}`" for n, e in errors.items()]
        lines += [f"- {n}: its pruned network no longer runs: `{e}`" for n, e in broken.items()]
    unpruned = {
        n: [f"{g['root']} ({g['size']} -> {g['pruned_to']})" for g in r["eligible_list"] if g["pruned_to"] > 1]
        for n, r in tp_rows.items()
        if "eligible_list" in r and "error" not in r
    }
    if any(unpruned.values()):
        lines += [
            "",
            "Torch-Pruning groups its pruner leaves above one channel, by root layer (width before -> after):",
        ]
        lines += [f"- {n}: {', '.join(roots)}" for n, roots in unpruned.items() if roots]
    lines += ["", f"{env['device']}; torch {env['torch']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="fixtures (default: all of tests/user_zoo.py ZOO)")
    parser.add_argument("--steps", type=int, default=100, help="Torch-Pruning iterative steps to ratio 0.99")
    parser.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    parser.add_argument("--tp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models, shape = zoo()
    names = args.names or list(models)
    if args.tp_worker:
        _tp_worker(names, args.steps)
        return
    payload = {
        "settings": {"fixtures": names, "input_shape": list(shape), "steps": args.steps},
        "environment": environment(),
        "netfit": {name: netfit_side(models[name], shape) for name in names},
    }
    if not args.no_tp:
        payload["torch_pruning"] = run_tp(names, args.steps)
    markdown = to_markdown(payload)
    write_results("user_models", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
