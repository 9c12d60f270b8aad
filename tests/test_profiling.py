"""grpo/profiling.py's report of a profiled step, on a GPU's events without a GPU: a fake profile in torch.profiler's
event model (FunctionEvent: name, device_type, cpu_time_total and device_time in microseconds)."""
import types

import torch

from grpo.profiling import report

CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def event(name, device_type, cpu_time_total=0.0, device_time=0.0, is_user_annotation=False):
    return types.SimpleNamespace(name=name, device_type=device_type, cpu_time_total=cpu_time_total, device_time=device_time,
                                 is_user_annotation=is_user_annotation)


def fake_profile(events):
    tables = types.SimpleNamespace(table=lambda sort_by, row_limit: f"<{sort_by}>")
    return types.SimpleNamespace(events=lambda: events, key_averages=lambda: tables)


HOST = [event("grpo/rollout", CPU, cpu_time_total=2500.0), event("grpo/update", CPU, cpu_time_total=1000.0),
        event("aten::mm", CPU, cpu_time_total=300.0)]
KERNELS = [event("gemm_kernel", CUDA, device_time=1500.0), event("elementwise_kernel", CUDA, device_time=500.0)]
# a range's copy on the GPU's clock (torch.profiler's gpu_user_annotation), spanning the kernels it launched
DEVICE_RANGE = event("grpo/rollout", CUDA, cpu_time_total=9e6, device_time=2000.0, is_user_annotation=True)


def test_a_gpu_steps_report_says_how_busy_the_device_was_by_hand():
    """Two kernels of 1.5 ms and 0.5 ms in a step of 4 ms: busy 2 ms, 50%, 1 ms a kernel; the phases' times in s."""
    text = report(fake_profile(HOST + KERNELS), 0.004, True, 3)
    lines = text.splitlines()
    assert lines[0] == "training step 3: 0.004 s wall under the profiler (rollout 0.003 s, update 0.001 s)"
    assert lines[1].startswith("device busy 0.002 s of 0.004 s (50.0%) in 2 kernels (1000.0 us a kernel): ")
    assert "<self_device_time_total>" in text and "<self_cpu_time_total>" in text
    cpu = report(fake_profile(HOST), 0.004, False, 3)
    assert "device busy" not in cpu and "<self_device_time_total>" not in cpu and "<self_cpu_time_total>" in cpu


def test_a_phases_time_is_its_host_range_not_its_copy_on_the_device():
    first = report(fake_profile(HOST + [DEVICE_RANGE]), 0.004, False, 3).splitlines()[0]
    assert first == "training step 3: 0.004 s wall under the profiler (rollout 0.003 s, update 0.001 s)"


def test_the_device_side_copies_of_the_steps_ranges_are_not_kernels():
    """On a GPU each record_function range (the step's three phases) comes back twice: on the host, and on the device as
    a gpu_user_annotation event spanning the kernels it launched. Counted as a kernel it doubled the busy time (here
    4 ms of a 4 ms step, 100%, in 3 kernels, where 2 kernels ran 2 ms)."""
    text = report(fake_profile(HOST + [DEVICE_RANGE] + KERNELS), 0.004, True, 3)
    assert text.splitlines()[1].startswith("device busy 0.002 s of 0.004 s (50.0%) in 2 kernels (1000.0 us a kernel): ")
