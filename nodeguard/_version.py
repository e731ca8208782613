"""nodeguard's version: the one place it is written (pyproject.toml reads it from here at build time).

A literal, not importlib.metadata: `nodeguard version` and the pod's probe would pay ~30 ms of
imports (email, zipfile, csv...) to look up a string the build put there from this very line.
"""

__version__ = "0.1.0"
