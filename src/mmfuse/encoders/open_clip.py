"""`open_clip:<model name>` image and text encoders: one tower each of an open_clip model.

Models are built with open_clip's normal loading, `open_clip.create_model_and_transforms(name,
pretrained=...)`: `pretrained` is an open_clip tag ("laion2b_s34b_b79k", needs its download cache)
or a local checkpoint file. A model config of your own (a JSON with embed_dim / vision_cfg /
text_cfg, e.g. a tiny random model for tests) is registered with the `model_config` option, the
file's stem being the model name. pooled = the tower's embedding (its CLIP projection); there are
no tokens. Without `pretrained` the weights are random, so an artifact must store them (see
`rebuildable`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import Features
from .base import Encoder, register_encoder


def create_clip(name: str, *, pretrained: str | None, image_size: int | None, model_config: str | None):
    """(model, eval transform) through open_clip's factory; errors name what to fix."""
    import open_clip

    if model_config is not None:
        path = Path(model_config)
        if not path.is_file():
            raise ConfigError(f"open_clip model_config {path} does not exist")
        if path.stem != name:
            raise ConfigError(f"open_clip model_config {path}: the file stem must be the model name {name!r}")
        open_clip.add_model_config(path)
    if name not in open_clip.list_models():
        raise ConfigError(f"open_clip model {name!r} is unknown; give its JSON with the model_config option, "
                          f"or use one of open_clip.list_models() (e.g. ViT-B-32)")
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                force_image_size=image_size)
    return model.eval(), transform


class OpenClipImage(Encoder):
    modality = "image"
    default_trainable = False

    def __init__(self, *, target: str, image_size: int | None = None, pretrained: str | None = None,
                 model_config: str | None = None):
        super().__init__()
        # image_size is forced on the model (open_clip resizes position embeddings to it):
        # set encoders.image.image_size to the model's own size (224 for most) for pretrained ones.
        model, self.transform = create_clip(target, pretrained=pretrained, image_size=image_size,
                                            model_config=model_config)
        self.visual = model.visual
        self.name, self.pretrained = target, pretrained
        self.rebuildable = pretrained is not None
        self.out_dim = self.visual(torch.zeros(1, 3, *self.input_size())).shape[-1]

    def input_size(self) -> tuple[int, int]:
        size = self.visual.image_size
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def prepare(self, values: list) -> dict[str, Tensor]:
        # open_clip's own eval transform: resize, centre crop, RGB, normalise with the model's mean/std.
        return {"pixels": torch.stack([self.transform(image) for image in values])}

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        return Features(pooled=self.visual(prepared["pixels"]))

    def describe(self) -> str:
        return f"open_clip:{self.name}:image:pretrained={self.pretrained}:{self.transform}"


class OpenClipText(Encoder):
    modality = "text"
    default_trainable = False

    def __init__(self, *, target: str, max_tokens: int | None = None, pretrained: str | None = None,
                 model_config: str | None = None):
        super().__init__()
        import open_clip

        # max_tokens is accepted for the common interface; the model's own context length applies
        # (its position embeddings fix it), and the tokenizer truncates to it.
        model, _ = create_clip(target, pretrained=pretrained, image_size=None, model_config=model_config)
        model.visual = nn.Identity()  # keep only the text tower's weights (and in the fingerprint)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(target)
        self.name, self.pretrained = target, pretrained
        self.rebuildable = pretrained is not None
        self.out_dim = model.encode_text(self.tokenizer(["a"])).shape[-1]

    def prepare(self, values: list[str]) -> dict[str, Tensor]:
        return {"input_ids": self.tokenizer(list(values))}

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        return Features(pooled=self.model.encode_text(prepared["input_ids"]))

    def describe(self) -> str:
        return (f"open_clip:{self.name}:text:pretrained={self.pretrained}:"
                f"context={getattr(self.tokenizer, 'context_length', None)}")


@register_encoder("open_clip")
class OpenClip:
    """Registry entry: `open_clip:<name>` builds the tower of the modality it is asked for. The
    registry passes no modality, so it is read from the size option the config gives each one
    (image_size for images, max_tokens for text; see model.build_encoders)."""

    modality = None  # either: image and text towers share the name

    def __new__(cls, *, target: str, image_size: int | None = None, max_tokens: int | None = None, **options):
        if max_tokens is not None and image_size is None:
            return OpenClipText(target=target, max_tokens=max_tokens, **options)
        return OpenClipImage(target=target, image_size=image_size, **options)
