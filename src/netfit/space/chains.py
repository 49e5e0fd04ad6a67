"""Markov chains of different lengths evaluated together: one padded tensor, one running product.

DNA's width and depth gates are chains: a unit (or block) is kept with its own probability given that the one
before it is, so P(kept >= k) is a running product along the chain. Evaluated chain by chain, a supernet with
20 gated groups and 4 stages costs about 24 ``cumprod`` calls per evaluation and ten operations each in their
backward: on a GPU, where a step of these small networks costs its kernel launches rather than its MACs, the
expected cost alone issued more operations than a dense training step (measured on a ResNet-18). Laid out as
one (chains, longest) tensor, padded with ones, every chain's products take one ``cumprod``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Chains:
    """Chains of ``lengths`` conditional probabilities laid out one after another in a flat vector (as DNA's
    logits are), evaluated in a padded (chains, longest) layout.

    Example:
        >>> chains = Chains([2, 1])
        >>> chains.products(torch.tensor([0.5, 0.5, 0.2]))
        tensor([[0.5000, 0.2500],
                [0.2000, 0.0000]])
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = list(lengths)
        self.longest = max(self.lengths, default=0)
        n = sum(self.lengths)
        # each padded position's place in the flat vector, or n: the 1 appended after it
        place = torch.full((len(self.lengths), self.longest), n, dtype=torch.long)
        start = 0
        for c, length in enumerate(self.lengths):
            place[c, :length] = torch.arange(start, start + length)
            start += length
        self.place = place.flatten()
        self.valid = place < n  # (chains, longest)
        self.flat = self.valid.flatten().nonzero().squeeze(1)  # the padded positions of the flat vector, in order
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def products(self, cond: torch.Tensor) -> torch.Tensor:
        """(..., n) conditional probabilities -> (..., chains, longest) running products along each chain (the
        probability of reaching each link), 0 past a chain's end. The products of a chain's links are its own
        chain's ``cumprod`` to the bit (the padding multiplies by 1 after it and is then zeroed)."""
        place, valid, _ = self._indices(cond.device)
        padded = torch.cat([cond, cond.new_ones(*cond.shape[:-1], 1)], -1)[..., place]
        products = padded.unflatten(-1, (len(self.lengths), self.longest)).cumprod(-1)
        return products * valid.to(products.dtype)

    def flatten(self, padded: torch.Tensor) -> torch.Tensor:
        """(..., chains, longest) -> (..., n): the links in the flat vector's order (padding dropped)."""
        return padded.flatten(-2)[..., self._indices(padded.device)[2]]

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The index tensors on ``device``, copied there once (a step evaluates the chains several times)."""
        if device not in self._on:
            self._on[device] = (self.place.to(device), self.valid.to(device), self.flat.to(device))
        return self._on[device]
