"""Small test input shapes for the built-in models (shared by the parametrized model tests)."""


def input_shape(name: str) -> tuple[int, ...]:
    """One sample's shape: 1-D signals of length 40, 8x8 for cnn_small, 32x32 for *_cifar, 64x64 otherwise."""
    if name.endswith("1d"):
        return (1, 40)
    if name == "cnn_small":
        return (1, 8, 8)
    return (3, 32, 32) if name.endswith("_cifar") else (3, 64, 64)
