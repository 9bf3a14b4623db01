"""The merge maths on small tensors: closed forms, properties, chunking invariance."""

from __future__ import annotations

import math

import pytest
import torch

from mediflow.train.merge import METHODS, merge_tensors
from mediflow.train.merge import methods as m


def _merge(name: str, tensors, **kwargs) -> torch.Tensor:
    return merge_tensors(METHODS[name], tensors, **kwargs)


def test_magnitude_band_keeps_the_k_largest() -> None:
    delta = torch.tensor([0.1, -0.5, 0.3, -0.2])
    band = m.magnitude_band(delta.abs(), density=0.5)
    assert m.band_mask(delta.abs(), band).tolist() == [False, True, True, False]
    assert m.band_mask(delta.abs(), m.magnitude_band(delta.abs(), 0.01)).sum() == 1  # at least one survives
    assert not m.band_mask(delta.abs(), m.magnitude_band(delta.abs(), 0.0)).any()


def test_outlier_band_drops_the_top_gamma_then_the_smallest() -> None:
    magnitudes = torch.arange(1.0, 11.0)  # 1..10
    kept = m.band_mask(magnitudes, m.outlier_band(magnitudes, density=0.5, gamma=0.2))
    assert magnitudes[kept].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    # gamma above 1 (MediPhi's published 1.672): the outlier cut shrinks, the smallest survive
    kept = m.band_mask(magnitudes, m.outlier_band(magnitudes, density=0.3, gamma=1.672))
    assert magnitudes[kept].tolist() == [1.0, 2.0, 3.0]


def test_ties_at_the_band_edge_keep_exactly_the_requested_count_in_position_order() -> None:
    magnitudes = torch.tensor([2.0, 1.0, 2.0, 2.0, 3.0, 2.0])
    kept = m.band_mask(magnitudes, m.magnitude_band(magnitudes, density=0.5))  # 3 of 6
    assert kept.sum() == 3 and kept[4]
    assert kept.tolist() == [False, False, False, True, True, True]  # ties ranked by position
    # the same mask, rebuilt chunk by chunk with running tie counts
    band = m.magnitude_band(magnitudes, density=0.5)
    first = m.band_mask(magnitudes[:3], band)
    rest = m.band_mask(magnitudes[3:], band, int((magnitudes[:3] == band.low).sum()), int((magnitudes[:3] == band.high).sum()))
    assert torch.cat([first, rest]).tolist() == kept.tolist()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_band_cursor_gives_the_whole_tensor_mask_chunk_by_chunk(chunk: int) -> None:
    """The cursor's shortcuts (no tie ordinals where they cannot matter) change no kept entry."""
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.randint(0, 6, (1000,), generator=generator).float()  # heavy ties at every edge
    bands = [m.magnitude_band(magnitudes, d) for d in (0.001, 0.3, 0.5, 0.97)]
    bands += [m.outlier_band(magnitudes, d, g) for d, g in ((0.5, 0.1), (0.2, 0.5), (0.3, 1.672), (0.001, 0.0))]
    bands += [m.KeepBand.nothing(), m.KeepBand(2.0, 2.0, 10, 90)]  # a band inside one tied value
    for band in bands:
        cursor = m.BandCursor(band)
        dropped = torch.cat([cursor.dropped(part) for part in magnitudes.split(chunk)])
        assert torch.equal(dropped, ~m.band_mask(magnitudes, band)), band


def test_linear_closed_form_and_one_hot_weights() -> None:
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(_merge("linear", [a, b], per_input=[{"weight": 1.0}, {"weight": 0.0}]), a)
    merged = _merge("linear", [a, b], per_input=[{"weight": 2.0}, {"weight": 1.0}], shared={"normalize": False})
    torch.testing.assert_close(merged, 2 * a + b)
    merged = _merge("linear", [a, b], per_input=[{"weight": 2.0}, {"weight": 1.0}])
    torch.testing.assert_close(merged, (2 * a + b) / 3)


def test_task_arithmetic_closed_form_with_lambda() -> None:
    base, x, y = torch.randn(5), torch.randn(5), torch.randn(5)
    merged = _merge("task_arithmetic", [base, x, y], base_index=0, per_input=[{}, {"weight": 0.5}, {"weight": 0.25}], shared={"lambda": 2.0})
    torch.testing.assert_close(merged, base + 2.0 * (0.5 * (x - base) + 0.25 * (y - base)))


def test_ties_sign_election_and_normalize_by_agreeing_weights() -> None:
    base = torch.zeros(3)
    x, y = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-1.0, -1.0, 1.0])
    params = [{}, {"weight": 1.0}, {"weight": 1.0}]
    # weighted sums [0, -3, 4]: the tie at 0 elects +, so only x counts at entry 0
    torch.testing.assert_close(_merge("ties", [base, x, y], base_index=0, per_input=params), torch.tensor([1.0, -1.5, 2.0]))
    unnormalized = _merge("ties", [base, x, y], base_index=0, per_input=params, shared={"normalize": False})
    torch.testing.assert_close(unnormalized, torch.tensor([1.0, -3.0, 4.0]))


def test_ties_density_keeps_the_largest_change_of_each_expert() -> None:
    base = torch.zeros(4)
    x = torch.tensor([0.1, -0.5, 0.3, -0.2])
    merged = _merge("ties", [base, x], base_index=0, per_input=[{}, {"weight": 1.0, "density": 0.5}])
    torch.testing.assert_close(merged, torch.tensor([0.0, -0.5, 0.3, 0.0]))


def test_breadcrumbs_closed_form() -> None:
    base = torch.zeros(10)
    x = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
    merged = _merge("breadcrumbs", [base, x], base_index=0, per_input=[{}, {"weight": 0.5, "density": 0.5, "gamma": 0.2}])
    expected = torch.where((x.abs() >= 4) & (x.abs() <= 8), 0.5 * x, torch.zeros(10))
    torch.testing.assert_close(merged, expected)


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "dare_ties", "dare_linear", "model_stock"])
def test_merging_a_model_with_itself_gives_it_back(name: str) -> None:
    a = torch.randn(6, 5)
    count = 3
    per_input = [{"weight": 0.4, "density": 0.5, "gamma": 0.1}] * count
    base_index = None if name == "linear" else 0
    if base_index is not None:
        per_input = [{}] + per_input[1:]
    torch.testing.assert_close(_merge(name, [a] * count, base_index=base_index, per_input=per_input), a)


def test_slerp_endpoints_midpoint_and_linear_fallback() -> None:
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    torch.testing.assert_close(_merge("slerp", [a, b], base_index=0, shared={"t": 0.0}), a)
    torch.testing.assert_close(_merge("slerp", [a, b], base_index=0, shared={"t": 1.0}), b)
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = math.sqrt(0.5)
    torch.testing.assert_close(m.slerp(x, y, 0.5), torch.tensor([half, half]))
    nearly_parallel = torch.tensor([1.0, 1e-3])
    torch.testing.assert_close(m.slerp(x, nearly_parallel, 0.5), (x + nearly_parallel) / 2)


def test_model_stock_ratio_from_the_angle_between_fine_tunes() -> None:
    base = torch.zeros(2)
    orthogonal = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    torch.testing.assert_close(_merge("model_stock", [base, *orthogonal], base_index=0), base)  # cos 0 -> t 0
    same = [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])]
    torch.testing.assert_close(_merge("model_stock", [base, *same], base_index=0), same[0])  # cos 1 -> t 1
    # cos 1/2 with N = 2: t = 2 * 0.5 / 1.5 = 2/3 of the average
    sixty = [torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])]
    expected = (2 / 3) * (sixty[0] + sixty[1]) / 2
    torch.testing.assert_close(_merge("model_stock", [base, *sixty], base_index=0), expected)


def test_dare_is_seeded_and_rescale_restores_the_l1_norm() -> None:
    base, x = torch.zeros(1000), torch.randn(1000)
    params = [{}, {"weight": 1.0, "density": 0.3}]
    first = _merge("dare_linear", [base, x], base_index=0, per_input=params, seed=1)
    torch.testing.assert_close(first, _merge("dare_linear", [base, x], base_index=0, per_input=params, seed=1))
    assert not torch.equal(first, _merge("dare_linear", [base, x], base_index=0, per_input=params, seed=2))
    assert 200 < int((first != 0).sum()) < 400
    assert math.isclose(float(first.abs().sum()), float(x.abs().sum()), rel_tol=1e-5)
    full = _merge("dare_ties", [base, x], base_index=0, per_input=[{}, {"weight": 1.0, "density": 1.0}])
    torch.testing.assert_close(full, x)


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties", "dare_ties", "slerp", "model_stock", "linear"])
def test_row_chunking_does_not_change_the_result(name: str) -> None:
    torch.manual_seed(0)
    base = torch.randint(-3, 4, (12, 5)).float()  # many exactly tied magnitudes
    others = [torch.randint(-3, 4, (12, 5)).float() for _ in range(2 if name != "slerp" else 1)]
    base_index = None if name == "linear" else 0
    per_input = [{"weight": 0.7, "density": 0.4, "gamma": 0.1} for _ in range(len(others) + 1)]
    kwargs = dict(base_index=base_index, per_input=per_input, shared={"t": 0.3} if name == "slerp" else None, seed=3)
    whole = _merge(name, [base, *others], **kwargs)
    torch.testing.assert_close(_merge(name, [base, *others], chunk_elements=10, **kwargs), whole)
