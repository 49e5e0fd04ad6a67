"""netfit: fit a neural network to a compute budget.

Example:
    >>> import netfit
    >>> result = netfit.adapt("resnet18_cifar", data="digits", budget="50%", out="runs/r18")
    >>> model = netfit.load("runs/r18/" + result.summary["selected"])
"""

__version__ = "0.1.0"

from .api import adapt as adapt  # noqa: E402
from .api import train_model as train_model  # noqa: E402
from .budget import Budget as Budget  # noqa: E402
from .cost import count_cost as count_cost  # noqa: E402
from .data import load_data as load_data  # noqa: E402
from .export import load_model as load  # noqa: E402
from .export import save_model as save  # noqa: E402
from .models import create_model as create_model  # noqa: E402
from .models import list_models as list_models  # noqa: E402

__all__ = ["Budget", "adapt", "count_cost", "create_model", "list_models", "load", "load_data", "save",
           "train_model"]
