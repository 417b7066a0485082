"""DiffusionBlocks (Shing, Koyama, Akiba, ICLR 2026; arXiv 2506.14202) on a timm ViT: the block-wise baseline.

The ViT's L layers are cut into B contiguous blocks of L/B layers. Each block is a denoiser of the label embedding
for one band of noise levels; a training step picks one block and runs only its layers (plus the shared patch/label
/time embeddings, final norm and head), so only one block's activations are alive and a step costs about 1/B of a
full forward/backward. Mechanism as in the official code (SakanaAI/DiffusionBlocks, read through the fork
Z30G0D/DiffusionBlocks@ade0b08 and sethnabarro-imi/DiffusionBlocks; methods.md section 6.5):

* EDM noise on z = L2-normalised label embedding, sigma_data 0.5, preconditioning c_skip/c_out/c_in and
  c_noise = log(sigma)/4; the scaled noisy embedding c_in * z_t takes the place of the cls token.
* log sigma ~ N(p_mean=-1.2, p_std=1.2^2) clipped to [0.002, 80], cut into B bands of equal probability mass; block 0
  (the first layers) owns the highest band. A step draws its block uniformly and sigma inside the block's band
  widened by gamma=0.05 of its log-width on each side (clipped to the global range), distributed as the truncated
  log-normal.
* Loss: cross-entropy of the head's logits on the denoised output, weighted by (sigma^2 + sd^2) / (sigma sd)^2:
  per sample by default (the paper's formula, ``loss_weighting: per_sample``); the official code multiplies the
  [n] losses by the [n, 1] weights, an [n, n] broadcast whose mean is mean(w) x mean(ce), so every sample of the
  batch counts equally (``loss_weighting: batch_mean``).
* Time conditioning: adaLN-Zero as in DiT (the official choice): c = SiLU(MLP(sinusoid(c_noise))) of width
  ``cond_dim`` (official default: ViT width // 6), and per layer a zero-initialised Linear(c) gives shift/scale/gate
  for attention and MLP (so every layer starts as the identity); a final zero-initialised Linear(c) modulates the
  denoised embedding before the zero-initialised head. The official ViT applies one more SiLU after each modulation
  Linear, which bounds every shift/scale/gate below by -0.28; DiT's form is the default here (``adaln_silu: true``
  gives the official one).
* Inference: z ~ N(0, 1 + sigma_max^2), ``inference_steps - 1`` Euler steps (default B-1, the official default)
  over that many sigmas equally spaced in the CDF (from sigma_max down to sigma_min; the block for each sigma is the
  one whose band holds it, i.e. block i at step i when there are B), each step's denoised estimate being
  softmax(logits) @ label embeddings; then a final denoise at sigma_min whose head logits classify. With the
  default, B block evaluations in all: one full-depth pass, plus B times the shared parts. Training almost never
  draws sigma near sigma_max (at B=2, ~5e-4 of block 0's draws lie above 20), so the first evaluation extrapolates
  the time conditioning: the official SiLU on the modulations keeps every 1 + scale above 0.72 there, while DiT's
  unbounded form can flip features' signs (reports/diffusionblocks-diagnosis.md). The starting noise comes
  from a fixed-seed CPU generator, so evaluation is deterministic and never draws from the training RNG streams.

Deliberate differences from the official code (options allow the official behaviour where it is cheap):

* ``euler_embeds: normalized`` (default) builds the Euler step's denoised estimate from the L2-normalised label
  embeddings, the same space as the training target; the official code uses the raw embedding table
  (``euler_embeds: raw``).
* Label smoothing of the recipe (``smoothing``) is applied to the cross-entropy (official: none), so that the
  protocol differs from the scratch/RBDC recipes it is compared with only by the protocol.

Recipe options (``diffusionblocks: {...}``): see :data:`OPTIONS`.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import VisionTransformer

from ..errors import UserError
from ..flops import count_macs, TRAIN_FLOPS_PER_FORWARD
from .diffusion_noise import _fp32, _TimeEmbed, band_edges, inference_sigmas

__all__ = ["OPTIONS", "DiffusionBlocksError", "DiffusionBlocksViT", "build_model"]

OPTIONS = {
    "blocks": 3,  # B: number of blocks (must divide the ViT depth)
    "gamma": 0.05,  # band overlap: each side widened by gamma x the band's log-width
    "p_mean": -1.2,  # log sigma ~ N(p_mean, p_std^2) ...
    "p_std": 1.2,
    "sigma_min": 0.002,  # ... clipped to [sigma_min, sigma_max]
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "cond_dim": None,  # width of the time conditioning (default: ViT width // 6, as the official code)
    "adaln_silu": False,  # True: SiLU after each modulation Linear, as the official code (DiT has none)
    "freq_dim": 256,  # sinusoidal features of c_noise (DiT's TimestepEmbedder)
    "euler_embeds": "normalized",  # normalized | raw: embeddings of the Euler step's denoised estimate
    "eval_seed": 0,  # seed of the starting noise at inference
    "loss_weighting": "per_sample",  # per_sample: mean(w_i ce_i) | batch_mean: mean(w) mean(ce), the official code
    "inference_steps": None,  # sigmas of the inference ODE (None: B, one block evaluation each; official default)
}


class DiffusionBlocksError(UserError, ValueError):
    """A DiffusionBlocks recipe or trunk that cannot work; the message names the key or value and the fix."""


def _check_trunk(trunk: nn.Module, name: str, blocks: int) -> None:
    def fail(why: str) -> None:
        raise DiffusionBlocksError(f"diffusionblocks needs a plain timm VisionTransformer trunk; model {name!r} {why}")

    if not isinstance(trunk, VisionTransformer):
        fail(f"is a {type(trunk).__name__}")
    if trunk.cls_token is None or trunk.global_pool != "token":
        fail(
            "has no class token read by the head (the noisy label embedding takes the cls slot): use "
            "class_token=True, global_pool='token'"
        )
    if trunk.reg_token is not None or getattr(trunk, "attn_pool", None) is not None or trunk.dynamic_img_size:
        fail("uses register tokens, attention pooling or dynamic_img_size, which are not supported")
    needed = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    if not all(all(hasattr(blk, a) for a in needed) for blk in trunk.blocks):
        fail("has blocks that are not timm's pre-norm Block (attention then MLP), which adaLN-Zero modulates")
    depth = len(trunk.blocks)
    if blocks < 2 or depth % blocks:
        raise DiffusionBlocksError(
            f"diffusionblocks.blocks={blocks} must be >= 2 and divide the depth {depth} of "
            f"{name!r}; pick a divisor of {depth} (or set model_kwargs.depth)"
        )


def _options(config: dict) -> dict:
    """:data:`OPTIONS` overridden by ``config["options"]``, checked: an unknown key or a bad value is refused."""
    opts = {**OPTIONS, **config.get("options", {})}
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise DiffusionBlocksError(
            f"unknown option(s) {', '.join('diffusionblocks.' + k for k in unknown)}; "
            f"known: {', '.join(sorted(OPTIONS))}"
        )
    if not 0 < opts["sigma_min"] < opts["sigma_max"] or opts["gamma"] < 0 or opts["p_std"] <= 0:
        raise DiffusionBlocksError(
            f"diffusionblocks needs 0 < sigma_min < sigma_max, gamma >= 0, p_std > 0 "
            f"(got sigma_min={opts['sigma_min']}, sigma_max={opts['sigma_max']}, "
            f"gamma={opts['gamma']}, p_std={opts['p_std']})"
        )
    if opts["inference_steps"] is not None and int(opts["inference_steps"]) < 2:
        raise DiffusionBlocksError(
            f"diffusionblocks.inference_steps must be >= 2 (or null for one per block), got {opts['inference_steps']!r}"
        )
    if opts["loss_weighting"] not in ("per_sample", "batch_mean"):
        raise DiffusionBlocksError(
            f"diffusionblocks.loss_weighting must be per_sample or batch_mean, got {opts['loss_weighting']!r}"
        )
    if opts["euler_embeds"] not in ("normalized", "raw"):
        raise DiffusionBlocksError(
            f"diffusionblocks.euler_embeds must be normalized or raw, got {opts['euler_embeds']!r}"
        )
    return opts


class DiffusionBlocksViT(nn.Module):
    """A timm ViT trained as B diffusion blocks over the label embedding (see the module docstring).

    Args:
        config: ``{"model", "num_classes", "drop_path_rate", "model_kwargs", "label_smoothing", "options"}``;
            ``options`` overrides :data:`OPTIONS`. :func:`build_model` makes it from a recipe.

    Attributes:
        trunk: the timm VisionTransformer (patch embedding, layers, final norm, head); its cls token is removed.
        num_blocks, num_classes, layers_per_block: the split.
        last_block: the block the latest :meth:`training_loss` trained (None before any).
    """

    def __init__(self, config: dict):
        super().__init__()
        opts = _options(config)
        self.config = {**config, "options": opts}
        name, num_classes = config["model"], config["num_classes"]
        kwargs = dict(
            num_classes=num_classes, drop_path_rate=config.get("drop_path_rate", 0.0), **config.get("model_kwargs", {})
        )
        try:
            trunk = timm.create_model(name, pretrained=False, **kwargs)
        except (RuntimeError, TypeError) as e:
            raise DiffusionBlocksError(f"cannot build {name!r} with {kwargs}: {e}") from e
        blocks = int(opts["blocks"])
        _check_trunk(trunk, name, blocks)
        trunk.cls_token = None  # its slot carries the noisy label embedding
        self.trunk = trunk
        self.num_blocks, self.num_classes = blocks, num_classes
        self.layers_per_block = len(trunk.blocks) // blocks
        self.sigma_data = float(opts["sigma_data"])
        self.gamma, self.p_mean, self.p_std = float(opts["gamma"]), float(opts["p_mean"]), float(opts["p_std"])
        self.sigma_min, self.sigma_max = float(opts["sigma_min"]), float(opts["sigma_max"])
        self.label_smoothing = float(config.get("label_smoothing", 0.0))
        self.edges = band_edges(blocks, self.p_mean, self.p_std, self.sigma_min, self.sigma_max)
        self.sigmas = inference_sigmas(blocks, self.p_mean, self.p_std, self.sigma_min, self.sigma_max)
        self.inference_steps = int(opts["inference_steps"] or blocks)
        self.loss_weighting = opts["loss_weighting"]
        width = trunk.embed_dim
        cond = int(opts["cond_dim"] or max(1, width // 6))
        self.label_embed = nn.Embedding(num_classes, width)
        self.time_embed = _TimeEmbed(cond, int(opts["freq_dim"]))
        self.layer_mods = nn.ModuleList(nn.Linear(cond, 6 * width) for _ in trunk.blocks)
        self.final_mod = nn.Linear(cond, 2 * width)
        self.adaln_silu = bool(opts["adaln_silu"])
        self._init_dit()
        self.last_block: int | None = None
        self.rbdc_arch = {"name": name, "factor": Fraction(1), "kwargs": kwargs}
        self.pretrained_cfg = dict(trunk.pretrained_cfg)

    def _init_dit(self) -> None:
        # DiT / official _init_dit: small label and time embeddings, adaLN-Zero (every layer starts as the identity)
        # and a zero head.
        nn.init.normal_(self.label_embed.weight, std=0.02)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for lin in (*self.layer_mods, self.final_mod, self.trunk.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # --- the split ----------------------------------------------------------------------------------------------

    def block_layers(self, block: int) -> range:
        """Indices (into ``trunk.blocks``) of the layers of ``block``; block 0 holds the first layers."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} out of range 0..{self.num_blocks - 1}")
        return range(block * self.layers_per_block, (block + 1) * self.layers_per_block)

    def block_parameter_names(self, block: int) -> set[str]:
        """Names of the parameters that belong to ``block`` alone (its layers and their adaLN modulations)."""
        prefixes = tuple(f"{p}.{i}." for i in self.block_layers(block) for p in ("trunk.blocks", "layer_mods"))
        return {n for n, _ in self.named_parameters() if n.startswith(prefixes)}

    def band(self, block: int) -> tuple[float, float]:
        """The sigma band (low, high) that ``block`` owns; block 0 owns the highest."""
        k = self.num_blocks - 1 - block
        return self.edges[k], self.edges[k + 1]

    def train_band(self, block: int) -> tuple[float, float]:
        """The band widened by gamma of its log-width on each side, clipped to [sigma_min, sigma_max]."""
        lo, hi = self.band(block)
        pad = self.gamma * (math.log(hi) - math.log(lo))
        return max(lo * math.exp(-pad), self.sigma_min), min(hi * math.exp(pad), self.sigma_max)

    def block_for_sigma(self, sigma: float) -> int:
        """The block whose band holds ``sigma`` (the official ``estimate_target_layer``)."""
        k = sum(1 for e in self.edges[1:-1] if sigma >= e)  # band index, ascending sigma
        return self.num_blocks - 1 - k

    def draw_block(self) -> int:
        """The block a training step trains: uniform, from torch's global CPU generator (checkpointed by the engine)."""
        self.last_block = int(torch.randint(self.num_blocks, ()).item())
        return self.last_block

    def sample_sigma(self, block: int, n: int) -> torch.Tensor:
        """``n`` sigmas (float64, CPU) from the clipped log-normal restricted to ``block``'s widened band.

        Draws from torch's global CPU generator, which the engine checkpoints, so a resumed run draws the same.
        """
        lo, hi = self.train_band(block)
        z = lambda s: (math.log(s) - self.p_mean) / self.p_std  # noqa: E731
        cdf = torch.special.ndtr(torch.tensor([z(lo), z(hi)], dtype=torch.float64))
        u = cdf[0] + (cdf[1] - cdf[0]) * torch.rand(n, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * torch.special.ndtri(u)).clamp(lo, hi)

    # --- the denoiser -------------------------------------------------------------------------------------------

    def label_embeddings(self, normalized: bool = True) -> torch.Tensor:
        w = self.label_embed.weight
        return F.normalize(w, dim=-1) if normalized else w

    def _modulation(self, linear: nn.Linear, c: torch.Tensor) -> torch.Tensor:
        out = linear(c)
        return F.silu(out) if self.adaln_silu else out

    def _layer(self, i: int, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        blk = self.trunk.blocks[i]
        shift1, scale1, gate1, shift2, scale2, gate2 = self._modulation(self.layer_mods[i], c).unsqueeze(1).chunk(6, -1)
        x = x + blk.drop_path1(blk.ls1(gate1 * blk.attn(blk.norm1(x) * (1 + scale1) + shift1)))
        x = x + blk.drop_path2(blk.ls2(gate2 * blk.mlp(blk.norm2(x) * (1 + scale2) + shift2)))
        return x

    def denoise(self, patches: torch.Tensor, zt: torch.Tensor, sigma: torch.Tensor, block: int) -> torch.Tensor:
        """Class logits of the denoised label embedding, running only ``block``'s layers.

        Args:
            patches: the trunk's patch embedding of the images, ``[n, N, C]``.
            zt: noisy label embeddings ``[n, C]``; sigma: their noise levels ``[n]``.
        """
        t = self.trunk
        sigma = _fp32(sigma)
        var = sigma**2 + self.sigma_data**2
        c_skip, c_out, c_in = self.sigma_data**2 / var, sigma * self.sigma_data / var.sqrt(), var.rsqrt()
        c = F.silu(self.time_embed(0.25 * sigma.log()))
        z_in = (_fp32(zt) * c_in[:, None]).to(patches.dtype).unsqueeze(1)
        if t.pos_embed is None:
            x = torch.cat([z_in, patches], dim=1)
        elif t.no_embed_class:
            x = torch.cat([z_in, patches + t.pos_embed], dim=1)
        else:
            x = torch.cat([z_in, patches], dim=1) + t.pos_embed
        x = t.norm_pre(t.patch_drop(t.pos_drop(x)))
        for i in self.block_layers(block):
            x = self._layer(i, x, c)
        h = t.norm(x)[:, 0]
        out = c_out[:, None] * _fp32(h) + c_skip[:, None] * _fp32(zt)
        shift, scale = self._modulation(self.final_mod, c).chunk(2, dim=-1)
        out = out * (1 + scale) + shift
        return t.head(t.head_drop(t.fc_norm(out)))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One DiffusionBlocks step's loss: a uniformly drawn block, sigma in its band, sigma-weighted cross-entropy.

        Args:
            x: images ``[n, 3, H, W]``; y: integer class labels ``[n]`` (mixup/cutmix soft targets do not apply).
        """
        if y.dtype.is_floating_point or y.dim() != 1:
            raise DiffusionBlocksError(
                f"diffusionblocks trains on integer class labels, got a {tuple(y.shape)} "
                f"{y.dtype} target: set mixup: 0 and cutmix: 0 in the recipe"
            )
        block = self.draw_block()
        sigma = self.sample_sigma(block, y.shape[0]).to(device=x.device, dtype=torch.get_default_dtype())
        z = F.normalize(self.label_embed(y), dim=-1)
        zt = z + sigma[:, None] * torch.randn_like(z)
        logits = self.denoise(self.trunk.patch_embed(x), zt, sigma, block)
        ce = F.cross_entropy(_fp32(logits), y, reduction="none", label_smoothing=self.label_smoothing)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        if self.loss_weighting == "batch_mean":
            return ce.mean() * weight.mean()
        return (ce * weight).mean()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits by :meth:`predict` (``inference_steps`` block evaluations); with ``y``: the training loss."""
        if y is not None:
            return self.training_loss(x, y)
        return self.predict(x)

    def predict(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Class logits: ``steps - 1`` Euler steps over ``steps`` sigmas, then a final denoise at sigma_min.

        Each evaluation runs the block whose band holds its sigma; ``steps`` defaults to ``inference_steps``
        (None: B, one evaluation per block, a single full-depth pass).
        """
        steps = steps or self.inference_steps
        sigmas = (
            self.sigmas
            if steps == self.num_blocks
            else inference_sigmas(steps, self.p_mean, self.p_std, self.sigma_min, self.sigma_max)
        )
        n = x.shape[0]
        patches = self.trunk.patch_embed(x)
        gen = torch.Generator().manual_seed(int(self.config["options"]["eval_seed"]))
        z = torch.randn(n, self.trunk.embed_dim, generator=gen).to(x.device) * math.sqrt(1 + sigmas[0] ** 2)
        embeds = _fp32(self.label_embeddings(self.config["options"]["euler_embeds"] == "normalized"))
        for s, s_next in itertools.pairwise(sigmas):
            logits = self.denoise(patches, z, torch.full((n,), s, device=x.device), self.block_for_sigma(s))
            denoised = _fp32(logits).softmax(dim=-1) @ embeds
            z = z + (s_next - s) * (z - denoised) / s
        s = sigmas[-1]
        return self.denoise(patches, z, torch.full((n,), s, device=x.device), self.block_for_sigma(s))

    def no_weight_decay(self) -> set[str]:
        return {f"trunk.{k}" for k in self.trunk.no_weight_decay()}

    # --- FLOPs --------------------------------------------------------------------------------------------------

    def _meta_twin(self, img_size: int | None) -> tuple["DiffusionBlocksViT", int]:
        size = img_size or self.trunk.patch_embed.img_size[0]
        cfg = self.config
        if size != self.trunk.patch_embed.img_size[0]:
            cfg = {**cfg, "model_kwargs": {**cfg.get("model_kwargs", {}), "img_size": size}}
        with torch.device("meta"):
            return DiffusionBlocksViT(cfg), size

    def block_macs(self, img_size: int | None = None) -> list[int]:
        """Forward MACs per image of a training step on each block (patch/time embeddings, its layers, head)."""
        twin, size = self._meta_twin(img_size)
        x = torch.empty(1, 3, size, size, device="meta")
        z, sigma = torch.empty(1, twin.trunk.embed_dim, device="meta"), torch.ones(1, device="meta")
        return [
            count_macs(twin, lambda: twin.denoise(twin.trunk.patch_embed(x), z, sigma, b))  # noqa: B023 (called here)
            for b in range(self.num_blocks)
        ]

    def train_flops_per_image(self, img_size: int | None = None) -> int:
        """Training FLOPs per image per step, averaged over the uniformly drawn blocks: 3 x 2 x forward MACs."""
        macs = self.block_macs(img_size)
        return int(round(TRAIN_FLOPS_PER_FORWARD * 2 * sum(macs) / len(macs)))

    def inference_flops_per_image(self, img_size: int | None = None) -> int:
        """Forward FLOPs per image of inference (B block evaluations, the patch embedding computed once)."""
        twin, size = self._meta_twin(img_size)
        x = torch.empty(1, 3, size, size, device="meta")
        return 2 * count_macs(twin, lambda: twin.eval()(x))


def build_model(recipe: dict, num_classes: int) -> DiffusionBlocksViT:
    """The DiffusionBlocks model of a resolved recipe (``model``, ``drop_path``, ``model_kwargs``, ``smoothing``,
    ``diffusionblocks`` options); works under ``torch.device("meta")``."""
    opts = recipe.diffusionblocks or {}
    if not isinstance(opts, dict):
        raise DiffusionBlocksError(f"recipe key diffusionblocks must be a mapping of options, got {opts!r}")
    return DiffusionBlocksViT(
        {
            "model": recipe.model,
            "num_classes": num_classes,
            "drop_path_rate": recipe.drop_path,
            "model_kwargs": dict(recipe.model_kwargs or {}),
            "label_smoothing": recipe.smoothing,
            "options": dict(opts),
        }
    )
