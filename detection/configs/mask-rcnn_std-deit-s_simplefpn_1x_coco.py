# Control: the same Mask R-CNN config with a standard-trained DeiT-S backbone (same architecture, same recipe).
_base_ = "./mask-rcnn_rbdc-deit-s_simplefpn_1x_coco.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-deit-s.pth}}")))
