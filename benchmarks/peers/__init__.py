"""Peer tools (Torch-Pruning, NNI, ModelOpt FastNAS) run through their public APIs, each in its own venv.

Their pins conflict (nni wants typeguard<4.1.3, modelopt needs undeclared extras), so every tool gets
``.venv-peers/<tool>`` with the CPU torch, netfit itself and the tool. Inside that venv a peer is just another
netfit method (``benchmarks.peers.method.Peer``): the tool prunes the seed to the MACs target, then netfit
fine-tunes, measures (its own cost model, never the tool's count), evaluates and writes the run directory
exactly as for its own methods.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venv-peers"
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Tool:
    """How one peer installs and which module adapts it (see ../shared/design/peers.md for the why)."""

    module: str  # benchmarks.peers.<module> exports prune(job) -> nn.Module
    variants: tuple[str, ...]
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()  # installed with --no-deps (their declared deps would pull torchvision)


TOOLS: dict[str, Tool] = {
    "torch_pruning": Tool(
        "tp_peer",
        ("l1-uniform", "l1-global", "l2-uniform", "l2-global", "taylor-uniform", "taylor-global"),
        ("torch-pruning==1.6.1",),
    ),
    "nni": Tool("nni_peer", ("l1", "l2", "fpgm"), ("nni==3.0",)),
    "modelopt": Tool(
        "modelopt_peer",
        ("fastnas",),
        ("nvidia-modelopt==0.47.0", "requests", "huggingface_hub"),
        ("torchprofile==0.0.4",),
    ),
}


def venv_python(tool: str) -> Path:
    return VENVS / tool / "bin" / "python"


def setup(tool: str, *, quiet: bool = True) -> Path:
    """Create ``.venv-peers/<tool>`` once (CPU torch first, then netfit, then the tool); returns its python."""
    spec = TOOLS[tool]
    python = venv_python(tool)
    marker = python.parent.parent / ".netfit-ready"
    if marker.exists():
        return python
    q = ["-q"] if quiet else []
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(python.parent.parent)], check=True)
    pip = [str(python), "-m", "pip", "install", *q]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[data]"], check=True)
    subprocess.run([*pip, *spec.requirements, f"--constraint={_constraints()}"], check=True)
    if spec.no_deps:
        subprocess.run([*pip, "--no-deps", *spec.no_deps], check=True)
    marker.write_text("ok\n")
    return python


def _constraints() -> Path:
    """Keep every tool from replacing the CPU torch build."""
    path = VENVS / "constraints.txt"
    VENVS.mkdir(exist_ok=True)
    path.write_text(f"{TORCH}\n")
    return path
