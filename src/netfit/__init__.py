"""netfit: fit a neural network to a compute budget."""

__version__ = "0.1.0"
