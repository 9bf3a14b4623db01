"""Merge one tensor in two passes: global statistics first, then row chunk by row chunk.

A *plan* is what :mod:`.methods` needs for one output tensor once its statistics are known; its
``merge_rows(start, stop)`` returns the merged rows in the compute dtype. Inputs are
:class:`TensorSource` readers, so the engine streams them from safetensors while the tests feed
in-memory tensors through exactly the same code.

Peak memory per tensor: a row chunk of every input, plus (only for TIES / BreadCrumbs, whose
magnitude ranks are global) one full-size ``|delta|`` buffer for one input at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mediflow.train.merge import methods
from mediflow.train.merge.catalog import MethodSpec

Rows = tuple[int, int]
Parameters = dict[str, Any]


@dataclass(frozen=True)
class TensorSource:
    """One input's tensor, read by rows along dim 0 and converted to the compute dtype.

    ``read(start, stop)`` must return a fresh tensor (the plans work in place on it). When the
    merge has a ``dtype``, inputs are first rounded to it, as mergekit does, then computed on in
    ``compute_dtype``.
    """

    shape: tuple[int, ...]
    read: Callable[[int, int], torch.Tensor]
    compute_dtype: torch.dtype = torch.float32
    round_to: torch.dtype | None = None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        tensor = self.read(start, stop)
        if self.round_to is not None:
            tensor = tensor.to(self.round_to)
        return tensor.to(self.compute_dtype)

    @classmethod
    def in_memory(cls, tensor: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> TensorSource:
        """A source over a tensor already in memory (tests, the Python API)."""
        if tensor.dim() == 0:
            return cls((), lambda start, stop: tensor.clone(), compute_dtype)
        return cls(tuple(tensor.shape), lambda start, stop: tensor[start:stop].clone(), compute_dtype)


def row_chunks(shape: tuple[int, ...], chunk_elements: int) -> list[Rows]:
    """Row ranges covering a tensor with about ``chunk_elements`` elements each.

    0-d and 1-d tensors (norms, biases: small) are one chunk, so that per-row statistics
    (Model Stock's ``filter_wise``) never see a partial row.
    """
    if len(shape) <= 1:
        return [(0, shape[0] if shape else 1)]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, chunk_elements // per_row)
    return [(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


class TensorPlan(Protocol):
    def merge_rows(self, start: int, stop: int) -> torch.Tensor: ...


def plan_tensor(
    method: MethodSpec,
    sources: Sequence[TensorSource],
    base_index: int | None,
    shared: Parameters,
    per_input: Sequence[Parameters],
    chunks: Sequence[Rows],
    make_generator: Callable[[int], torch.Generator],
) -> TensorPlan:
    """Run the statistics pass for one tensor and return the plan that merges its rows.

    ``per_input[i]`` holds input ``i``'s own parameters (``weight``, ``density``, ``gamma``);
    ``make_generator(i)`` gives a freshly seeded generator for input ``i``'s random drops (DARE),
    called once per pass so both passes draw the same mask.
    """
    if method.family == "linear":
        return _LinearPlan(sources, [p["weight"] for p in per_input], shared["normalize"])
    assert base_index is not None, "methods with a base are validated at config time"
    base = sources[base_index]
    others = [i for i in range(len(sources)) if i != base_index]
    if method.family == "slerp":
        (other,) = others
        stats = methods.SlerpStatistics()
        for start, stop in chunks:
            stats = stats.add(base.rows(start, stop), sources[other].rows(start, stop))
        return _SlerpPlan(base, sources[other], methods.slerp_coefficients(shared["t"], stats))
    if method.family == "model_stock":
        return _model_stock_plan(base, [sources[i] for i in others], shared["filter_wise"], chunks)
    sparsifiers = [_sparsifier(method, base, sources[i], per_input[i], shared["rescale"], chunks, functools.partial(make_generator, i)) for i in others]
    return _TaskVectorPlan(
        base=base,
        others=[sources[i] for i in others],
        sparsifiers=sparsifiers,
        weights=[per_input[i]["weight"] for i in others],
        sign_consensus=method.sign_consensus,
        normalize=shared["normalize"],
        scale=shared["lambda"],
    )


@dataclass(frozen=True)
class _LinearPlan:
    sources: Sequence[TensorSource]
    weights: Sequence[float]
    normalize: bool

    def merge_rows(self, start: int, stop: int) -> torch.Tensor:
        return methods.linear_combine([s.rows(start, stop) for s in self.sources], self.weights, normalize=self.normalize)


@dataclass(frozen=True)
class _SlerpPlan:
    base: TensorSource
    other: TensorSource
    coefficients: tuple[float, float]

    def merge_rows(self, start: int, stop: int) -> torch.Tensor:
        c_base, c_other = self.coefficients
        return c_base * self.base.rows(start, stop) + c_other * self.other.rows(start, stop)


@dataclass(frozen=True)
class _ModelStockPlan:
    base: TensorSource
    others: Sequence[TensorSource]
    ratio: torch.Tensor | None  # None: filter-wise, computed per row chunk

    def merge_rows(self, start: int, stop: int) -> torch.Tensor:
        base_rows = self.base.rows(start, stop)
        other_rows = [s.rows(start, stop) for s in self.others]
        ratio = self.ratio
        if ratio is None:
            ratio = methods.model_stock_ratio(methods.offset_gram(base_rows, other_rows, per_row=True))
        return methods.model_stock_combine(base_rows, other_rows, ratio)


def _model_stock_plan(base: TensorSource, others: Sequence[TensorSource], filter_wise: bool, chunks: Sequence[Rows]) -> _ModelStockPlan:
    if filter_wise:
        return _ModelStockPlan(base, others, None)
    gram = torch.zeros(len(others), len(others), dtype=torch.float64)
    for start, stop in chunks:
        gram += methods.offset_gram(base.rows(start, stop), [s.rows(start, stop) for s in others], per_row=False)
    return _ModelStockPlan(base, others, methods.model_stock_ratio(gram))


@dataclass
class _Sparsifier:
    """How one input's task vector is sparsified: a magnitude band or a seeded random drop, then
    a rescale factor (1 unless ``rescale``). Holds the running state of the merge pass: the random
    stream and how many entries tied at the band's edges were already seen."""

    band: methods.KeepBand | None
    density: float
    make_generator: Callable[[], torch.Generator] | None
    factor: float
    generator: torch.Generator | None = None
    cursor: methods.BandCursor | None = None

    def restart(self) -> None:
        """Rewind to the first chunk, so the merge pass draws the masks the statistics pass drew."""
        if self.band is not None:
            self.cursor = methods.BandCursor(self.band)
        if self.make_generator is not None:
            self.generator = self.make_generator()

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        """Sparsify and rescale the next chunk of the task vector, in place."""
        if self.cursor is not None and not self.cursor.band.keeps_everything:
            delta.masked_fill_(self.cursor.dropped(delta.abs()), 0.0)
        elif self.generator is not None:
            delta.masked_fill_(~methods.random_mask(delta.shape, self.density, self.generator), 0.0)
        if self.factor != 1.0:
            delta.mul_(self.factor)
        return delta


def _sparsifier(
    method: MethodSpec,
    base: TensorSource,
    other: TensorSource,
    parameters: Parameters,
    rescale: bool,
    chunks: Sequence[Rows],
    make_generator: Callable[[], torch.Generator],
) -> _Sparsifier:
    density = parameters["density"]
    if method.sparsification is None or density >= 1:
        return _Sparsifier(None, density, None, 1.0)
    if method.sparsification == "random":
        factor = 1.0
        if rescale:
            generator = make_generator()
            l1_before = l1_after = 0.0
            for start, stop in chunks:
                delta = other.rows(start, stop).sub_(base.rows(start, stop))
                kept = methods.random_mask(delta.shape, density, generator)
                l1_before += float(delta.abs().sum(dtype=torch.float64))
                l1_after += float(delta.abs().masked_fill_(~kept, 0.0).sum(dtype=torch.float64))
            factor = methods.l1_rescale_factor(l1_before, l1_after)
        return _Sparsifier(None, density, make_generator, factor)
    # ``magnitudes`` is this function's scratch buffer: the selection may reorder it, and the L1
    # sums below do not depend on the order.
    magnitudes = _delta_magnitudes(base, other, chunks)
    if method.sparsification == "magnitude":
        band = methods.magnitude_band(magnitudes, density, reorder_in_place=True)
    else:
        band = methods.outlier_band(magnitudes, density, parameters["gamma"], reorder_in_place=True)
    factor = 1.0
    if rescale:
        l1_before = float(magnitudes.sum(dtype=torch.float64))
        l1_after = float(magnitudes.masked_fill_(~methods.band_mask(magnitudes, band), 0.0).sum(dtype=torch.float64))
        factor = methods.l1_rescale_factor(l1_before, l1_after)
    return _Sparsifier(band, density, None, factor)


def _delta_magnitudes(base: TensorSource, other: TensorSource, chunks: Sequence[Rows]) -> torch.Tensor:
    """The flat ``|other - base|`` of the whole tensor, filled chunk by chunk."""
    magnitudes = torch.empty(math.prod(base.shape), dtype=base.compute_dtype)
    position = 0
    for start, stop in chunks:
        other_rows, base_rows = other.rows(start, stop), base.rows(start, stop)
        target = magnitudes[position : position + other_rows.numel()].view(other_rows.shape)
        torch.sub(other_rows, base_rows, out=target).abs_()  # straight into the buffer: no temporary
        position += other_rows.numel()
    return magnitudes


@dataclass
class _TaskVectorPlan:
    base: TensorSource
    others: Sequence[TensorSource]
    sparsifiers: Sequence[_Sparsifier]
    weights: Sequence[float]
    sign_consensus: bool
    normalize: bool
    scale: float

    def __post_init__(self) -> None:
        for sparsifier in self.sparsifiers:
            sparsifier.restart()

    def merge_rows(self, start: int, stop: int) -> torch.Tensor:
        base_rows = self.base.rows(start, stop)
        deltas = []
        for source, sparsifier, weight in zip(self.others, self.sparsifiers, self.weights, strict=True):
            delta = sparsifier.apply(source.rows(start, stop).sub_(base_rows))
            deltas.append(delta.mul_(weight))
        return methods.task_vector_combine(
            base_rows,
            deltas,
            self.weights,
            sign_consensus=self.sign_consensus,
            normalize=self.normalize,
            scale=self.scale,
        )


def merge_tensors(
    method: MethodSpec,
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None = None,
    shared: Parameters | None = None,
    per_input: Sequence[Parameters] | None = None,
    seed: int = 0,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Merge in-memory tensors with a method (defaults filled in), through the streaming code path.

    The per-tensor entry point of the Python API; ``shared``/``per_input`` take the same names as
    the YAML ``parameters``.
    """
    shared = {p.name: p.default for p in method.parameters if p.scope == "shared"} | dict(shared or {})
    per_input = [{p.name: p.default for p in method.parameters if p.scope != "shared"} | dict(values) for values in (per_input or [{} for _ in tensors])]
    sources = [TensorSource.in_memory(t) for t in tensors]
    chunks = row_chunks(tuple(tensors[0].shape), chunk_elements)
    plan = plan_tensor(method, sources, base_index, shared, per_input, chunks, lambda i: torch.Generator().manual_seed(seed * 1000 + i))
    parts = [plan.merge_rows(start, stop) for start, stop in chunks]
    return parts[0] if tensors[0].dim() == 0 else torch.cat(parts)
