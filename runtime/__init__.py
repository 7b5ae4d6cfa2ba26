"""Shared runtime for molrecipes: distributed setup, precision, logging, checkpoints, meters.

Model packages import from here; nothing here imports a model package.
"""

__version__ = "0.1.0"
