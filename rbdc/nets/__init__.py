"""Networks: width-scaled timm variants and their registry, the small layers coupling needs, the batched parts,
DiffusionBlocks, and weights files that rebuild a network."""
