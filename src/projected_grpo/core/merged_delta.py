"""Training forward on merged weights (`--delta-s-impl merged`, issue 18): one matmul per wrapped linear.

The hook path (adapter.DeltaSLinear, the default) computes, for x: (N, d_in) and r = min(d_in, d_out),
    y = W x + U (δS ⊙ (Vh x)).
This path materialises the merged weight once per optimiser pass (δS does not change inside one),
    W' = W + U diag(δS) Vh           (fp32 sum, rounded to the model dtype: `fold`, the SAME
                                      arithmetic `DeltaSAdapter.merged()` uses for sampling),
and runs the linear as y = W' x (+ bias). Its backward, with dY: (N, d_out):
    dX    = dY W'
    dδS_i = Σ_t (u_iᵀ dy_t)(vh_i x_t)
          = Σ_t [(dY U) ⊙ (X Vhᵀ)]_{t,i}                       ("tokens": two N-sized matmuls)
          = [Uᵀ (dYᵀ X) Vhᵀ]_{ii} = Σ_b [(Uᵀ dW) ⊙ Vh]_{i,b}   ("weight": dW = dYᵀ X, then one
                                                                matmul whose size is N-free)
`auto` picks, per call, the one with fewer multiply-adds:
    tokens: N r (d_in + d_out)          weight: N d_in d_out + r d_in d_out.
Neither keeps dW: "tokens" never forms it, "weight" forms one micro-batch's dW transiently and
reduces it to r numbers at once; nothing accumulates over micro-batches but δS.grad.

Matmul count per wrapped linear, forward + backward, in units F = N d_in d_out (square W, r = d):
    hook:            fwd W x, Vh x, U h = 3F;  bwd dY W, dY U, dh Vh = 3F      -> 6F
    merged, tokens:  fwd W' x = F;  bwd dY W', dY U, X Vhᵀ = 3F               -> 4F
    merged, weight:  fwd W' x = F;  bwd dY W', dYᵀ X = 2F, Uᵀ dW = (r/N) F     -> (3 + r/N) F
plus the fold, d_out r d_in once per optimiser pass = (r / tokens of the whole pass) F.

Memory: kept as before — W (frozen, exact; the β > 0 reference forward and `merged()` read it),
U and Vh in the model dtype; saved for backward per wrapped linear only its input X (the hook also
saves two (N, r) intermediates). Added: W' (the targeted weights once more, model dtype) while a
pass runs, freed at its end. W is never modified, so the reference (δS off) stays bit-exact and no
drift can come from repeated in-place merging: every W' is folded afresh from W and the current δS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRAD_MODES = ("auto", "tokens", "weight")


def fold(w: torch.Tensor, u: torch.Tensor, vh: torch.Tensor, delta_s: torch.Tensor) -> torch.Tensor:
    """W' = W + U diag(δS) Vh summed in fp32 (fp64 for an fp64 model), rounded to W's dtype.
    At δS = 0, W' == W bitwise. w: (d_out, d_in), u: (d_out, r), vh: (r, d_in), delta_s: (r,)."""
    dt = torch.promote_types(w.dtype, torch.float32)
    with torch.no_grad():
        delta = (u.to(dt) * delta_s.detach().to(dt)) @ vh.to(dt)      # (d_out, d_in)
        return (w.to(dt) + delta).to(w.dtype)


def pick_grad_mode(mode: str, n: int, d_out: int, d_in: int, r: int) -> str:
    """`auto` -> the cheaper of "tokens" / "weight" by multiply-adds (module docstring)."""
    if mode != "auto":
        return mode
    return "weight" if n * d_in * d_out + r * d_in * d_out < n * r * (d_in + d_out) else "tokens"


def delta_s_grad(dy: torch.Tensor, x: torch.Tensor, u: torch.Tensor, vh: torch.Tensor,
                 mode: str) -> torch.Tensor:
    """∂L/∂δS = diag(Uᵀ dYᵀ X Vhᵀ), products and sum in fp32 (fp64 for fp64 inputs); the matmuls in
    the model dtype. dy: (N, d_out), x: (N, d_in), u: (d_out, r), vh: (r, d_in) -> (r,)."""
    dt = torch.promote_types(dy.dtype, torch.float32)
    if mode == "tokens":
        a = dy @ u                                         # (N, r)   u_iᵀ dy_t
        b = x @ vh.T                                       # (N, r)   vh_i x_t
        return (a.to(dt) * b.to(dt)).sum(0)                # (r,)
    if mode == "weight":
        dw = dy.T @ x                                      # (d_out, d_in) this micro-batch's dW
        return ((u.T @ dw).to(dt) * vh.to(dt)).sum(1)      # (r,)  rowsum((Uᵀ dW) ⊙ Vh)
    raise ValueError(f"unknown δS gradient mode {mode!r}; one of {GRAD_MODES}")


class MergedLinear(torch.autograd.Function):
    """y = F.linear(x, W', bias); backward: dX = dY W', dδS by `delta_s_grad`; W', bias, U, Vh frozen."""

    @staticmethod
    def forward(ctx, x, delta_s, w_merged, bias, u, vh, mode):  # x: (..., d_in); delta_s: (r,) fp32
        ctx.save_for_backward(x, w_merged, u, vh)
        ctx.mode, ctx.delta_s_dtype = mode, delta_s.dtype
        return F.linear(x, w_merged, bias)                 # (..., d_out)

    @staticmethod
    def backward(ctx, dy):                                 # dy: (..., d_out)
        x, w, u, vh = ctx.saved_tensors
        dx = dd = None
        if ctx.needs_input_grad[0]:
            dx = dy @ w                                    # (..., d_in)
        if ctx.needs_input_grad[1]:
            dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
            mode = pick_grad_mode(ctx.mode, dy2.shape[0], w.shape[0], w.shape[1], u.shape[1])
            dd = delta_s_grad(dy2, x2, u, vh, mode).to(ctx.delta_s_dtype)
        return dx, dd, None, None, None, None, None


def merged_linear(x: torch.Tensor, delta_s: torch.Tensor, w_merged: torch.Tensor,
                  bias: torch.Tensor | None, u: torch.Tensor, vh: torch.Tensor,
                  mode: str = "auto") -> torch.Tensor:
    """The merged path's linear: W' x + bias with the gradient flowing to x and δS only."""
    return MergedLinear.apply(x, delta_s, w_merged, bias, u, vh, mode)
