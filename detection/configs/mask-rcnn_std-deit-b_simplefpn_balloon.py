# Control: the balloon DeiT-B config with a standard-trained DeiT-B backbone.
_base_ = "./mask-rcnn_rbdc-deit-b_simplefpn_balloon.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-deit-b.pth}}")))
