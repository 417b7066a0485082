# Mask R-CNN, RBDC DeiT-S backbone (e.g. 2 x DeiT-Ti-width models coupled, then trained), simple FPN, COCO 1x.
# Backbone weights: $BACKBONE_CKPT or `--backbone` (an rbdc run folder, its final.safetensors or an export-mmdet .pth).
_base_ = ["./_base_/mask-rcnn_rbdc-vit_simplefpn.py", "./_base_/coco-instance.py"]

model = dict(
    backbone=dict(
        model_name="deit_small_patch16_224", init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-deit-s.pth}}")
    ),
    neck=dict(in_channels=384),
)
