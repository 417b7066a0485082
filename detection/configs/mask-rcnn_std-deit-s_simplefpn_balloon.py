# Control: the balloon DeiT-S config with a standard-trained DeiT-S backbone.
_base_ = "./mask-rcnn_rbdc-deit-s_simplefpn_balloon.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-deit-s.pth}}")))
