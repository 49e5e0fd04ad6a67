"""netfit: fit a neural network to a compute budget.

Example:
    >>> import netfit
    >>> result = netfit.adapt("resnet18_cifar", data="digits", budget="50%", out="runs/r18")
    >>> model = netfit.load("runs/r18/" + result.summary["selected"])
"""

__version__ = "0.1.0"

from .api import adapt as adapt
from .api import train_model as train_model
from .budget import Budget as Budget
from .cost import count_cost as count_cost
from .data import load_data as load_data
from .export import load_model as load
from .export import save_model as save
from .models import create_model as create_model
from .models import list_models as list_models

__all__ = ["Budget", "adapt", "count_cost", "create_model", "list_models", "load", "load_data", "save", "train_model"]
