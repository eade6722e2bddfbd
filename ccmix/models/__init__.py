"""Models: ResNet-32 (CIFAR), torchvision ResNet-50 / ResNeXt-50 encoders, and the BCL-style model.

BCL: Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual
Recognition", CVPR 2022; ConCutMix: Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024.
"""

from ccmix.models.bcl import CLASSIFIERS, HEAD_HIDDEN, BCLModel, CosineClassifier, ModelOutput, build_model
from ccmix.models.encoders import ENCODERS, build_encoder, load_pretrained
from ccmix.models.resnet_cifar import CifarResNet, resnet32

__all__ = [
    "BCLModel", "CifarResNet", "CosineClassifier", "ModelOutput", "build_encoder", "build_model", "resnet32",
    "CLASSIFIERS", "ENCODERS", "HEAD_HIDDEN", "load_pretrained",
]
