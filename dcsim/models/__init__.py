"""Models: the convertible architectures (architectures), LSQ activations (lsq) and quantizer adapters (adapters).

The architectures' names are re-exported here (dcsim.models.small_cnn, dcsim.models.build_model, ...)."""

from .architectures import (
    ARCHITECTURES,
    VGG16_CFG,
    BasicBlock,
    Bottleneck,
    ResNet,
    WhitenedCNN,
    build_model,
    init_whitening,
    resnet18,
    resnet50,
    small_cnn,
    vgg16,
    whitened_cnn,
    whitened_cnn_analog,
)

__all__ = [
    "ARCHITECTURES",
    "VGG16_CFG",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "WhitenedCNN",
    "build_model",
    "init_whitening",
    "resnet18",
    "resnet50",
    "small_cnn",
    "vgg16",
    "whitened_cnn",
    "whitened_cnn_analog",
]
