# Control: the same Mask R-CNN config with a standard-trained DeiT-B backbone.
_base_ = "./mask-rcnn_rbdc-deit-b_simplefpn_1x_coco.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-deit-b.pth}}")))
