"""The base of every part of the VGateDeployment's spec: the CRD's schema is generated from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SchemaModel(BaseModel):
    """A part of the VGateDeployment: the CRD's schema is generated from these models (crd.py),
    each field's docstring becoming its description (``kubectl explain``)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )
