"""The fake step: exact against the measured job's counted bytes, equal to MemTracker, fast."""
import pytest
import torch

from bench.measure import counters
from bench.project.fake import fake_step
from tests.conftest import built, compose_cfg, trainer_of


def _cfg(*overrides):
    from bench.config import load_config

    return load_config(compose_cfg(["device=cpu", "project.gpu=H100", "data=random", *overrides]))


@pytest.mark.parametrize("strategy", ["full", "lora_all", "lora_qk", "lora_last", "lora_all train.checkpointing=blocks"])
def test_weights_gradients_and_optimizer_bytes_equal_the_measured_jobs(strategy):
    step = fake_step(_cfg(*f"strategy={strategy}".split()))
    cfg, s = built(*f"strategy={strategy}".split(), "data=random")
    trainer = trainer_of(cfg, s)
    batch = next(s.train_batches(cfg, 1))
    trainer.step(batch, __import__("bench.measure.timer", fromlist=["StepTimer"]).StepTimer(torch.device("cpu")))
    with counters.StepCounts(s.model) as probe:
        trainer.step(next(s.train_batches(cfg, 1)), __import__("bench.measure.timer", fromlist=["StepTimer"]).StepTimer(
            torch.device("cpu")), probe)
    assert step.weights_bytes == counters.weights_bytes(s.model)
    assert step.grads_bytes == probe.grads_bytes
    assert step.optimizer_bytes == counters.optimizer_state_bytes(trainer.optimizer)
    assert step.params_trainable == counters.param_counts(s.model)["trainable"]
    assert step.flops == probe.flops  # the same FLOP rules on the same shapes
    assert step.saved_bytes == probe.saved.bytes  # saved activations: the same counter on the same step


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_the_stage_peaks_predict_other_batches(strategy):
    from bench.project.job import peak_at

    steps = {b: fake_step(_cfg(f"strategy={strategy}", f"train.batch_size={b}")) for b in (1, 8, 32)}
    assert set(steps[8].stages) == {"forward", "backward", "optimizer"}
    assert steps[8].peak_bytes == max(s["peak"] for s in steps[8].stages.values())
    for at in (1, 32):
        assert peak_at(steps[8].stages, 8, at) == pytest.approx(steps[at].peak_bytes, rel=0.05), at


def test_variants_project_and_their_bytes_follow():
    pytest.importorskip("torchao")
    q = fake_step(_cfg("strategy=lora_all", "quant.base=nf4", "quant.scaler_block_size=32"))
    plain = fake_step(_cfg("strategy=lora_all"))
    assert q.weights_bytes < plain.weights_bytes and q.quant.bytes_after < q.quant.bytes_before
    # the peak holds the packed bytes, not the dense shape a 4-bit wrapper reports
    assert plain.split["parameters"] - q.split["parameters"] == q.quant.bytes_before - q.quant.bytes_after
    ckpt = fake_step(_cfg("strategy=lora_all", "train.checkpointing=blocks"))
    assert ckpt.split["activations"] < plain.split["activations"] and ckpt.flops > plain.flops  # the recompute
    dora = fake_step(_cfg("strategy=lora_all", "lora.dora=true"))
    assert dora.params_trainable > plain.params_trainable
    assert any(op.name == "aten.linalg_vector_norm" for op in dora.ops)


def test_fp32_adapters_under_a_bf16_base_cost_their_closed_form():
    """PEFT's default: fp32 A and B under a bf16 base. Weights, gradients and AdamW's two moments of
    the adapters are 4 bytes each where they were 2; the base is unchanged; each adapted input is
    saved for backward once more, in fp32 (B x T x in x 4 bytes)."""
    over = ("strategy=lora_qk", "project.dtype=bf16", "lora.rank=4")
    plain, fp32 = fake_step(_cfg(*over)), fake_step(_cfg(*over, "lora.adapter_dtype=fp32"))
    n = fp32.params_trainable
    assert n == plain.params_trainable and n > 0
    assert fp32.weights_bytes - plain.weights_bytes == 2 * n
    assert fp32.grads_bytes == 2 * plain.grads_bytes == 4 * n
    assert fp32.optimizer_bytes - plain.optimizer_bytes == 2 * 2 * n  # two moments; the step counters unchanged
    cfg = _cfg(*over)
    tokens, d, r, blocks = cfg.train.batch_size * cfg.train.seq_len, cfg.model.dim, 4, cfg.model.n_layers
    # per block: q and k each save their own fp32 input and fp32 A x, where both saved the one bf16 input
    # they share and their own bf16 A x
    per_block = 2 * (4 * d + 4 * r) - (2 * d + 2 * 2 * r)
    assert fp32.saved_bytes - plain.saved_bytes == blocks * tokens * per_block


def test_bf16_parameters_are_built_in_bf16_without_a_move():
    step = fake_step(_cfg("strategy=full", "project.dtype=bf16", "train.precision=bf16"))
    full = fake_step(_cfg("strategy=full"))
    assert step.weights_bytes * 2 == full.weights_bytes


def test_fake_tensors_own_queries_are_neither_operations_nor_kernels():
    # FakeTensor answers x.device through the dispatcher (prim.device); eager PyTorch does not.
    step = fake_step(_cfg("strategy=lora_all"))
    assert not any(op.name.startswith("prim.") for op in step.ops)
    assert all(not op.kernel and op.bytes == 0 for op in step.ops if op.name in ("aten._unsafe_view", "aten.detach"))


def test_a_kernel_moves_each_distinct_input_once_and_a_broadcast_input_once():
    from bench.project.fake import kernel_bytes

    x = torch.ones(4, 1).expand(4, 8)        # 4 distinct fp32 elements, 32 as the output sees them
    y = torch.ones(4, 8)
    out = x * y
    assert kernel_bytes([x, y], [out]) == 4 * 4 + 32 * 4 + 32 * 4
    assert kernel_bytes([y, y], [out]) == 32 * 4 + 32 * 4  # y * y reads y once


def test_foreach_adamw_holds_every_second_moments_square_root_at_once():
    """On CUDA AdamW is foreach: torch._foreach_sqrt(exp_avg_sqs) makes every second moment's square
    root at once, one temporary each, all alive until the update: the optimizer's temporaries are the
    second moments' bytes (bf16 here, the parameters' dtype: the gradients' bytes). The per-tensor
    loop a CPU runs holds one parameter's (its root and the root over the bias correction) at a time."""
    cfg = _cfg("strategy=full", "project.dtype=bf16")
    multi, loop = fake_step(cfg, foreach=True), fake_step(cfg)
    loss = 4  # the step's fp32 loss, still alive
    assert multi.stages["optimizer"]["batch_bytes"] == multi.grads_bytes + loss
    assert loop.stages["optimizer"]["batch_bytes"] < multi.grads_bytes // 2
    n_params = sum(1 for op in loop.ops if op.name == "aten.sqrt")
    assert n_params > 10 and sum(1 for op in multi.ops if op.name == "aten.sqrt") == 0
    assert [op.name for op in multi.ops].count("aten._foreach_sqrt") == 1  # one group, one dtype: one launch
    assert all(not op.kernel for op in multi.ops if op.name == "aten._local_scalar_dense")  # step.item(): host only


def test_foreach_kernels_move_what_the_per_tensor_loop_moves():
    """A foreach op that updates lists in place returns nothing: what it writes are the lists its
    schema marks as written. AdamW's second-moment update reads exp_avg_sq and the gradient (passed
    twice, read once) and writes exp_avg_sq: three times the gradients' bytes (all bf16 here)."""
    cfg = _cfg("strategy=full", "project.dtype=bf16", "train.grad_clip=1.0")
    multi, loop = fake_step(cfg, foreach=True), fake_step(cfg)
    g = multi.grads_bytes
    by_name = {op.name: op.bytes for op in multi.ops}
    assert by_name["aten._foreach_addcmul_"] == 3 * g and by_name["aten._foreach_sqrt"] == 2 * g
    assert by_name["aten._foreach_addcdiv_"] == 4 * g  # params, exp_avg, the root read; params written
    assert "aten._foreach_norm" in by_name  # clipping's norms: one launch for every gradient
    # the same arithmetic tensor by tensor: the same bytes, bar the clipping's per-tensor scalars
    assert sum(op.bytes for op in multi.ops) == pytest.approx(sum(op.bytes for op in loop.ops), rel=1e-4)


def test_the_recorded_allocations_end_with_the_step():
    """What the allocator replays (bench/project/allocator.py): the weights, buffers and AdamW's
    state allocated before the step and never freed in it (their collection after the step is not
    the step's); every gradient the step makes is freed by its zero_grad."""
    step = fake_step(_cfg("strategy=full", "project.dtype=bf16"), foreach=True)
    before = {k for k, n in step.events[:step.before_step]}
    freed = {k for k, n in step.events[step.before_step:] if n < 0}
    made = {k for k, n in step.events[step.before_step:] if n >= 0}
    assert before and not before & freed
    assert sum(n for k, n in step.events[:step.before_step]) >= step.weights_bytes + step.optimizer_bytes
    assert len(made - freed) <= 2  # the loss and what holds it, alive until the next step replaces them


def test_autograd_nodes_are_the_backward_graph_and_spread_over_its_operations():
    from bench.project.fake import autograd_nodes

    w = torch.nn.Parameter(torch.randn(4, 4))
    loss = ((torch.randn(2, 4) @ w).relu() + 1.0).sum()
    assert autograd_nodes(loss) == 5  # AccumulateGrad(w), MmBackward, ReluBackward, AddBackward, SumBackward
    # the projected step's graph is the real step's, node for node
    cfg, s = built("strategy=lora_qk", "data=random")
    real = autograd_nodes(trainer_of(cfg, s).loss(next(s.train_batches(cfg, 1))[0]))
    step = fake_step(_cfg("strategy=lora_qk"))
    assert step.autograd_nodes == real
    assert sum(op.nodes for op in step.ops) == pytest.approx(real)  # every node's cost somewhere in the backward
    assert step.ops[0].nodes == 0  # none in the forward
    # freezing the first blocks removes their graph: lora_last's backward runs fewer nodes
    assert fake_step(_cfg("strategy=lora_last")).autograd_nodes < step.autograd_nodes


def test_fused_adamw_is_one_kernel_reading_four_lists_and_writing_three():
    """train.adamw_impl=fused: torch._fused_adamw_ reads the parameters, gradients and both moments and
    writes the parameters and moments (its schema marks the gradients written too: only to unscale them
    under a grad_scale, none here), and reads the step counts, on the device then. No multi-tensor temporary."""
    cfg = _cfg("strategy=full", "project.dtype=bf16", "train.adamw_impl=fused", "train.grad_clip=0")
    fused = fake_step(cfg, foreach=True)
    multi = fake_step(_cfg("strategy=full", "project.dtype=bf16", "train.grad_clip=0"), foreach=True)
    g = fused.grads_bytes  # parameters, gradients and moments all bf16: each list g bytes
    n = sum(1 for op in fake_step(_cfg("strategy=full")).ops if op.name == "aten.sqrt")  # the loop's: one per parameter
    adam = [op for op in fused.ops if op.name == "aten._fused_adamw_"]
    assert len(adam) == 1 and adam[0].bytes == 7 * g + 4 * n  # n fp32 step counts, one per parameter
    assert not any(op.name == "aten._foreach_sqrt" for op in fused.ops)
    assert "optimizer" not in fused.stages  # (clipping off) the step allocates nothing in AdamW's stage
    assert multi.stages["optimizer"]["batch_bytes"] == g + 4  # foreach holds every root at once (+ the fp32 loss)
