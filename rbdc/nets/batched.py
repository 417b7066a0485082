"""The k parts of an RBDC level trained as one batched model (a lever measured in ``benchmarks/levers.py``; the
trainer does not use it yet).

The parts of a level are k timm ViTs of one architecture, each trained on its own batch. :class:`BatchedViT` holds
their weights stacked along a leading part dimension and runs all k in one pass: every Linear is one
``torch.baddbmm`` over the parts, each LayerNorm normalises without affine and applies its part's scale and shift,
the patch embedding is one grouped convolution, and elsewhere (attention, GELU, drop-path) the k batches are one
batch of k x B images. ``forward(x)`` takes ``[k, B, 3, H, W]`` and returns ``[k, B, classes]``: part i's logits of
its own images, equal to the separate part's to fp32 round-off (tests).

Training it as the k parts: the loss is the sum over parts of each part's mean loss (:func:`part_loss`), gradients
are clipped per part (:func:`clip_per_part`), and AdamW decays exactly the tensors the separate parts decay
(:func:`param_groups`); AdamW is elementwise, so the update equals k separate updates.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import VisionTransformer

from .models import settings

# how a part's tensor sits in the batched one: "linear" (W[out, in] -> [k, in, out]), "row" ([D] -> [k, 1, D]),
# "lead" (any shape -> [k, *shape]), "cat" (concatenated along dim 0: the grouped patch convolution)
_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_NORMS = ("norm1", "norm2")


def _unsupported(p: VisionTransformer) -> list[str]:
    """What a ViT has that the batched model does not implement."""
    blocks = list(p.blocks)
    checks = {
        "register tokens": p.num_prefix_tokens != 1 or p.cls_token is None,
        f"pooling {p.global_pool!r}": p.global_pool != "token",
        "a pre-norm or fc_norm": not (isinstance(p.norm_pre, nn.Identity) and isinstance(p.fc_norm, nn.Identity)),
        "a patch norm or dynamic size": not isinstance(p.patch_embed.norm, nn.Identity) or p.dynamic_img_size,
        "layer scale": any(not isinstance(b.ls1, nn.Identity) for b in blocks),
        "an activation other than exact GELU": any(
            type(b.mlp.act) is not nn.GELU or b.mlp.act.approximate != "none" for b in blocks
        ),
        "a qk or attention norm": any(
            not (isinstance(b.attn.q_norm, nn.Identity) and isinstance(b.attn.norm, nn.Identity)) for b in blocks
        ),
    }
    return [what for what, bad in checks.items() if bad]


def check_batchable(parts: list[nn.Module]) -> None:
    """Refuse, in one line, parts that cannot be one batched model: not timm ViTs of the supported shape, or
    differing in any setting."""
    if len(parts) < 1:
        raise ValueError("a batched model needs at least one part")
    for i, p in enumerate(parts):
        if not isinstance(p, VisionTransformer):
            raise ValueError(
                f"part {i} is a {type(p).__name__}: only timm VisionTransformer parts can be batched; "
                f"train them separately"
            )
        odd = _unsupported(p)
        if odd:
            raise ValueError(
                f"part {i} has {', '.join(odd)}: the batched model covers class-token DeiT-style ViTs "
                f"only; train the parts separately"
            )
    ref = settings(parts[0])
    for i, p in enumerate(parts[1:], 1):
        mine = settings(p)
        diff = next((k for k in sorted(set(ref) | set(mine)) if ref.get(k) != mine.get(k)), None)
        if diff is not None:
            raise ValueError(
                f"parts 0 and {i} differ in {diff} ({ref.get(diff)!r} vs {mine.get(diff)!r}): parts "
                f"of different architectures cannot be batched; train them separately"
            )


def _stack(tensors: list[torch.Tensor], how: str) -> torch.Tensor:
    if how == "linear":
        return torch.stack([t.t() for t in tensors])
    if how == "row":
        return torch.stack(tensors)[:, None, :]
    if how == "cat":
        return torch.cat(tensors)
    return torch.stack(tensors)


def _unstack(t: torch.Tensor, how: str, k: int) -> list[torch.Tensor]:
    if how == "linear":
        return [t[i].t() for i in range(k)]
    if how == "row":
        return [t[i, 0] for i in range(k)]
    if how == "cat":
        return list(t.chunk(k))
    return [t[i] for i in range(k)]


class BatchedViT(nn.Module):
    """k same-architecture timm ViTs as one module: ``forward(x[k, B, 3, H, W]) -> logits[k, B, classes]``."""

    def __init__(self, parts: list[VisionTransformer]):
        super().__init__()
        check_batchable(parts)
        p0 = parts[0]
        self.k, self.embed_dim, self.num_heads = len(parts), p0.embed_dim, p0.blocks[0].attn.num_heads
        self.patch = p0.patch_embed.proj.stride
        self.eps = [b.norm1.eps for b in p0.blocks] + [p0.norm.eps]
        self.scale = p0.blocks[0].attn.scale
        self.fused_attn = bool(p0.blocks[0].attn.fused_attn)  # timm's kernel choice of the parts (SDPA or explicit)
        self.drop_path = nn.ModuleList(
            [
                DropPath(b.drop_path1.drop_prob) if isinstance(b.drop_path1, DropPath) else nn.Identity()
                for b in p0.blocks
            ]
        )
        self.links: dict[str, tuple[str, str]] = {}  # batched name -> (the parts' name, how it is stacked)
        plan = [
            ("patch_embed.proj.weight", "cat"),
            ("patch_embed.proj.bias", "cat"),
            ("cls_token", "lead"),
            ("pos_embed", "lead"),
            ("norm.weight", "row"),
            ("norm.bias", "row"),
            ("head.weight", "linear"),
            ("head.bias", "row"),
        ]
        for i in range(len(p0.blocks)):
            plan += [(f"blocks.{i}.{n}.{w}", "row") for n in _NORMS for w in ("weight", "bias")]
            plan += [(f"blocks.{i}.{n}.weight", "linear") for n in _LINEARS]
            plan += [(f"blocks.{i}.{n}.bias", "row") for n in _LINEARS]
        named = [dict(p.named_parameters()) for p in parts]
        for name, how in plan:
            flat = name.replace(".", "_")
            self.register_parameter(flat, nn.Parameter(_stack([n[name].detach() for n in named], how).clone()))
            self.links[flat] = (name, how)
        skip = part_no_decay(p0)
        self.no_decay = {f for f, (name, _) in self.links.items() if name in skip}

    def _p(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "_"))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.baddbmm(self._p(name + ".bias"), x, self._p(name + ".weight"))

    def _norm(self, x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=eps) * self._p(name + ".weight") + self._p(name + ".bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, c, h, w = x.shape
        d = self.embed_dim
        x = F.conv2d(
            x.transpose(0, 1).reshape(b, k * c, h, w),
            self._p("patch_embed.proj.weight"),
            self._p("patch_embed.proj.bias"),
            stride=self.patch,
            groups=k,
        )
        x = x.flatten(2).view(b, k, d, -1).permute(1, 0, 3, 2)  # [k, B, L, D]
        x = torch.cat([self._p("cls_token").expand(k, b, 1, d), x], dim=2) + self._p("pos_embed")
        n = x.shape[2]
        x = x.reshape(k, b * n, d)
        for i, dp in enumerate(self.drop_path):
            x = x + dp(
                self._attention(self._norm(x, f"blocks.{i}.norm1", self.eps[i]), i, b, n).view(k * b, n, d)
            ).view(k, b * n, d)
            y = self._linear(self._norm(x, f"blocks.{i}.norm2", self.eps[i]), f"blocks.{i}.mlp.fc1")
            y = self._linear(F.gelu(y), f"blocks.{i}.mlp.fc2")
            x = x + dp(y.view(k * b, n, d)).view(k, b * n, d)
        x = self._norm(x, "norm", self.eps[-1]).view(k, b, n, d)[:, :, 0]  # class token
        return self._linear(x, "head")

    def _attention(self, x: torch.Tensor, i: int, b: int, n: int) -> torch.Tensor:
        k, d, heads = self.k, self.embed_dim, self.num_heads
        qkv = self._linear(x, f"blocks.{i}.attn.qkv").view(k * b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, kk, v = qkv.unbind(0)
        if self.fused_attn:
            y = F.scaled_dot_product_attention(q, kk, v)
        else:  # timm's explicit attention
            y = ((q * self.scale) @ kk.transpose(-2, -1)).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(k, b * n, d)
        return self._linear(y, f"blocks.{i}.attn.proj")

    def part_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each part's parameters under its timm names (detached views)."""
        out: list[dict] = [{} for _ in range(self.k)]
        for flat, (name, how) in self.links.items():
            for i, t in enumerate(_unstack(getattr(self, flat).detach(), how, self.k)):
                out[i][name] = t
        return out


def param_groups(named, no_decay: set[str], weight_decay: float) -> list[dict]:
    """AdamW's groups over stacked tensors ``named`` ((name, tensor) pairs): decay exactly those that timm's
    optimizer factory decays in a separate part (``no_decay``: the rest, e.g. :attr:`BatchedViT.no_decay`)."""
    named = list(named)
    return [
        {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0},
        {"params": [p for n, p in named if n not in no_decay], "weight_decay": weight_decay},
    ]


def part_no_decay(part: nn.Module) -> set[str]:
    """The names of a part's tensors that timm does not decay: 1-d, biases, and the model's ``no_weight_decay``."""
    skip = part.no_weight_decay() if hasattr(part, "no_weight_decay") else set()
    return {n for n, p in part.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or n in skip}


def part_loss(crit, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum over parts of each part's mean loss: ``crit`` over all k x B rows (a mean) times k."""
    k = logits.shape[0]
    return crit(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) * k


@torch.no_grad()
def clip_per_part(params, k: int, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` of each of k parts on its own, over stacked ``params`` (a :class:`BatchedViT`'s, or
    ``torch.func.stack_module_state``'s): part i's gradients scaled by max_norm / (its norm + 1e-6), at most 1.
    Returns the k norms. (Every stacked gradient, viewed as [k, -1], holds part i in row i.)"""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.view(k, -1).float().pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.view(k, -1).mul_(coef[:, None].to(g.dtype))
    return norms
