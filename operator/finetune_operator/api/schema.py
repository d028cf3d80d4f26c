"""The base of every API model: camelCase on the wire, strict, and carrying its own CEL rules.

The pydantic models are the single source of truth. The CRD schema (`crdgen`), the defaults, the
`kubectl explain` text and the validation the operator and the trainer run all come from them, so a
cross-field rule is declared once, as a `Rule` with both its CEL expression (enforced by the
kube-apiserver at admission) and its Python twin (enforced when the models validate a spec that
bypassed admission, e.g. a run spec handed to the trainer on a laptop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Rule:
    """A cross-field validation rule, enforced in CEL by the apiserver and in Python by the models.

    `field` names the offending field (relative to the model) so both the apiserver's error and the
    operator's `Validated=False` message point at it.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str | None = None

    def to_crd(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field:
            rule["fieldPath"] = f".{self.field}"
        return rule


def exactly_one(first: str, second: str, *, field: str | None = None, named: str = "") -> Rule:
    """The rule for two optional fields (Python names) of which one must be set: the message names both,
    as `named` + the camelCase name, and points at `field` (default: the first)."""
    camel_first, camel_second = to_camel(first), to_camel(second)
    return Rule(
        cel=f"has(self.{camel_first}) != has(self.{camel_second})",
        message=f"set exactly one of {named}{camel_first} and {named}{camel_second}",
        check=lambda m: (getattr(m, first) is None) != (getattr(m, second) is None),
        field=to_camel(field or first),
    )


def _add_rules_to_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_crd() for rule in rules]
    schema.pop("additionalProperties", None)


class ApiModel(BaseModel):
    """camelCase aliases, unknown fields rejected, rules from `__rules__` enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        json_schema_extra=_add_rules_to_schema,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in self.__rules__:
            if not rule.check(self):
                # The field travels in ctx so error messages can name it (see format_validation_error).
                raise PydanticCustomError("cross_field", rule.message, {"field": rule.field or ""})
        return self

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: aliases, no unset optionals (so merge patches never write nulls by accident)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _quantity_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # rejected by the pattern check with a clear message
    if isinstance(value, int | float):
        return str(value)
    return value


# Same pattern controller-gen emits for resource.Quantity.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity (`4`, `500m`, `16Gi`); integers are accepted as YAML users write them."""

FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes object passed through verbatim (e.g. a pod `affinity`); the apiserver validates it on the Job."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]
