# Control: the balloon ViT-mini config with the ViT-mini trained from scratch on Imagenette (same FLOPs budget).
_base_ = "./mask-rcnn_rbdc-vit-mini_simplefpn_balloon.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-vit-mini.pth}}")))
