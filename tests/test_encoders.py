"""Encoder registry: every preset builds (random weights), reloads its state dict, gives its output width."""

import pytest
import torch

from slidemil.encoders import (ENCODERS, CheckpointError, EncoderSpec, build_encoder, get_entry, load_checkpoint,
                               output_dim)

PRESETS = ["uni", "uni2-h", "conch-v1.5", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2"]


def test_registry_lists_presets_with_their_own_input_and_normalisation():
    assert set(PRESETS) | {"resnet18", "resnet50", "vit_small"} <= set(ENCODERS)
    assert ENCODERS["conch-v1.5"].input_size == 448 and ENCODERS["uni2-h"].precision == "bf16"
    assert ENCODERS["h-optimus-0"].mean != ENCODERS["uni"].mean  # H-optimus has its own statistics
    with pytest.raises(KeyError, match="unknown encoder arch"):
        get_entry("nope")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_reloads_and_has_its_output_dim(name, tmp_path):
    entry = ENCODERS[name]
    torch.manual_seed(0)
    net = entry.build(depth=1).eval()  # one block: the width, not the depth, sets the output dim
    x = torch.rand(2, 3, entry.input_size, entry.input_size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, entry.dim)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    other = entry.build(depth=1).eval()
    load_checkpoint(other, tmp_path / "w.pt", name)
    with torch.no_grad():
        torch.testing.assert_close(other(x), y)


@pytest.mark.parametrize("name", ["uni2-h", "prov-gigapath"])
def test_full_depth_presets_build_on_the_meta_device(name):
    entry = ENCODERS[name]
    with torch.device("meta"):
        net = entry.build()
    n = sum(p.numel() for p in net.parameters())
    assert n > 6e8  # giant ViTs: ~0.7-1.1 B parameters
    assert output_dim(net, entry.input_size) == entry.dim


def test_resnet_widths_and_timm_by_name():
    assert output_dim(build_encoder(EncoderSpec("r", depth=3), 0), 64) == 256
    assert output_dim(build_encoder(EncoderSpec("r", arch="resnet50", depth=2), 0), 64) == 512
    net = build_encoder(EncoderSpec("t", arch="timm:resnet18"), 0)
    assert output_dim(net, 64) == 512


def test_checkpoint_formats(tmp_path):
    import timm
    import torchvision
    from safetensors.torch import save_file

    tv = torchvision.models.resnet18(weights=None)
    # DataParallel / Lightning-style prefixes inside a container dict
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "lightning.ckpt")
    net = build_encoder(EncoderSpec("r", weights=str(tmp_path / "lightning.ckpt")), 5)
    assert torch.equal(net.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    # timm's resnet18 (same names as torchvision, fc head ignored), as safetensors
    tm = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    net = build_encoder(EncoderSpec("r", weights=str(tmp_path / "timm.safetensors")), 5)
    assert torch.equal(net.conv1.weight, tm.conv1.weight)
    # a ViT file for a ResNet: the error names the missing keys
    torch.save(timm.create_model("vit_small_patch16_224", depth=1).state_dict(), tmp_path / "vit.pt")
    with pytest.raises(CheckpointError, match=r"missing \d+ of \d+ keys: conv1.weight, bn1.weight"):
        build_encoder(EncoderSpec("r", weights=str(tmp_path / "vit.pt")), 0)
    with pytest.raises(FileNotFoundError, match="offline"):
        build_encoder(EncoderSpec("r", weights=str(tmp_path / "none.pt")), 0)


def test_hf_dinov2_keys_load_into_the_timm_vit(tmp_path):
    """Phikon-v2 ships as a Hugging Face Dinov2Model: its keys are converted to timm's."""
    net = ENCODERS["phikon-v2"].build(depth=1)
    sd = net.state_dict()
    d = sd["cls_token"].shape[-1]
    hf = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
          "embeddings.mask_token": torch.zeros(1, d),
          "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
          "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    src = "encoder.layer.0."
    for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                 ("attention.output.dense", "attn.proj")):
        for t in ("weight", "bias"):
            hf[f"{src}{a}.{t}"] = sd[f"blocks.0.{b}.{t}"]
    for t in ("weight", "bias"):
        q, k, v = sd[f"blocks.0.attn.qkv.{t}"].chunk(3)
        hf.update({f"{src}attention.attention.query.{t}": q, f"{src}attention.attention.key.{t}": k,
                   f"{src}attention.attention.value.{t}": v})
    hf[f"{src}layer_scale1.lambda1"], hf[f"{src}layer_scale2.lambda1"] = sd["blocks.0.ls1.gamma"], sd["blocks.0.ls2.gamma"]
    torch.save(hf, tmp_path / "pytorch_model.bin")
    other = ENCODERS["phikon-v2"].build(depth=1)
    load_checkpoint(other, tmp_path / "pytorch_model.bin")
    for k, v in sd.items():
        assert torch.equal(other.state_dict()[k], v), k


def test_fused_batchnorm_gives_the_same_features():
    net = build_encoder(EncoderSpec("r", arch="resnet50", depth=3), 0)
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
        got = net.fuse_batchnorm()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
