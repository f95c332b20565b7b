"""timm architectures: a few registered ViTs, and any timm model by name as `timm:<name>`."""

from __future__ import annotations

from torch import nn

from slidemil.encoders import EncoderEntry, register_encoder


def create_timm(model_name: str, **kwargs) -> nn.Module:
    """timm.create_model without pretrained weights (nothing is downloaded), pooled output, no head."""
    import timm

    kwargs.setdefault("num_classes", 0)
    return timm.create_model(model_name, pretrained=False, **kwargs)


def timm_entry(model_name: str) -> EncoderEntry:
    """An ad-hoc entry for any timm model: its default input size and normalisation from timm's config."""
    import timm

    if not timm.is_model(model_name):
        raise KeyError(f"timm has no model {model_name!r}")
    cfg = timm.get_pretrained_cfg(model_name)
    size = int(cfg.input_size[-1]) if cfg and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg and cfg.mean else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg and cfg.std else (0.229, 0.224, 0.225)
    return EncoderEntry(name=f"timm:{model_name}", builder=lambda **kw: create_timm(model_name, **kw),
                        input_size=size, mean=mean, std=std, family="timm")


@register_encoder("vit_small", input_size=224, dim=384)
def vit_small(**kw) -> nn.Module:
    """timm vit_small_patch16_224 (DINO/iBOT-sized ViT-S/16), CLS token, 384-d."""
    return create_timm("vit_small_patch16_224", **kw)


@register_encoder("vit_base", input_size=224, dim=768)
def vit_base(**kw) -> nn.Module:
    """timm vit_base_patch16_224 (ViT-B/16), CLS token, 768-d."""
    return create_timm("vit_base_patch16_224", **kw)


@register_encoder("vit_large", input_size=224, dim=1024)
def vit_large(**kw) -> nn.Module:
    """timm vit_large_patch16_224 (ViT-L/16), CLS token, 1024-d."""
    return create_timm("vit_large_patch16_224", **kw)
