"""The merge methods as data: their parameters, defaults, input rules and which maths they use.

Names, parameter names, scopes and defaults are mergekit 0.1.5's, so a mergekit YAML means the same
thing here. A parameter's *scope* says where it is bound: ``shared`` once per tensor (``t``,
``normalize``...), ``input`` per input model including the base (linear's ``weight``), ``non_base``
per input model other than the base (``weight``/``density``/``gamma`` of the task-vector methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["shared", "input", "non_base"]
Family = Literal["linear", "task_vectors", "slerp", "model_stock"]
Sparsification = Literal["magnitude", "outliers", "random"]


@dataclass(frozen=True)
class ParameterSpec:
    """One method parameter; ``default=None`` means required."""

    name: str
    kind: type
    scope: Scope
    default: float | bool | None = None


@dataclass(frozen=True)
class MethodSpec:
    """What a method takes and which maths it runs (see :mod:`.tensor_plans`)."""

    name: str
    family: Family
    parameters: tuple[ParameterSpec, ...]
    needs_base: bool
    min_inputs: int = 1
    max_inputs: int | None = None
    sparsification: Sparsification | None = None
    sign_consensus: bool = False

    def parameter(self, name: str) -> ParameterSpec:
        return next(p for p in self.parameters if p.name == name)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)


def _task_vector_method(
    name: str,
    sparsification: Sparsification | None,
    *,
    sign_consensus: bool,
    normalize: bool,
    rescale: bool,
) -> MethodSpec:
    parameters = [
        ParameterSpec("int8_mask", bool, "shared", False),
        ParameterSpec("normalize", bool, "shared", normalize),
        ParameterSpec("rescale", bool, "shared", rescale),
        ParameterSpec("lambda", float, "shared", 1.0),
        ParameterSpec("weight", float, "non_base"),
        ParameterSpec("density", float, "non_base", 1.0),
    ]
    if sparsification == "outliers":
        parameters.append(ParameterSpec("gamma", float, "non_base", 0.01))
    return MethodSpec(
        name=name,
        family="task_vectors",
        parameters=tuple(parameters),
        needs_base=True,
        sparsification=sparsification,
        sign_consensus=sign_consensus,
    )


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="linear",
            family="linear",
            parameters=(ParameterSpec("weight", float, "input"), ParameterSpec("normalize", bool, "shared", True)),
            needs_base=False,
        ),
        _task_vector_method("task_arithmetic", None, sign_consensus=False, normalize=False, rescale=False),
        _task_vector_method("ties", "magnitude", sign_consensus=True, normalize=True, rescale=False),
        _task_vector_method("dare_ties", "random", sign_consensus=True, normalize=False, rescale=True),
        _task_vector_method("dare_linear", "random", sign_consensus=False, normalize=False, rescale=True),
        _task_vector_method("breadcrumbs", "outliers", sign_consensus=False, normalize=False, rescale=False),
        _task_vector_method("breadcrumbs_ties", "outliers", sign_consensus=True, normalize=False, rescale=False),
        MethodSpec(
            name="slerp",
            family="slerp",
            parameters=(ParameterSpec("t", float, "shared"),),
            needs_base=True,
            min_inputs=2,
            max_inputs=2,
        ),
        MethodSpec(
            name="model_stock",
            family="model_stock",
            parameters=(ParameterSpec("filter_wise", bool, "shared", False),),
            needs_base=True,
            min_inputs=3,
        ),
    )
}

#: Methods whose output does not depend on a random draw (the ones compared with mergekit).
DETERMINISTIC_METHODS = tuple(name for name, spec in METHODS.items() if spec.sparsification != "random")
