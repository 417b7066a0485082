# Mask R-CNN on balloon with the ViT-mini of the Imagenette studies (rbdc_vit_mini_patch8_64: width 192, 6 heads,
# depth 6, patch 8, pretrained at 64 px), RBDC-trained. Patch 8 makes the pyramid from a stride-8 map. The recipe is
# the balloon DeiT one; set BALLOON_SCALE (e.g. 512,320) to keep the token count CPU-sized.
_base_ = "./mask-rcnn_rbdc-deit-s_simplefpn_balloon.py"

model = dict(
    backbone=dict(
        model_name="rbdc_vit_mini_patch8_64",
        img_size=64,
        drop_path_rate=0.05,
        init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-vit-mini.pth}}"),
    ),
    neck=dict(in_channels=192, in_stride=8),
)
