"""`python -m leukotune.tuner.cli`: the same as the `leukotune` command."""
import sys

from .main import main

sys.exit(main())
