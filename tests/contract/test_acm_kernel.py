"""ACM's Triton learners (``acm[kernel=triton]``) against the eager grouped matmuls (issue 17).

On a CPU the kernels run under Triton's interpreter (``tests/conftest.py`` sets it); the test is
skipped where Triton is not installed (``.ci/run`` installs it). The fast path must give the eager
path's outputs, counted FLOPs and trace at every budget, and make no host sync of its own.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted

from dynbench.hardware.host_sync import count_host_syncs
from dynbench.harness.flops import count_flops
from dynbench.methods._learner_stack import LearnerStack

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


@pytest.mark.parametrize(
    ("swiglu", "bias", "out_bias"), [(False, True, True), (True, False, False), (True, True, True)]
)
@pytest.mark.parametrize(("M", "C", "n", "b"), [(50, 32, 4, 16), (70, 48, 3, 40), (5, 24, 2, 8)])
def test_the_kernels_equal_the_grouped_matmuls(swiglu, bias, out_bias, M, C, n, b):
    torch.manual_seed(M + C)
    stack = LearnerStack(C, n, b, swiglu=swiglu, bias=bias, out_bias=out_bias, gate_hidden=16, gate_depth=2)
    with torch.no_grad():
        for p in stack.parameters():
            p.normal_(0, 0.3)
    z, k = torch.randn(M, C), torch.randint(0, n + 1, (M,))
    k[0] = 0  # every learner count appears, none included
    with torch.inference_mode():
        eager, fast = stack.gated(z, k), stack.gated_kernel(z, k)
        flops = [count_flops(lambda f=f: f(z, k), stack).total for f in (stack.gated, stack.gated_kernel)]
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
    assert flops[0] == flops[1] > 0  # the op's formula counts the rows that run each learner, as eager


def test_tokens_that_run_no_learner_get_zeros():
    stack = LearnerStack(16, 2, 8, swiglu=False, bias=True, out_bias=True, gate_hidden=8, gate_depth=1)
    with torch.inference_mode():
        y = stack.gated_kernel(torch.randn(40, 16), torch.zeros(40, dtype=torch.long))
    assert torch.equal(y, torch.zeros(40, 16))


@pytest.mark.parametrize("task_name", TOY_TASKS)
def test_acm_with_the_kernels_equals_acm_without(toy, task_name):
    method, model, _ = fitted(toy, "acm", task_name)
    x = eval_batch(toy, task_name, 8).inputs
    budgets = [b for b in method.resolve_budgets(None, model.backbone.n_blocks) if b < 1.0]
    with torch.inference_mode():
        for budget in budgets:
            model.kernel = "torch"
            eager = model(x, budget=budget)
            eager_flops = count_flops(lambda b=budget: model(x, budget=b), model).total
            model.kernel = "triton"
            try:
                fast = model(x, budget=budget)
                fast_flops = count_flops(lambda b=budget: model(x, budget=b), model).total
                syncs = count_host_syncs(lambda b=budget: model(x, budget=b), model, x)
            finally:
                model.kernel = "torch"
            torch.testing.assert_close(fast.logits, eager.logits, rtol=1e-4, atol=1e-5)
            assert fast_flops == eager_flops
            for field in ("block_tokens", "block_kv", "block_heads", "readout", "controller_flops"):
                assert torch.equal(getattr(fast.trace, field), getattr(eager.trace, field)), field
            assert fast.trace.extra.keys() == eager.trace.extra.keys()
            for key, value in eager.trace.extra.items():  # NaN where a region has no token: equal too
                torch.testing.assert_close(fast.trace.extra[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
            assert len(syncs) <= 2, syncs.summary()  # the trace's copies only: no sync per block


def test_the_kernel_option_shares_the_fit_and_says_where_it_cannot_run(toy, monkeypatch):
    from fitting import method_with

    assert method_with("acm", {"kernel": "triton"}).fit_identity() == method_with("acm").fit_identity()
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as on a CPU without the interpreter: the kernels cannot run
    task, backbone = toy("toy-vision")
    quick = {"kernel": "triton", "targets": (0.5,), "distill_steps": 4, "gate_steps": 2, "finetune_steps": 2}
    method = method_with("acm", quick)
    model = method.wrap(backbone)
    method.fit(model, task, seed=0)  # the fit (its price calibration included) runs the reference path
    assert model.kernel == "triton"
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"run on CUDA devices, not 'cpu'.*kernel=torch"):
        model(eval_batch(toy, "toy-vision", 4).inputs, budget=0.5)
