"""The published numbers a run report shows beside its measured rows, never mixed into them: the paper's claim and
the DeiT reference accuracies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quoted:
    """A published number shown beside the measured rows, never mixed into them.

    Attributes:
        label: How the row is marked in the table, e.g. ``quoted (paper)``.
        protocol: Protocol the number belongs to.
        dataset: Dataset it was measured on.
        model: timm model name of the target model.
        top1: Quoted ImageNet top-1 in percent, or None when the claim is relative.
        flops_rel: Quoted training FLOPs relative to standard training, or None.
        epochs: Training epochs behind the number, when quoted.
        claim: The claim in words.
        source: Where it is quoted from.
    """

    label: str
    protocol: str
    dataset: str
    model: str
    top1: float | None
    flops_rel: float | None
    epochs: int | None
    claim: str
    source: str


QUOTED: tuple[Quoted, ...] = (
    Quoted(
        "quoted (paper)",
        "rbdc",
        "imagenet-1k",
        "deit_base_patch16_224",
        None,
        0.70,
        None,
        "RBDC: 30% fewer training FLOPs than standard training at matched ImageNet accuracy (DeiT-B)",
        "arXiv 2605.23656 (abstract)",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_tiny_patch16_224",
        72.2,
        None,
        300,
        "DeiT-Ti, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_small_patch16_224",
        79.9,
        None,
        300,
        "DeiT-S, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_base_patch16_224",
        81.8,
        None,
        300,
        "DeiT-B, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
)
