"""torchvision ResNets, truncated to `depth` residual stages, with torchvision's parameter names."""

from __future__ import annotations

import torch
from torch import nn

from slidemil.encoders import register_encoder


class TruncatedResNet(nn.Module):
    """ResNet stem + the first `depth` residual stages + global average pooling: [B,3,H,W] -> [B,D].

    Attribute names are torchvision's (conv1, bn1, layer1..4), so torchvision and timm ResNet
    state dicts load as they are (their `fc.*` head is ignored).
    """

    def __init__(self, arch: str, depth: int = 4) -> None:
        import torchvision

        super().__init__()
        if not 1 <= depth <= 4:
            raise ValueError(f"ResNet depth must be 1-4, got {depth}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for k in range(1, depth + 1):
            setattr(self, f"layer{k}", getattr(net, f"layer{k}"))
        last = getattr(net, f"layer{depth}")[-1]
        self.dim = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    @torch.no_grad()
    def fuse_batchnorm(self) -> "TruncatedResNet":
        """Fold every eval-mode BatchNorm into the conv before it (inference only: ~15% faster on CPU).

        The state dict then no longer has bn keys: fuse after loading weights, never before saving.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fuse(parent: nn.Module, conv: str, bn: str) -> None:
            setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
            setattr(parent, bn, nn.Identity())

        self.eval()
        fuse(self, "conv1", "bn1")
        for k in range(1, self.depth + 1):
            for block in getattr(self, f"layer{k}"):
                for i in (1, 2, 3):
                    if hasattr(block, f"conv{i}"):
                        fuse(block, f"conv{i}", f"bn{i}")
                if block.downsample is not None:
                    block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for k in range(1, self.depth + 1):
            x = getattr(self, f"layer{k}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@register_encoder("resnet18", input_size=224, family="torchvision")
def resnet18(depth: int = 4) -> nn.Module:
    """torchvision ResNet18 (He et al. 2016); 512-d at depth 4, 256 at 3, 128 at 2."""
    return TruncatedResNet("resnet18", depth)


@register_encoder("resnet34", input_size=224, family="torchvision")
def resnet34(depth: int = 4) -> nn.Module:
    """torchvision ResNet34; 512-d at depth 4."""
    return TruncatedResNet("resnet34", depth)


@register_encoder("resnet50", input_size=224, family="torchvision")
def resnet50(depth: int = 4) -> nn.Module:
    """torchvision ResNet50; 2048-d at depth 4, 1024 at 3 (CLAM's truncated ResNet50)."""
    return TruncatedResNet("resnet50", depth)
