# Mask R-CNN on balloon with the ViT-nano of the 32-px Imagenette study (rbdc_vit_nano_patch4_32: width 64, 4 heads,
# depth 4, patch 4, pretrained at 32 px), for the RBDC-vs-scratch comparison of configs/studies/balloon32.yaml:
# the same config for both backbones, the checkpoint given per run (--backbone or BACKBONE_CKPT). Patch 4 makes the
# pyramid from a stride-4 map. The recipe is the balloon DeiT one; BALLOON_SCALE (e.g. 320,192) keeps the token count
# CPU-sized.
_base_ = "./mask-rcnn_rbdc-deit-s_simplefpn_balloon.py"

model = dict(
    backbone=dict(
        model_name="rbdc_vit_nano_patch4_32",
        img_size=32,
        drop_path_rate=0.05,
        init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/vit-nano.pth}}"),
    ),
    neck=dict(in_channels=64, in_stride=4),
)
