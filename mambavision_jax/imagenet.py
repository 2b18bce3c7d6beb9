"""ImageNet's normalisation constants (the mean / std of its RGB channels on a 0..1 scale), as the
official models and timm use them. A leaf module: the models' pretrained cfgs, the data
transforms and the preprocessing all read them from here."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
