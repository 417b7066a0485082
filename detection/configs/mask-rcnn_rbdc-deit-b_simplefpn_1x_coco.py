# Mask R-CNN, RBDC DeiT-B backbone (e.g. 2 x DeiT-S-width or 4 x DeiT-Ti-width models coupled), simple FPN, COCO 1x.
_base_ = ["./_base_/mask-rcnn_rbdc-vit_simplefpn.py", "./_base_/coco-instance.py"]

model = dict(
    backbone=dict(
        model_name="deit_base_patch16_224",
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-deit-b.pth}}"),
    ),
    neck=dict(in_channels=768),
)
