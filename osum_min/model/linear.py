"""nn.Linear with a faster CPU path: the same float32 math, served by oneDNN instead of MKL.

torch sends float32 F.linear on CPU to MKL, which on the 2 AMD EPYC cores we measured runs far below what they can
do. oneDNN's linear is the same math: as fast for one row, and faster for the several rows of beam search and
batches and for the hundreds of a prefill (docs/benchmarks.md, "oneDNN linears", has the figures).

oneDNN's op has no backward, so training goes through `OneDNNLinear`, whose backward is two more oneDNN linears,
again faster than MKL's. Where oneDNN cannot serve a float32 weight (under torch.compile, a torch build without
it), small inputs take `weight @ x.T`, which BLAS runs as a multi-threaded GEMM streaming the weight (one row is
duplicated to make it a GEMM), where F.linear's GEMV is single-threaded. Other dtypes take F.linear (bf16's
is multi-threaded already). Results equal F.linear to float32 rounding; other devices take F.linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


def _onednn(x, weight, bias=None):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """x @ weight.T + bias with oneDNN both ways: grad_x = grad @ weight, grad_weight = grad.T @ x."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (N, out)
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t())  # (..., in)
        if ctx.needs_input_grad[1]:
            # (out, in)
            grad_weight = _onednn(grad_rows.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x, weight, bias=None):
    if x.device.type != "cpu":
        return F.linear(x, weight, bias)
    # inductor lowers the oneDNN op only for frozen weights, so torch.compile traces the paths below; autocast
    # (training with --frozen-dtype bf16) casts only F.linear's inputs
    if (
        ONEDNN
        and weight.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
    ):
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias)
        )
        return (
            OneDNNLinear.apply(x, weight, bias)
            if needs_grad
            else _onednn(x, weight, bias)
        )
    rows = x.numel() // x.shape[-1]
    # a GEMM big enough for MKL's own blocking, input-major weights, or not float32 (bf16's
    # F.linear is multi-threaded: 1.4x the decode steps of the trick below, docs/benchmarks.md)
    if rows > 64 or not weight.is_contiguous() or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    flat = flat.repeat(2, 1) if rows == 1 else flat
    # (..., out)
    out = (weight @ flat.T).T[:rows].reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


class Linear(nn.Linear):
    def forward(self, x):
        return linear(x, self.weight, self.bias)


@torch.no_grad()
def use_input_major_weights(module: nn.Module) -> nn.Module:
    """Store every float32 CPU Linear weight input-major: the same (out, in) tensor, with strides (1, out).

    oneDNN streams that layout faster still, at every decode batch size (README, "oneDNN linears"). For eager
    inference only: optimizers and FSDP expect the usual layout, and MKL (what torch.compile uses here) streams it
    several times slower.
    """
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if (
            isinstance(layer, nn.Linear)
            and weight.device.type == "cpu"
            and weight.dtype == torch.float32
        ):
            weight.data = weight.data.t().contiguous().t()
    return module
