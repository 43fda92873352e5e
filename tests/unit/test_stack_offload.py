"""The offload check on llama-server load logs: a CPU fallback is a failure, not a slow success.

The excerpts are in tests/fixtures/compose_logs.py; test_stack_llama.py runs the check on the
logs of real servers (CPU, and ggml's rpc-server as a real offload device).
"""

from __future__ import annotations

from hlctl.stack.offload import check_offload, parse_offload
from tests.fixtures.compose_logs import CPU_BUILD_NGL_99, CPU_NGL_0, CUDA_FULL


def test_cuda_offload_passes() -> None:
    report = parse_offload(CUDA_FULL)
    assert (report.offloaded, report.total) == (33, 33)
    assert set(report.device_bytes) == {"CUDA0"} and set(report.host_bytes) == {"CPU_Mapped"}
    verdict = check_offload(report, 33)
    assert verdict.ok and verdict.message == "offloaded 33/33 layers (CUDA0 4095 MiB)"


def test_offloaded_line_without_a_gpu_buffer_is_a_cpu_fallback() -> None:
    # The CPU build says "offloaded 19/19 layers to GPU" while every buffer is on the CPU.
    verdict = check_offload(parse_offload(CPU_BUILD_NGL_99), 99)
    assert not verdict.ok
    assert verdict.message.startswith("llama-server fell back to the CPU: offloaded 19/19 "
                                      "layers, no model buffer on a GPU")
    assert "n_gpu_layers=99" in verdict.message and "\n" not in verdict.message


def test_zero_layers_is_a_failure_only_when_layers_were_asked_for() -> None:
    report = parse_offload(CPU_NGL_0)
    assert check_offload(report, 0).ok
    assert not check_offload(report, 33).ok


def test_the_last_load_counts() -> None:
    assert check_offload(parse_offload(CPU_NGL_0 + CUDA_FULL), 33).ok
    assert not check_offload(parse_offload(CUDA_FULL + CPU_NGL_0), 33).ok


def test_a_log_without_load_lines_cannot_pass() -> None:
    verdict = check_offload(parse_offload("srv  llama_server: listening\n"), 33)
    assert not verdict.ok and "--log-verbosity 4" in verdict.message
