"""CUDA compatibility: an image's NVIDIA_REQUIRE_CUDA against the driver's CUDA version."""

from __future__ import annotations

import pytest

from hlctl.stack.cuda import check_cuda, cuda_int, parse_requirement, requirement_from_env
from tests.fixtures.compose_engine import CUDA_121_ENV, CUDA_128_ENV

IMAGE = "hlctl/llama-server-cuda:b11434-cuda12.1.1-sm86"


def test_cuda_int_matches_nvml_form() -> None:
    assert cuda_int("12.1") == 12010
    assert cuda_int("12.8") == 12080
    assert cuda_int("12.1.1") == 12010
    assert cuda_int("11") == 11000
    with pytest.raises(ValueError):
        cuda_int("twelve")


def test_published_12_8_image_is_refused_on_a_12_1_driver() -> None:
    requirement = requirement_from_env(CUDA_128_ENV)
    assert requirement is not None and requirement.min_cuda == 12080
    verdict = check_cuda(requirement, 12010, "530.30.02", "ghcr.io/ggml-org/llama.cpp:server-cuda")
    assert not verdict.ok
    assert verdict.message == (
        "image ghcr.io/ggml-org/llama.cpp:server-cuda needs CUDA 12.8 but the host's driver "
        "530.30.02 supports CUDA 12.1; build the image for this CUDA (stack.cuda_version) or "
        "update the driver")
    assert "\n" not in verdict.message


def test_12_1_image_runs_on_a_12_1_driver_and_newer() -> None:
    requirement = requirement_from_env(CUDA_121_ENV)
    assert check_cuda(requirement, 12010, "530.30.02", IMAGE).ok
    assert check_cuda(requirement, 12040, "550.54.14", IMAGE).ok
    assert not check_cuda(requirement, 12000, "525.60.13", IMAGE).ok


def test_brand_alternative_is_not_assumed() -> None:
    # A 470 datacenter driver would pass only through brand=tesla, which a snapshot cannot
    # confirm: refused rather than started on a guess.
    requirement = requirement_from_env(CUDA_128_ENV)
    assert not check_cuda(requirement, 11040, "470.82.01", IMAGE).ok


def test_driver_only_alternative_is_evaluated() -> None:
    requirement = parse_requirement("cuda>=12.8 driver>=570")
    assert check_cuda(requirement, 12010, "570.86.10", IMAGE).ok
    assert not check_cuda(requirement, 12010, "535.1", IMAGE).ok


def test_disable_require_and_no_requirement() -> None:
    assert check_cuda(requirement_from_env(["NVIDIA_REQUIRE_CUDA=cuda>=12.8",
                                            "NVIDIA_DISABLE_REQUIRE=true"]), 12010, None,
                      IMAGE).ok
    assert requirement_from_env(["PATH=/bin"]) is None
    assert check_cuda(None, 12010, None, IMAGE).ok


def test_unknown_driver_version_refuses_with_a_reason() -> None:
    verdict = check_cuda(requirement_from_env(CUDA_121_ENV), None, None, IMAGE)
    assert not verdict.ok and "no CUDA driver version" in verdict.message


def test_garbage_requirement_names_the_token() -> None:
    with pytest.raises(ValueError, match="'cuda~12'"):
        parse_requirement("cuda~12")
