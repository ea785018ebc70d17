"""The MLM decoder and its cross-entropy in one autograd function, in tiles.

`linear_cross_entropy(x, weight, bias, labels)` equals `F.cross_entropy(F.linear(x, weight, bias).float(),
labels)` (mean over the rows), and its gradients, without ever holding the (rows, vocab) logits: rows are
taken `ROWS` at a time and the vocabulary `COLS` words at a time. Each tile is a small contiguous GEMM
(on CPU a (640, 256) x (256, 30522) product written into one wide matrix runs at about half the speed of
the same product in 2,048-column tiles), through the GEMM library of the model's linears (oneDNN where
bertspeed/model/cpu_linear.py picks it: 1.05x for the whole loss at bert-mini's shapes). Each tile is
exponentiated against its own row maxima while it is still in cache; once every tile of a row block is done,
one rescaling per tile gives the softmax. The gradient (softmax - one-hot) / rows is formed in place and fed
straight into the GEMMs for the input, weight and bias gradients. Those are computed in the forward (the loss
is a scalar: backward only scales them by the incoming gradient), so nothing of vocabulary width is kept for
backward but the weight gradient itself.

Precision: under torch.autocast the GEMMs run in the autocast dtype (bf16) with fp32 softmax, as
`F.linear` under autocast followed by `.float()` does; the weight/bias gradients are accumulated in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertspeed.model.cpu_linear import uses_onednn
from bertspeed.training.hardware import onednn_linear

ROWS = 256  # rows of logits held at once: 256 x 30,522 fp32 = 31 MB
COLS = 2048  # vocabulary words per GEMM tile


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _logits(xr, weight, bias):
    """fp32 logits xr @ weight.T + bias of one tile, through the GEMM library of the model's linears."""
    if uses_onednn(xr):
        return onednn_linear(xr, weight, bias)
    return F.linear(xr, weight, bias).float()


def _exp_tiles(xr, labels, weight, bias, cols):
    """The row block `xr` against the whole vocabulary, `cols` words at a time. While a tile is still in cache
    it is turned into exp(logits - tile max) in place. Returns the tiles, their row maxima and row sums
    (tiles, m) and the labels' logits."""
    m, vocab = xr.shape[0], weight.shape[0]
    tiles, maxima, sums = [], [], []
    target = torch.empty(m, dtype=torch.float32, device=xr.device)
    for c0 in range(0, vocab, cols):
        tile = _logits(xr, weight[c0:c0 + cols], None if bias is None else bias[c0:c0 + cols])
        rows = ((labels >= c0) & (labels < c0 + tile.shape[1])).nonzero().squeeze(1)
        target[rows] = tile[rows, labels[rows] - c0]
        tile_max = tile.amax(1)
        tile.sub_(tile_max[:, None]).exp_()
        tiles.append((c0, rows, tile))
        maxima.append(tile_max)
        sums.append(tile.sum(1))
    return tiles, torch.stack(maxima), torch.stack(sums), target


def _add_grads(tiles, scales, labels, total, xr, weight, gx, gw, gb):
    """Each tile becomes (softmax - one-hot) / total, in place, and goes straight into the GEMMs for
    gx (rows of xr) += G @ W_tile, gw tile += G^T @ xr and gb tile += G.sum(0)."""
    dtype = xr.dtype
    onednn_dx = uses_onednn(xr)
    for (c0, rows, tile), scale in zip(tiles, scales, strict=True):
        tile.mul_(scale[:, None])
        tile[rows, labels[rows] - c0] -= 1.0 / total
        gd = tile.to(dtype)
        w = weight[c0:c0 + tile.shape[1]]
        if onednn_dx:
            gx.add_(onednn_linear(gd, w.t()))
        elif dtype == torch.float32:
            gx.addmm_(gd, w)
        else:
            gx.add_(gd @ w)
        if dtype == torch.float32:
            gw[c0:c0 + w.shape[0]].addmm_(gd.t(), xr)
        else:
            gw[c0:c0 + w.shape[0]].add_(gd.t() @ xr)
        if gb is not None:
            gb[c0:c0 + w.shape[0]].add_(tile.sum(0))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, labels, dtype, need_grad, rows, cols):
        with torch.autocast(x.device.type, enabled=False):
            return _forward(ctx, x, weight, bias, labels, dtype, need_grad, rows, cols)

    @staticmethod
    def backward(ctx, grad_out):
        gx, gw, gb = ctx.grads
        del ctx.grads
        if not bool(grad_out == 1):
            gx, gw = gx * grad_out, gw * grad_out
            gb = None if gb is None else gb * grad_out
        return gx.to(ctx.dtypes[0]), gw.to(ctx.dtypes[1]), None if gb is None else gb.to(ctx.dtypes[2]), \
            None, None, None, None, None


def _forward(ctx, x, weight, bias, labels, dtype, need_grad, rows, cols):
    total = x.shape[0]
    xc, wc = x.to(dtype), weight.to(dtype)
    bc = None if bias is None else bias.to(dtype)
    f32 = {"dtype": torch.float32, "device": x.device}
    gx = torch.zeros(x.shape, **f32) if need_grad else None
    gw = torch.zeros(weight.shape, **f32) if need_grad else None
    gb = torch.zeros(weight.shape[0], **f32) if need_grad and bias is not None else None
    loss = torch.zeros((), **f32)
    for r0 in range(0, total, rows):
        xr, lab = xc[r0:r0 + rows], labels[r0:r0 + rows]
        tiles, maxima, sums, target = _exp_tiles(xr, lab, wc, bc, cols)
        rowmax = maxima.amax(0)
        scales = (maxima - rowmax).exp_()  # exp(tile max - row max): rescales each tile's exp and sum
        sumexp = (sums * scales).sum(0)
        loss += (rowmax + sumexp.log() - target).sum()
        if need_grad:
            _add_grads(tiles, scales.div_(sumexp * total), lab, total, xr, wc, gx[r0:r0 + rows], gw, gb)
    if need_grad:
        ctx.grads = (gx, gw, gb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
    return loss / total


def linear_cross_entropy(x, weight, bias, labels, rows: int = ROWS, cols: int = COLS):
    """Mean cross-entropy of the logits `x @ weight.T + bias` (x (M, H), weight (V, H), bias (V,) or None,
    labels (M,) in [0, V)), computed tile by tile; equal to `F.cross_entropy(F.linear(x, weight,
    bias).float(), labels)` to rounding."""
    vocab = weight.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"linear_cross_entropy: labels must lie in [0, {vocab}) (the vocabulary), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if x.shape[0] == 0:
        raise ValueError("linear_cross_entropy: no rows (no masked position in the batch)")
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _LinearCrossEntropy.apply(x, weight, bias, labels, _compute_dtype(x), need_grad, rows, cols)
