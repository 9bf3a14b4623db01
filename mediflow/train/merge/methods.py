"""The merge maths, as small pure functions over tensors.

Every method is split into the few *global statistics* it needs from a whole tensor (magnitude
thresholds, norms, dot products, a Gram matrix) and an *elementwise combination* that works on any
row chunk once those statistics are known. The streaming engine (:mod:`.tensor_plans`) computes the
statistics in a first pass and then combines chunk by chunk, which is why a merge never holds whole
models, nor even all inputs of one large tensor at once. Applied to whole tensors, the same
functions are the textbook methods, and the tests check them in closed form.

Semantics follow mergekit 0.1.5, so that a config gives the same model with either tool (the tests
compare every tensor): which magnitude ranks a density/gamma keeps, the l1 rescale, the TIES sign
election (sign of the weighted sum), the divisor used by ``normalize``, SLERP's linear fallback when
``|cos| > 0.9995``, Model Stock's ratio. Inputs are expected in the compute dtype (float32, or
float64 when the merge dtype is float64); the callers cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: SLERP interpolates linearly when the two directions are this close to (anti)parallel.
SLERP_DOT_THRESHOLD = 0.9995
#: Norms at or below this count as zero vectors in SLERP (their direction is undefined).
SLERP_NORM_EPS = 1e-8
#: l1 norms below this disable rescaling after a sparsification (nothing meaningful to match).
RESCALE_EPS = 1e-7


@dataclass(frozen=True)
class KeepBand:
    """Which entries of a task vector a magnitude sparsification keeps, without storing a mask.

    Entries are ranked by magnitude, ties by position (a stable order), and a contiguous range of
    ranks is kept. As thresholds: magnitudes strictly between ``low`` and ``high`` are kept; of the
    entries equal to ``low`` (in position order) those with ordinal ``>= low_skip``, and of those
    equal to ``high`` the first ``high_take``. That lets the merge pass rebuild the mask chunk by
    chunk from a few numbers. (mergekit breaks magnitude ties with an unstable sort, so on exactly
    tied magnitudes at the edge of the band the two tools may keep different, equal-sized, entries.)
    """

    low: float
    high: float
    low_skip: int = 0
    high_take: int = 0

    @classmethod
    def everything(cls) -> KeepBand:
        return cls(-math.inf, math.inf)

    @classmethod
    def nothing(cls) -> KeepBand:
        return cls(math.inf, -math.inf)

    @property
    def keeps_everything(self) -> bool:
        return self.low == -math.inf and self.high == math.inf


def rank_band(magnitudes: torch.Tensor, first: int, stop: int, *, reorder_in_place: bool = False) -> KeepBand:
    """The band keeping stable ascending ranks ``[first, stop)`` of a flat magnitude tensor.

    ``reorder_in_place`` lets the selection permute ``magnitudes`` instead of copying it: for a
    caller whose buffer is scratch (the streaming merge), that halves the peak memory of a tensor.
    """
    if stop <= first:
        return KeepBand.nothing()
    # numpy's introselect works in place; torch.kthvalue copies the values and allocates int64
    # indices (twice the size of float32 values) per call, which would dominate a streaming merge.
    edges = [first] + ([stop - 1] if stop < magnitudes.numel() else [])
    exact_dtype = torch.float64 if magnitudes.dtype == torch.float64 else torch.float32
    values = magnitudes.detach().to(exact_dtype).numpy()
    if magnitudes.dtype == exact_dtype and not reorder_in_place:  # else `values` is scratch or a copy
        values = values.copy()
    values.partition(edges)
    low = float(values[first])
    high = float(values[stop - 1]) if stop < magnitudes.numel() else math.inf
    del values
    if high == math.inf:
        return KeepBand(low, math.inf, first - int(torch.count_nonzero(magnitudes < low)), 0)
    return KeepBand(low, high, first - int(torch.count_nonzero(magnitudes < low)), stop - int(torch.count_nonzero(magnitudes < high)))


def magnitude_band(magnitudes: torch.Tensor, density: float, *, reorder_in_place: bool = False) -> KeepBand:
    """TIES sparsification: keep the ``max(1, int(density * n))`` largest magnitudes.

    ``magnitudes`` is the flat ``|delta|`` of the whole tensor. ``density >= 1`` keeps everything,
    ``density <= 0`` nothing.
    """
    count = magnitudes.numel()
    if density >= 1:
        return KeepBand.everything()
    if density <= 0 or count == 0:
        return KeepBand.nothing()
    keep = max(1, int(density * count))
    return rank_band(magnitudes, count - keep, count, reorder_in_place=reorder_in_place)


def outlier_band(magnitudes: torch.Tensor, density: float, gamma: float, *, reorder_in_place: bool = False) -> KeepBand:
    """BreadCrumbs sparsification: drop the ``gamma`` fraction of largest magnitudes, then the
    smallest ones, keeping ``int(density * n)`` entries.

    When ``density + gamma > 1`` the outlier cut shrinks so that the density is still met (so a
    gamma above 1, as in MediPhi's published config, keeps the *smallest* ``density`` fraction).
    """
    count = magnitudes.numel()
    if density >= 1:
        return KeepBand.everything()
    keep = int(density * count)
    if keep <= 0 or count == 0:
        return KeepBand.nothing()
    dropped_small = max(0, count - keep - int(gamma * count))
    return rank_band(magnitudes, dropped_small, dropped_small + keep, reorder_in_place=reorder_in_place)


def band_mask(magnitudes: torch.Tensor, band: KeepBand, low_ties_before: int = 0, high_ties_before: int = 0) -> torch.Tensor:
    """Boolean mask of the kept entries of one chunk of magnitudes.

    ``low_ties_before``/``high_ties_before`` count the entries equal to ``band.low``/``band.high``
    in the chunks before this one (tie ordinals run over the whole tensor).
    """
    if band.keeps_everything:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    flat = magnitudes.reshape(-1)
    keep = (flat > band.low) & (flat < band.high)
    at_low = flat == band.low
    low_ordinal = torch.cumsum(at_low, dim=0) - 1 + low_ties_before
    low_kept = at_low & (low_ordinal >= band.low_skip)
    if band.low == band.high:
        keep |= low_kept & (low_ordinal < band.high_take)
    else:
        at_high = flat == band.high
        high_ordinal = torch.cumsum(at_high, dim=0) - 1 + high_ties_before
        keep |= low_kept | (at_high & (high_ordinal < band.high_take))
    return keep.reshape(magnitudes.shape)


@dataclass
class BandCursor:
    """Applies a :class:`KeepBand` to one tensor's chunks in position order, keeping the running tie
    counts of :func:`band_mask`, and taking the cheap route wherever tie ordinals cannot matter.

    Ordinals only matter in a chunk where the kept ties at an edge begin or end: before ``low_skip``
    ties at ``low`` have gone by, and until ``high_take`` ties at ``high`` have. Every other chunk's
    mask is one or two comparisons (just ``|d| < low`` for TIES) instead of the general rule's
    cumulative sums; the mask is the same. Once an edge is settled its count stops being kept
    exact: it only ever gets compared with ``low_skip`` / ``high_take`` again.
    """

    band: KeepBand
    low_seen: int = 0
    high_seen: int = 0

    def dropped(self, magnitudes: torch.Tensor) -> torch.Tensor:
        """Which entries of the next chunk of ``|delta|`` the band drops."""
        band = self.band
        if band.low > band.high:
            return torch.ones_like(magnitudes, dtype=torch.bool)
        single_value = band.low == band.high
        low_state, low_ties = ("mixed", None) if single_value else self._low_edge(magnitudes)
        high_state, high_ties = ("mixed", None) if single_value else self._high_edge(magnitudes)
        if "mixed" in (low_state, high_state):
            kept = band_mask(magnitudes, band, self.low_seen, self.high_seen)
            self.low_seen += low_ties if low_ties is not None else _count_equal(magnitudes, band.low)
            self.high_seen += high_ties if high_ties is not None else _count_equal(magnitudes, band.high)
            return kept.logical_not_()
        assert low_ties is not None and high_ties is not None  # counted by the edges when not mixed
        self.low_seen += low_ties
        self.high_seen += high_ties
        drop = magnitudes < band.low if low_state == "kept" else magnitudes <= band.low
        if high_state == "kept":
            drop |= magnitudes > band.high
        elif high_state == "dropped":
            drop |= magnitudes >= band.high
        return drop

    def _low_edge(self, magnitudes: torch.Tensor) -> tuple[str, int]:
        """Are this chunk's ties at ``low`` all ``kept``, all ``dropped``, or ``mixed``? (+ how many were counted)"""
        if self.low_seen >= self.band.low_skip:
            return "kept", 0
        ties = _count_equal(magnitudes, self.band.low)
        return ("dropped" if self.low_seen + ties <= self.band.low_skip else "mixed"), ties

    def _high_edge(self, magnitudes: torch.Tensor) -> tuple[str, int]:
        """The same for ``high``; ``open`` when there is no upper edge."""
        if self.band.high == math.inf:
            return "open", 0
        if self.high_seen >= self.band.high_take:
            return "dropped", 0
        ties = _count_equal(magnitudes, self.band.high)
        return ("kept" if self.high_seen + ties <= self.band.high_take else "mixed"), ties


def _count_equal(values: torch.Tensor, value: float) -> int:
    return int(torch.count_nonzero(values == value))


def random_mask(shape: Sequence[int], density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop: keep each entry independently with probability ``density``."""
    if density >= 1:
        return torch.ones(tuple(shape), dtype=torch.bool)
    return torch.rand(tuple(shape), generator=generator) < density


def l1_rescale_factor(l1_before: float, l1_after: float) -> float:
    """The factor that gives a sparsified task vector back its l1 norm (DARE's rescale)."""
    if l1_before < RESCALE_EPS or l1_after < RESCALE_EPS:
        return 1.0
    return l1_before / l1_after


def linear_combine(tensors: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool) -> torch.Tensor:
    """Weighted sum of the inputs, divided by the sum of the weights when ``normalize``."""
    result = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights, strict=True):
        result.add_(tensor, alpha=weight)
    if normalize:
        result.div_(sum(weights))
    return result


def task_vector_combine(
    base: torch.Tensor,
    weighted_deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    sign_consensus: bool,
    normalize: bool,
    scale: float,
) -> torch.Tensor:
    """Add the (already sparsified and weighted) task vectors to ``base``.

    With ``sign_consensus`` (TIES), each entry elects the sign of the sum of the weighted deltas
    (ties go to +), and only deltas of that sign are added; ``normalize`` then divides by the sum of
    the weights of the deltas that agreed at that entry. Without it, ``normalize`` divides by the sum
    of all weights. ``scale`` is mergekit's ``lambda``.
    """
    if not weighted_deltas:
        return base.clone()
    if sign_consensus:
        positive_majority = torch.stack(list(weighted_deltas)).sum(dim=0) >= 0
        mixed = torch.zeros_like(base)
        agreeing_weight = torch.zeros_like(base)  # only `normalize` divides by it
        for delta, weight in zip(weighted_deltas, weights, strict=True):
            agrees = torch.where(positive_majority, delta > 0, delta < 0)
            mixed.add_(torch.where(agrees, delta, 0.0))
            if normalize:
                agreeing_weight.add_(agrees.to(base.dtype), alpha=weight)
        agreeing_weight[agreeing_weight == 0] = 1
        divisor: torch.Tensor | float = agreeing_weight
    else:
        mixed = torch.stack(list(weighted_deltas)).sum(dim=0)
        total_weight = sum(weights)
        divisor = total_weight if abs(total_weight) >= 1e-8 else 1.0
    if normalize:
        mixed = mixed / divisor
    if scale != 1:
        mixed = mixed * scale
    return base + mixed


@dataclass(frozen=True)
class SlerpStatistics:
    """What SLERP needs from the whole tensor: squared norms of both inputs and their dot product."""

    base_sq_norm: float = 0.0
    other_sq_norm: float = 0.0
    dot: float = 0.0

    def add(self, base_chunk: torch.Tensor, other_chunk: torch.Tensor) -> SlerpStatistics:
        """Accumulate one chunk (sums in float64, so chunking does not change the result)."""

        def total(x: torch.Tensor, y: torch.Tensor) -> float:
            return float((x * y).sum(dtype=torch.float64))

        return SlerpStatistics(
            self.base_sq_norm + total(base_chunk, base_chunk),
            self.other_sq_norm + total(other_chunk, other_chunk),
            self.dot + total(base_chunk, other_chunk),
        )


def slerp_coefficients(t: float, stats: SlerpStatistics) -> tuple[float, float]:
    """Coefficients ``(c_base, c_other)`` of ``slerp(t) = c_base * base + c_other * other``.

    The angle is that between the two flattened tensors; near-(anti)parallel pairs fall back to
    linear interpolation, and zero vectors count as unit-norm (their direction is undefined).
    """
    base_norm = math.sqrt(stats.base_sq_norm)
    other_norm = math.sqrt(stats.other_sq_norm)
    base_norm = base_norm if base_norm > SLERP_NORM_EPS else 1.0
    other_norm = other_norm if other_norm > SLERP_NORM_EPS else 1.0
    cos = min(1.0, max(-1.0, stats.dot / (base_norm * other_norm)))
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two whole tensors: ``t = 0`` gives ``base``, ``t = 1`` ``other``."""
    c_base, c_other = slerp_coefficients(t, SlerpStatistics().add(base, other))
    return c_base * base + c_other * other


def offset_gram(base: torch.Tensor, others: Sequence[torch.Tensor], *, per_row: bool) -> torch.Tensor:
    """Gram matrix of the offsets ``other_i - base`` (accumulated in float64): ``[N, N]``, or
    ``[..., N, N]`` with one matrix per slice along the last dimension when ``per_row`` (Model
    Stock's ``filter_wise``; a 1-d tensor is one row)."""
    offsets = [(other - base).double() for other in others]
    if per_row and base.dim() == 1:
        offsets = [offset.unsqueeze(0) for offset in offsets]
    reduce_dims = (-1,) if per_row else tuple(range(base.dim()))
    shape = offsets[0].shape[:-1] if per_row else ()
    gram = torch.empty(*shape, len(others), len(others), dtype=torch.float64)
    for i, first in enumerate(offsets):
        for j in range(i, len(offsets)):
            gram[..., i, j] = gram[..., j, i] = (first * offsets[j]).sum(dim=reduce_dims, dtype=torch.float64)
    return gram


def model_stock_ratio(gram: torch.Tensor) -> torch.Tensor:
    """Model Stock's interpolation ratio ``t = N cos / (1 + (N - 1) cos)`` from an offset Gram matrix.

    ``cos`` is the mean pairwise cosine between the offsets (norm products clamped at 1e-6); where
    the denominator vanishes there is no finite estimate and the base is kept (``t = 0``).
    """
    count = gram.shape[-1]
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).sqrt()
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    cosines = torch.stack([(gram[..., i, j] / (norms[..., i] * norms[..., j]).clamp(min=1e-6)).clamp(-1, 1) for i, j in pairs])
    cos = cosines.mean(dim=0)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, torch.zeros_like(cos), count * cos / torch.where(singular, 1.0, denominator))


def model_stock_combine(base: torch.Tensor, others: Sequence[torch.Tensor], ratio: torch.Tensor | float) -> torch.Tensor:
    """``ratio * mean(others) + (1 - ratio) * base``; ``ratio`` is a scalar or one value per row."""
    if isinstance(ratio, torch.Tensor):
        ratio = ratio.to(base.dtype)
        if ratio.dim() > 0:
            ratio = ratio.reshape(base.shape[:-1] + (1,)) if base.dim() > 1 else ratio.reshape(())
    average = sum(others) / len(others)
    return ratio * average + (1 - ratio) * base
