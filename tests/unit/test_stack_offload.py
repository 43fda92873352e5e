"""The offload check on llama-server load logs: a CPU fallback is a failure, not a slow success.

The CPU excerpt is from the CPU build the integration tests use (-ngl 99, --log-verbosity 4);
the CUDA excerpt has the same lines as a CUDA build logs them for an RTX 3090.
"""

from __future__ import annotations

from hlctl.stack.offload import check_offload, parse_offload

CPU_BUILD_NGL_99 = """\
0.01.532.179 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.01.549.377 I load_tensors: offloading output layer to GPU
0.01.549.417 I load_tensors: offloading 17 repeating layers to GPU
0.01.549.433 I load_tensors: offloaded 19/19 layers to GPU
0.01.549.453 I load_tensors:   CPU_Mapped model buffer size =   235.16 MiB
0.01.549.469 I load_tensors:   CPU_REPACK model buffer size =    12.66 MiB
"""
CPU_NGL_0 = """\
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors: offloaded 0/19 layers to GPU
load_tensors:   CPU_Mapped model buffer size =   235.16 MiB
"""
CUDA_FULL = """\
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors: offloading 32 repeating layers to GPU
load_tensors: offloading output layer to GPU
load_tensors: offloaded 33/33 layers to GPU
load_tensors:        CUDA0 model buffer size =  4095.05 MiB
load_tensors:   CPU_Mapped model buffer size =    72.00 MiB
"""


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
