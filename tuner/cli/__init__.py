"""The `leukotune` command."""
from .main import main as main
