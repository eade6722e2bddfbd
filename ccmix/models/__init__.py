"""Models: ResNet-32 (CIFAR), torchvision ResNet/ResNeXt encoders and the BCL-style model."""
