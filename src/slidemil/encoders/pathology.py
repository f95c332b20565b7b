"""Presets for the pathology foundation models people download, as timm architectures.

Each builds the architecture with random weights (architecture kwargs as in TRIDENT's encoder
factory, mahmoodlab/TRIDENT trident/patch_encoder_models/load.py, late 2026); the user points
config `encoders[].weights` at the file they downloaded (pytorch_model.bin / model.safetensors).
Any builder kwarg can be overridden (e.g. `depth: 1` for a fast test); the output width does
not depend on depth.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemil.encoders import register_encoder
from slidemil.encoders.timm_models import create_timm

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


def _swiglu() -> dict:
    import timm

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": nn.SiLU}


class ClsMeanTokens(nn.Module):
    """Wrap a timm ViT returning all tokens: [B, 1 + R + N, D] -> cat(CLS, mean of patch tokens) [B, 2D].

    `checkpoint_prefix` tells load_checkpoint that the released (plain timm) keys live under `model.`.
    """

    checkpoint_prefix = "model."

    def __init__(self, model: nn.Module, n_prefix_tokens: int) -> None:
        super().__init__()
        self.model, self.n_prefix = model, n_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.cat([out[:, 0], out[:, self.n_prefix:].mean(1)], dim=-1)


class AttentionalPooler(nn.Module):
    """Cross-attention of `n_queries` learned queries over the tokens (CoCa / CONCH), [B, N, C] -> [B, Q, D]."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # [B, Q, D]
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)  # [B, N, D] each
        split = lambda t: t.reshape(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731  [B, h, T, d]
        out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, q.shape[1], -1))


class ConchVisionTower(nn.Module):
    """CONCH v1.5 vision tower: ViT-L/16 trunk at 448 px -> attentional pooling (1 query) -> LayerNorm, 768-d.

    Parameter names follow the released `pytorch_model_vision.bin` (trunk.*, attn_pool_contrast.*,
    ln_contrast.*); the trunk is timm's ViT-L/16 with layer scale 1.0 (the authors' iBOT-style ViT).
    """

    def __init__(self, **trunk_kw) -> None:
        super().__init__()
        kw = {"img_size": 448, "patch_size": 16, "init_values": 1.0, "global_pool": "", "dynamic_img_size": True,
              **trunk_kw}
        self.trunk = create_timm("vit_large_patch16_224", **kw)
        self.attn_pool_contrast = AttentionalPooler(d_model=768, context_dim=self.trunk.embed_dim, n_head=8)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])


@register_encoder("uni", input_size=224, dim=1024, precision="fp16")
def uni(**kw) -> nn.Module:
    """UNI (Chen et al., Nat Med 2024; MahmoodLab/uni): ViT-L/16, CLS token, 1024-d."""
    return create_timm("vit_large_patch16_224", **{"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                                                   "dynamic_img_size": True, **kw})


@register_encoder("uni2-h", input_size=224, dim=1536, precision="bf16")
def uni2_h(**kw) -> nn.Module:
    """UNI2-h (MahmoodLab/UNI2-h): ViT-H/14-style giant, 24 blocks, SwiGLU, 8 register tokens, 1536-d."""
    return create_timm("vit_giant_patch14_224", **{
        "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True,
        **_swiglu(), **kw})


@register_encoder("conch-v1.5", input_size=448, dim=768, precision="fp16")
def conch_v15(**kw) -> nn.Module:
    """CONCH v1.5 vision tower (MahmoodLab/conchv1_5, as in TITAN): ViT-L/16 at 448 px + attentional pool, 768-d."""
    return ConchVisionTower(**kw)


@register_encoder("virchow2", input_size=224, dim=2560, precision="fp16")
def virchow2(**kw) -> nn.Module:
    """Virchow2 (paige-ai/Virchow2): ViT-H/14, SwiGLU, 4 registers; CLS + mean patch token, 2560-d."""
    net = create_timm("vit_huge_patch14_224", **{
        "img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
        "dynamic_img_size": True, **_swiglu(), **kw})
    return ClsMeanTokens(net, n_prefix_tokens=5)


@register_encoder("h-optimus-0", input_size=224, dim=1536, precision="fp16", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD)
def h_optimus_0(**kw) -> nn.Module:
    """H-optimus-0 (bioptimus/H-optimus-0): ViT-g/14 DINOv2 with 4 registers, CLS token, 1536-d."""
    return create_timm("vit_giant_patch14_reg4_dinov2", **{"img_size": 224, "global_pool": "token",
                                                           "init_values": 1e-5, "dynamic_img_size": True, **kw})


@register_encoder("h-optimus-1", input_size=224, dim=1536, precision="fp16", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD)
def h_optimus_1(**kw) -> nn.Module:
    """H-optimus-1 (bioptimus/H-optimus-1): same architecture as H-optimus-0, 1536-d."""
    return h_optimus_0(**kw)


@register_encoder("prov-gigapath", input_size=224, dim=1536, precision="fp16")
def prov_gigapath(**kw) -> nn.Module:
    """Prov-GigaPath tile encoder (prov-gigapath/prov-gigapath): ViT-g/16, 40 blocks, CLS token, 1536-d."""
    return create_timm("vit_giant_patch14_dinov2", **{
        "img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
        "mlp_ratio": 5.33334, "dynamic_img_size": True, **kw})


@register_encoder("phikon-v2", input_size=224, dim=1024, precision="fp32")
def phikon_v2(**kw) -> nn.Module:
    """Phikon-v2 (owkin/phikon-v2): DINOv2 ViT-L/16, CLS token, 1024-d. The released file is a
    Hugging Face Dinov2Model; load_checkpoint converts its keys to timm's."""
    return create_timm("vit_large_patch16_224", **{"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                                                   "dynamic_img_size": True, **kw})
