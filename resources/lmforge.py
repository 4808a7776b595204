"""The Dagster resource that carries lmforge's settings: where ``LMFORGE_HOME`` is.

Key design choice: the environment is read when the resource is *used*, not when a module is imported
(``home`` empty means ``$LMFORGE_HOME`` or ``~/.lmforge`` at run time), so tests and the UI point the same
code at different homes without reloading modules.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from .catalog import Catalog
from .store import ArtifactStore, default_home


class LmforgeResource(dg.ConfigurableResource):
    home: str = ""
    """Absolute path of LMFORGE_HOME; empty = $LMFORGE_HOME, else ~/.lmforge (resolved at run time)."""

    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve() if self.home else default_home()

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.home_path())

    def catalog(self) -> Catalog:
        return Catalog(self.home_path())
