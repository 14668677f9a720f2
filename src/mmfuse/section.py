"""The base of every config section (its own module so modality specs can declare config fields
without importing the whole config tree)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # extra="forbid": a misspelt field is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
