"""The MLM decoder and its cross-entropy in one autograd function, in tiles.

`linear_cross_entropy(x, weight, bias, labels)` equals `F.cross_entropy(F.linear(x, weight, bias).float(),
labels)` (mean over the rows), and its gradients, without ever holding the (rows, vocab) logits: rows are
taken `ROWS` at a time and the vocabulary `COLS` words at a time. Each tile is a small contiguous GEMM
(on CPU a (640, 256) x (256, 30522) product written into one wide matrix runs at about half the speed of
the same product in 2,048-column tiles), the softmax runs on a block that stays in cache, and the gradient
(softmax - one-hot) / rows is formed in place and fed straight into the GEMMs for the input, weight and bias
gradients. Those are computed in the forward (the loss is a scalar: backward only scales them by the
incoming gradient), so nothing of vocabulary width is kept for backward but the weight gradient itself.

Precision: under torch.autocast the GEMMs run in the autocast dtype (bf16) with fp32 softmax, as
`F.linear` under autocast followed by `.float()` does; the weight/bias gradients are accumulated in fp32.
"""
from __future__ import annotations

import torch

ROWS = 256  # rows of logits held at once: 256 x 30,522 fp32 = 31 MB
COLS = 2048  # vocabulary words per GEMM tile


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _tile_logits(buf, xr, weight, bias, cols):
    """Logits of rows `xr` against the whole vocabulary, as a list of contiguous (m, <=cols) fp32 tiles
    laid out one after the other in `buf`."""
    m, vocab, tiles, offset = xr.shape[0], weight.shape[0], [], 0
    for c0 in range(0, vocab, cols):
        n = min(cols, vocab - c0)
        tile = buf[offset:offset + m * n].view(m, n)
        offset += m * n
        b = None if bias is None else bias[c0:c0 + n]
        if xr.dtype == torch.float32:
            torch.mm(xr, weight[c0:c0 + n].t(), out=tile) if b is None else \
                torch.addmm(b, xr, weight[c0:c0 + n].t(), out=tile)
        else:
            logits = xr @ weight[c0:c0 + n].t() if b is None else torch.addmm(b, xr, weight[c0:c0 + n].t())
            tile.copy_(logits)
        tiles.append(tile)
    return tiles


def _target_offsets(labels, m, vocab, cols):
    """Offsets in the tile buffer of each row's label logit."""
    tile = torch.div(labels, cols, rounding_mode="floor")
    width = (vocab - tile * cols).clamp(max=cols)
    return m * tile * cols + torch.arange(m, device=labels.device) * width + (labels - tile * cols)


def _add_grads(tiles, xr, weight, gx, gw, gb, cols):
    """gx (rows of xr) = sum over tiles of G @ W_tile; gw, gb tiles += G^T @ xr, G.sum(0)."""
    dtype = xr.dtype
    for i, tile in enumerate(tiles):
        c0, n = i * cols, tile.shape[1]
        gd = tile if dtype == torch.float32 else tile.to(dtype)
        w = weight[c0:c0 + n]
        if dtype == torch.float32:
            gx.addmm_(gd, w)
            gw[c0:c0 + n].addmm_(gd.t(), xr)
        else:
            gx.add_(gd @ w)
            gw[c0:c0 + n].add_(gd.t() @ xr)
        if gb is not None:
            gb[c0:c0 + n].add_(tile.sum(0))


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
    total, vocab = x.shape[0], weight.shape[0]
    xc, wc = x.to(dtype), weight.to(dtype)
    bc = None if bias is None else bias.to(dtype)
    f32 = {"dtype": torch.float32, "device": x.device}
    gx = torch.zeros(x.shape, **f32) if need_grad else None
    gw = torch.zeros(weight.shape, **f32) if need_grad else None
    gb = torch.zeros(vocab, **f32) if need_grad and bias is not None else None
    buf = torch.empty(min(rows, total) * vocab, **f32)
    loss = torch.zeros((), **f32)
    for r0 in range(0, total, rows):
        xr, lab = xc[r0:r0 + rows], labels[r0:r0 + rows]
        m = xr.shape[0]
        tiles = _tile_logits(buf, xr, wc, bc, cols)
        target_at = _target_offsets(lab, m, vocab, cols)
        target = buf[target_at]  # the labels' logits (a copy)
        rowmax = torch.stack([t.amax(1) for t in tiles]).amax(0)
        sumexp = torch.zeros(m, **f32)
        for t in tiles:
            t.sub_(rowmax[:, None]).exp_()
            sumexp += t.sum(1)
        loss += (rowmax + sumexp.log() - target).sum()
        if need_grad:  # (softmax - one-hot) / total, in place
            for t in tiles:
                t.mul_((1.0 / (sumexp * total))[:, None])
            buf[target_at] -= 1.0 / total
            _add_grads(tiles, xr, wc, gx[r0:r0 + m], gw, gb, cols)
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
