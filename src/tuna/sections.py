"""The base of every config section: unknown keys are errors, and assignments are validated too.

Each component that has knobs (a method, an objective, the data stage) declares them as a `Section` in
its own module; `tuna.config` assembles the sections into the `Recipe`.
"""
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
