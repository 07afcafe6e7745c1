"""osum_min.model.linear: every CPU path (weight @ x.T, oneDNN, F.linear) gives F.linear's numbers and its gradients."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from osum_min.model import linear as linear_module
from osum_min.model.linear import ONEDNN, Linear, linear, use_input_major_weights


@pytest.mark.parametrize("rows", [0, 1, 3, 4, 5, 8, 32, 64, 65, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_for_every_row_count(rows, bias):
    torch.manual_seed(rows)
    weight, b = torch.randn(96, 40), torch.randn(96) if bias else None
    x = torch.randn(rows, 40)
    with torch.inference_mode():
        torch.testing.assert_close(
            linear(x, weight, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-5
        )
    x3 = torch.randn(2, 7, 40)[:, :, :40].transpose(0, 1)  # (7, 2, 40), not contiguous
    torch.testing.assert_close(
        linear(x3, weight, b), F.linear(x3, weight, b), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
def test_onednn_serves_inference_and_training(monkeypatch):
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(
        linear_module.torch.ops.mkldnn,
        "_linear_pointwise",
        lambda *args: calls.append(args[0].shape) or original(*args),
        raising=False,
    )
    layer = Linear(40, 96)
    x = torch.randn(3, 8, 40)
    with torch.no_grad():
        layer(x)
    assert calls == [(3, 8, 40)]
    # forward, grad_x, grad_weight: all oneDNN
    layer(x.requires_grad_()).sum().backward()
    assert len(calls) == 4


@pytest.mark.parametrize("trained", ["all", "input only (frozen layer)", "layer only"])
def test_onednn_gradients_equal_f_linear(trained):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 40).transpose(0, 1)  # (9, 2, 40), not contiguous
    weight, bias = torch.randn(96, 40), torch.randn(96)
    grad_out = torch.randn(9, 2, 96)
    leaves = {
        "all": (x, weight, bias),
        "input only (frozen layer)": (x,),
        "layer only": (weight, bias),
    }[trained]
    grads = []
    for function in (linear, F.linear):
        inputs = [
            t.detach().clone().requires_grad_(any(t is leaf for leaf in leaves))
            for t in (x, weight, bias)
        ]
        function(*inputs).backward(grad_out)
        grads.append([t.grad for t in inputs])
    for ours, theirs in zip(*grads):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bf16_and_meta_inputs():
    weight = torch.randn(16, 8, dtype=torch.bfloat16)
    x = torch.randn(10, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
    assert linear(x.to("meta"), weight.to("meta")).shape == (10, 16)


def test_input_major_weights_change_the_layout_not_the_numbers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(Linear(40, 96), torch.nn.GELU(), torch.nn.Linear(96, 8))
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    x = torch.randn(5, 40)
    with torch.inference_mode():
        before = net(x)
        use_input_major_weights(net)
        use_input_major_weights(half)
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert net[0].weight.shape == (96, 40) and net[0].weight.stride() == (1, 96)
    assert net[2].weight.shape == (8, 96) and net[2].weight.stride() == (1, 8)
    assert half.weight.is_contiguous()  # bf16: left as it is


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
def test_torch_compile_traces_through_linear():
    # bench/decode.py --compile compiles such a model
    layer = use_input_major_weights(Linear(40, 96).eval())
    x = torch.randn(3, 40)
    with torch.inference_mode():
        torch.testing.assert_close(
            torch.compile(layer, dynamic=False)(x), layer(x), rtol=1e-5, atol=1e-5
        )
