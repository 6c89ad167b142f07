"""The CUDA path (ops -> argument lists -> kernels.cu kernels) run on the CPU by emulation.

On a machine without a GPU this is what checks the CUDA kernels' indexing, shared memory use,
block synchronisation, workspaces and argument packing against torchvision. See
``cuda_emulation.py`` for what the emulation does not cover (the ``__CUDA_ARCH__`` lines); the
real CUDA tests in test_roi_align.py / test_nms.py cover those when a GPU is present.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from segstream import kernels

import cuda_emulation
from cases import (
    SCALES,
    assert_nms_matches,
    boundary_boxes,
    fpn_maps,
    nms_case,
    nms_reference,
    random_boxes,
    roi_align_reference,
)


def _has_cxx20_barrier() -> bool:
    if shutil.which("g++") is None:
        return False
    probe = subprocess.run(
        ["g++", "-std=c++20", "-fsyntax-only", "-x", "c++", "-"],
        input="#include <barrier>\nstd::barrier<> b(1);\n", capture_output=True, text=True, check=False,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _has_cxx20_barrier(), reason="g++ with C++20 <barrier> needed for the CUDA emulation")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    lib = cuda_emulation.build(tmp_path_factory.mktemp("cuda_emulation"))
    calls: list[str] = []
    return cuda_emulation.launcher(lib, calls), calls


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align_kernel(emulated, dtype: torch.dtype, output_size: int, atol: float) -> None:
    launch, calls = emulated
    feats = fpn_maps(2, 5, dtype, "cpu", 21)
    boxes = random_boxes(2, 40, 22)
    counts = [40, 23]

    got = kernels.multilevel_roi_align(
        feats, boxes, output_size, SCALES, counts=torch.tensor(counts, dtype=torch.int32), _launch=launch
    )

    assert calls[-1] == f"segstream_multilevel_roi_align_{'f32' if dtype == torch.float32 else 'f16'}"
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), roi_align_reference(feats, boxes, output_size, counts=counts), atol=atol, rtol=0)


@pytest.mark.parametrize("sampling_ratio,aligned,output_size", [(0, False, 7), (3, True, 7), (2, False, 28)])
def test_roi_align_kernel_without_tap_table(emulated, sampling_ratio: int, aligned: bool, output_size: int) -> None:
    # Adaptive sampling, and 28x28 bins x 2x2 samples (more taps than the shared table holds),
    # take the kernel's direct path; 3x3 at 7x7 still fits the table.
    launch, _ = emulated
    feats = fpn_maps(1, 3, torch.float32, "cpu", 23)
    boxes = random_boxes(1, 30, 24).clamp(-600, 1200)

    got = kernels.multilevel_roi_align(
        feats, boxes, output_size, SCALES, sampling_ratio=sampling_ratio, aligned=aligned, _launch=launch
    )

    expected = roi_align_reference(feats, boxes, output_size, sampling_ratio, aligned)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_roi_align_kernel_channel_chunks_and_boundaries(emulated) -> None:
    # 200 channels at 7x7: several channel chunks per box (grid.y > 1).
    launch, _ = emulated
    feats = [m + 10 * i for i, m in enumerate(fpn_maps(1, 200, torch.float32, "cpu", 25))]
    boxes = (boundary_boxes()[::25] + 20.0)[None]

    got = kernels.multilevel_roi_align(feats, boxes, 7, SCALES, _launch=launch)

    torch.testing.assert_close(got, roi_align_reference(feats, boxes, 7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed,classes,tied", [(0, 80, False), (1, 3, True), (2, 1, False)])
def test_nms_kernels(emulated, seed: int, classes: int, tied: bool) -> None:
    launch, calls = emulated
    boxes, scores, labels = nms_case(2, 700, classes, seed, tied_scores=tied)
    counts = [700, 333]
    expected = nms_reference(boxes, scores, labels, 0.5, 0.05, 100, counts=counts)

    got = kernels.batched_nms(
        boxes, scores, labels, 0.5, 0.05, 100, counts=torch.tensor(counts, dtype=torch.int32), _launch=launch
    )

    assert calls[-3:] == ["segstream_nms_rank", "segstream_nms_mask", "segstream_nms_select"]
    assert_nms_matches(got, boxes, scores, labels, expected, 100)


def test_nms_kernels_keep_everything_and_pad(emulated) -> None:
    # K larger than N: the select kernel walks every 64-rank block and pads the rest.
    launch, _ = emulated
    boxes, scores, labels = nms_case(1, 200, 4, 3, quantized=True)
    expected = nms_reference(boxes, scores, labels, 0.3, 0.0, 300, per_class=False)

    got = kernels.batched_nms(boxes, scores, labels, 0.3, 0.0, 300, _launch=launch)

    assert_nms_matches(got, boxes, scores, labels, expected, 300)


def test_nms_kernels_with_no_candidates(emulated) -> None:
    launch, _ = emulated
    boxes, scores, labels = nms_case(2, 100, 4, 4)

    got = kernels.batched_nms(boxes, scores, labels, 0.5, 2.0, 10, _launch=launch)

    assert got.count.tolist() == [0, 0] and (got.indices == -1).all()


@pytest.mark.parametrize("height, width, n, seed", [(180, 320, 24, 1), (37, 53, 20, 2), (1, 1, 4, 3), (720, 1280, 6, 0)])
def test_mask_rle_kernel_equals_the_host_build_and_pycocotools(emulated, height, width, n, seed) -> None:
    from segstream.kernels.mask_rle import mask_rle_counts
    from test_mask_rle import THRESHOLD, kernel_strings, random_instances, reference_strings, roomy_cap

    launch, calls = emulated
    masks, boxes = random_instances(n, height, width, seed)
    sizes = torch.tensor([[height, width]] * n)
    cap = roomy_cap(width)

    got = mask_rle_counts(masks, boxes, sizes, THRESHOLD, cap, _launch=launch)

    assert calls[-1] == "segstream_mask_rle"
    host = mask_rle_counts(masks, boxes, sizes, THRESHOLD, cap)
    assert torch.equal(got.num, host.num) and torch.equal(got.regions, host.regions)
    for i, k in enumerate(host.num.tolist()):
        assert torch.equal(got.counts[i, :k], host.counts[i, :k]), f"instance {i}"
    assert kernel_strings(got) == reference_strings(masks, boxes, height, width)


def test_mask_rle_kernel_reports_rows_that_do_not_fit(emulated) -> None:
    from segstream.kernels.mask_rle import mask_rle_counts

    launch, _ = emulated
    g = torch.Generator().manual_seed(9)
    masks = (torch.rand((2, 28, 28), generator=g) > 0.5).float()
    boxes = torch.tensor([[0.0, 0.0, 300.0, 300.0], [10.0, 10.0, 20.0, 20.0]])
    sizes = torch.tensor([[300, 300]] * 2)
    got = mask_rle_counts(masks, boxes, sizes, 0.5, 16, _launch=launch)
    host = mask_rle_counts(masks, boxes, sizes, 0.5, 16)
    assert torch.equal(got.num, host.num) and int(got.num[0]) > 16
