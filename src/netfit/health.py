"""Is a trained network sound? The checks that keep a broken candidate from passing as a result.

A network whose accuracy sits near chance has not learned (its training diverged, or it is too small to learn
anything); one far below the seed lost most of what the seed knew. Both are flagged wherever results are shown
and never selected over a sound candidate; a fine-tune that ends near chance is retried (``methods.common``).
"""

from __future__ import annotations

NEAR_CHANCE = 0.1  # within this fraction of the way from chance to perfect accuracy
FAR_BELOW_SEED = 0.5  # lost more than this fraction of the seed's margin over chance


def chance(num_classes: int) -> float:
    """Accuracy of guessing uniformly among ``num_classes`` classes."""
    return 1.0 / max(1, num_classes)


def near_chance(accuracy: float, num_classes: int) -> bool:
    """True when ``accuracy`` (in [0, 1]) is within NEAR_CHANCE of chance, on the scale from chance to 1."""
    base = chance(num_classes)
    return accuracy <= base + NEAR_CHANCE * (1 - base)


def fell_far_below(accuracy: float, reference: float, num_classes: int) -> bool:
    """True when ``accuracy`` lost more than FAR_BELOW_SEED of ``reference``'s margin over chance."""
    base = chance(num_classes)
    return reference > base and reference - accuracy > FAR_BELOW_SEED * (reference - base)


def candidate_warning(accuracy: float, seed_accuracy: float | None, num_classes: int) -> str | None:
    """Why a candidate is not sound, in one sentence, or None when it is."""
    base = chance(num_classes)
    if near_chance(accuracy, num_classes):
        return (
            f"near chance: {accuracy:.1%} test accuracy (chance {base:.1%}); its training diverged or the network "
            "is too small to learn this task"
        )
    if seed_accuracy is not None and fell_far_below(accuracy, seed_accuracy, num_classes):
        return (
            f"far below the seed: {accuracy:.1%} vs the seed's {seed_accuracy:.1%} (lost more than half of the "
            "seed's margin over chance); train it longer or choose a larger budget"
        )
    return None


__all__ = ["FAR_BELOW_SEED", "NEAR_CHANCE", "candidate_warning", "chance", "fell_far_below", "near_chance"]
