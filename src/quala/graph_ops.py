"""Export-aware tensor operations of the length-adaptive forward (issue 18).

Run eagerly, each is plain PyTorch. Traced by ``torch.onnx.export`` (:mod:`quala.export`), each becomes the one
ONNX node it stands for, with constant shapes: the legacy exporter turns every ``view(B, n, H, dh)`` into
``Shape``/``Gather``/``Unsqueeze``/``Concat`` arithmetic on the dynamic batch and sequence axes, and
``index_put``/``gather`` into index arithmetic around ``ScatterND``/``GatherElements``. In the length-adaptive graph
that arithmetic was ~450 of ~730 nodes after ONNX Runtime's own optimizations, a fixed cost per request that does
not shrink with the tokens dropped (docs/inference.md, "Where the time goes").

- :func:`reshape`: ONNX ``Reshape`` semantics (0 copies the input's dimension, -1 is inferred) with a constant shape.
- :func:`put_rows`: a flat-row ``ScatterND``.
"""

from __future__ import annotations

import torch


def exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


def _int64(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _resolve(shape: tuple[int, ...], input_shape: torch.Size) -> list[int]:
    return [int(input_shape[i]) if s == 0 else int(s) for i, s in enumerate(shape)]


class _Reshape(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shape):
        return x.reshape(_resolve(shape, x.shape))

    @staticmethod
    def symbolic(g, x, shape):
        return g.op("Reshape", x, _int64(g, list(shape)))


def reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` reshaped as ONNX ``Reshape`` does with the constant ``shape``: 0 copies the input's dimension at that
    index, -1 is inferred. Exported as that one node; the shape must hold a -1 (the exporter's shape inference
    rejects a 0 without one)."""
    if -1 not in shape:
        raise ValueError(f"reshape needs a -1 in its shape, got {shape}")
    return _Reshape.apply(x, tuple(int(s) for s in shape)) if exporting() else x.reshape(_resolve(shape, x.shape))


class _PutRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buffer, idx, rows):
        return buffer.index_put((idx,), rows)

    @staticmethod
    def symbolic(g, buffer, idx, rows):
        return g.op("ScatterND", buffer, g.op("Unsqueeze", idx, _int64(g, [-1])), rows)


def put_rows(buffer: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Out-of-place ``buffer[idx[b, j]] = rows[b, j]`` for a flat ``buffer`` (m, D), ``idx`` (B, k) and ``rows``
    (B, k, D): one row ``ScatterND`` when exported. Rows sent to one index must be interchangeable (a sink row)."""
    return _PutRows.apply(buffer, idx, rows) if exporting() else buffer.index_put((idx,), rows)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, mask, num_heads, scale):
        B, n, D = h.shape
        dh = D // num_heads
        qkv = torch.matmul(h, weight) + bias  # (B, n, 3D)
        q, k, v = (x.reshape(B, n, num_heads, dh).transpose(1, 2) for x in qkv.split(D, dim=-1))
        bias_ = torch.where(mask[:, None, None, :].bool(), 0.0, -10000.0).to(h.dtype)  # (B, 1, 1, n)
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias_, dim=-1)  # (B, H, n, n)
        return torch.matmul(probs, v).transpose(1, 2).reshape(B, n, D)

    @staticmethod
    def symbolic(g, h, weight, bias, mask, num_heads, scale):
        out = g.op("com.microsoft::Attention", h, weight, bias, mask, num_heads_i=num_heads, scale_f=scale)
        out.setType(h.type())
        return out


def attention(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """Multi-head self-attention context (B, n, D) of ``h`` (B, n, D) with packed Q/K/V ``weight`` (D, 3D) and
    ``bias`` (3D,), keys masked by ``mask`` (B, n) int32 (1 = attend; masked keys get -10000 before the softmax, as
    in ONNX Runtime). Exported as ONNX Runtime's ``com.microsoft.Attention``, which dynamic quantization turns into
    the fused int8 ``QAttention`` of the full-length graph; it has no probabilities output."""
    return _Attention.apply(h, weight, bias, mask, int(num_heads), float(scale))
