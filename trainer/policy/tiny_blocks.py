"""Transformer blocks of the tiny policy, with the attention written out so the KV cache is explicit.

Pre-norm blocks (LayerNorm before each sub-layer, residual after), as MagpieTTS's
transformer does. Masks are boolean, True where a query may attend to a key.
Self-attention takes an optional :class:`KVCache`: new keys and values are written
into a preallocated buffer at ``cache.length`` and the query attends to everything
written so far, so one decoder step costs one token, not the whole prefix.
Cross-attention takes its memory keys and values precomputed (:meth:`Attention.project_kv`),
once per generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Keys and values [B, heads, capacity, head_dim] of one self-attention layer."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0  # positions written so far

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int,
              *, like: torch.Tensor) -> "KVCache":
        shape = (batch, heads, capacity, head_dim)
        return cls(like.new_zeros(shape), like.new_zeros(shape))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write K, V [B, H, T, D] after what is there; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache full: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Multi-head attention: queries from X, keys and values from X (self) or a memory (cross)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, head_dim]"""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """X [B, T, d]; MASK [B, 1, T, S] bool; KV: precomputed memory keys/values
        (cross-attention), else keys and values come from X (and go into CACHE)."""
        q = self.heads(self.q(x))
        if kv is None:
            k, v = self.project_kv(x)
            if cache is not None:
                k, v = cache.append(k, v)
        else:
            k, v = kv
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(d_ffn, d_model))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention over text bytes, then a feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention over frames, cross-attention to the text, a feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.cross_attn = Attention(d_model, n_heads, dropout)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor,
                memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
                *, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), self_mask, cache=cache))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory_mask, kv=memory_kv))
        return x + self.drop(self.ffn(self.norm3(x)))
