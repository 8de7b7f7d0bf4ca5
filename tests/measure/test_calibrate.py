"""The cost model's constants: positive, cached per shape, and shaped like the model's FFN."""
import torch

from bench.measure.calibrate import calibrate


def test_calibration_measures_a_gemm_of_the_given_shape_and_caches_it():
    cpu = torch.device("cpu")
    a = calibrate(cpu, "fp32", 64, 32, 96)
    assert a["matmul_shape"] == [64, 32, 96] and a["precision"] == "fp32"
    assert a["matmul_flops_per_s"] > 0 and 0 < a["op_overhead_s"] < 1e-2
    assert 0 <= a["node_overhead_s"] < 1e-2  # autograd's per node, beside the plain chain's per operation
    assert calibrate(cpu, "fp32", 64, 32, 96) == a  # measured once per shape in a process
    a["op_overhead_s"] = -1.0
    assert calibrate(cpu, "fp32", 64, 32, 96)["op_overhead_s"] > 0  # callers get a copy
