# Mask R-CNN, RBDC DeiT-B backbone, simple FPN, balloon (the DeiT-S balloon recipe with DeiT-B dims).
_base_ = "./mask-rcnn_rbdc-deit-s_simplefpn_balloon.py"

model = dict(
    backbone=dict(
        model_name="deit_base_patch16_224",
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-deit-b.pth}}"),
    ),
    neck=dict(in_channels=768),
)
