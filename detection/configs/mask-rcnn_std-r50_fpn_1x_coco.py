# Control: the same Mask R-CNN config with a standard-trained ResNet-50 backbone.
_base_ = "./mask-rcnn_rbdc-r50_fpn_1x_coco.py"

model = dict(backbone=dict(init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/std-r50.pth}}")))
