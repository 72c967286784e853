"""benchmarks/gpu_suite.py: the peak-FLOPs lookup, and ``--smoke`` runs every part on the
CPU and writes a result for each (a peer that is not installed is a skip with its reason)."""

import json
import sys

import pytest
from processes import REPO, environment, run

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_suite


def test_peak_flops_by_device_name():
    assert gpu_suite.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert gpu_suite.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert gpu_suite.peak_flops("NVIDIA H200", "float32") == 495e12
    assert gpu_suite.peak_flops("cpu", "float32") is None


def test_configurations_are_the_issue_grid():
    full = gpu_suite.configurations(smoke=False)
    assert len(full) == 16
    assert {(c["method"], c["batch"], c["time_steps"], c["dtype"]) for c in full} == {
        (m, b, t, d)
        for m in ("kd", "sastc")
        for b in (64, 256)
        for t in (2, 4)
        for d in ("float32", "bfloat16")
    }
    smoke = gpu_suite.configurations(smoke=True)
    assert {c["method"] for c in smoke} == {"kd", "sastc"}
    assert {c["dtype"] for c in smoke} == {"float32", "bfloat16"}


@pytest.mark.slow
def test_smoke_run_measures_every_part(tmp_path):
    output = tmp_path / "suite.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke"]
    command += ["--json", str(output), "--release-dir", str(tmp_path / "no_release")]
    result = run(command, environment(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    results = json.loads(output.read_text())
    assert set(results["part_seconds"]) == {"ours", "release", "frameworks"}
    ours = results["ours"]
    assert [(r["method"], r["dtype"]) for r in ours] == [("kd", "float32"), ("sastc", "bfloat16")]
    for record in ours:
        assert record["images_per_second"] > 0 and record["compile_s"] > 0, record
        assert record["flops"] > 0 and record["mfu"] is None  # no peak for the CPU
    assert results["release"] == [
        {"skipped": f"no copy of the release's CIFAR10/ folder at {tmp_path / 'no_release'}"}
    ]
    by_framework = {r["framework"]: r for r in results["frameworks"]["records"]}
    assert set(by_framework) == {"sastc-jax", "floor", "spyx", "spikingjelly"}
    for name in ("sastc-jax", "floor"):
        assert by_framework[name]["median_s"] > 0
    for name in ("spyx", "spikingjelly"):  # not installed in the project's environment
        assert by_framework[name].get("median_s", 0) > 0 or by_framework[name]["error"].startswith(
            "skipped: not importable"
        ), by_framework[name]
    assert "| sastc-jax | kd | 4 | 2 | float32 |" in results["table"]
    assert "dense N=64, T=20" in results["table"]
