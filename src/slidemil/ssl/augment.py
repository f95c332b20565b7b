"""H&E augmentations applied to whole batches as tensor ops (on the GPU when the batch is there).

Per-sample random parameters are drawn from a seeded CPU `torch.Generator` (so a CPU and a GPU
run draw the same crops, flips and jitters) and applied to the batch at once: crops by
`torchvision.ops.roi_align`, flips/rotations by masked selection, colour and stain jitter as
per-sample affine maps, blur as a grouped convolution with per-sample Gaussian kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Ruifrok & Johnston stain vectors (skimage.color.rgb_from_hed): rows H, E, D in optical density
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
# YIQ (NTSC): hue jitter is a rotation of the I-Q plane, a cheap linear stand-in for HSV hue shift
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)
GRAY = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class AugmentParams:
    """One config `pretrain.<name>.augment` block; defaults follow SimCLR/WeakSupCon, plus H&E terms."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip (orientation is meaningless in H&E)
    rot90: bool = True  # rotate by a random multiple of 90 degrees
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8  # probability of colour jitter
    hed_sigma: float = 0.05  # HED stain jitter: each stain channel * U(1-s, 1+s) + U(-s, s) (Tellez 2018)
    hed_p: float = 0.5  # probability of stain jitter
    grayscale_p: float = 0.2  # probability of converting to grey
    blur_p: float = 0.5  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma at 224 px (scaled with the output size)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentParams":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _bern(g: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=g) < p


def crop_boxes(n: int, size: int, scale: tuple[float, float], ratio: tuple[float, float],
               g: torch.Generator) -> Tensor:
    """Random resized crop boxes float [n, 4] (x0, y0, x1, y1) in pixels of a size x size tile.

    One draw per sample (torchvision retries up to 10 times, then falls back to a central crop;
    we clamp the side lengths instead, which keeps the area/ratio distribution close).
    """
    area = _u(g, n, *scale) * size * size
    log_r = _u(g, n, math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(1, size)
    h = torch.sqrt(area / r).clamp(1, size)
    x0 = torch.rand(n, generator=g) * (size - w)
    y0 = torch.rand(n, generator=g) * (size - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _rot90_batch(x: Tensor, k: Tensor) -> Tensor:
    """Rotate sample b of x [B, C, S, S] by k[b] quarter turns."""
    out = x
    for q in (1, 2, 3):
        sel = (k == q).to(x.device)
        if sel.any():
            out = torch.where(sel[:, None, None, None], torch.rot90(x, q, dims=(2, 3)), out)
    return out


def _gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor) -> Tensor:
    """Blur sample b of x [B, C, S, S] with sigma[b] (px) where apply[b]; one grouped conv per axis."""
    if not apply.any():
        return x
    b, c, s, _ = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, s // 2)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sig = sigma.to(x.device, x.dtype).clamp_min(1e-3)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sig[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [B, K]
    k = k.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    y = x.reshape(1, b * c, s, s)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return torch.where(apply.to(x.device)[:, None, None, None], y.reshape(b, c, s, s), x)


def _on_subset(x: Tensor, sel: Tensor, fn) -> Tensor:
    """x with fn(x[idx], idx) written back at idx = sel.nonzero(); x itself when nothing is selected."""
    idx = torch.nonzero(sel).flatten()
    if len(idx) == 0:
        return x
    out = x.clone()
    dev_idx = idx.to(x.device)
    out[dev_idx] = fn(x[dev_idx], idx)
    return out


def colour_jitter(x: Tensor, bri: Tensor, con: Tensor, sat: Tensor, hue: Tensor) -> Tensor:
    """Per-sample brightness, contrast, saturation factors [B] and hue shift [B] (fraction of a turn).

    Fixed order (torchvision shuffles it per call); hue as a YIQ rotation, not an HSV shift.
    """
    dev, dt = x.device, x.dtype
    v = lambda t: t.to(dev, dt)[:, None, None, None]  # noqa: E731
    gray_w = GRAY.to(dev, dt)[None, :, None, None]
    x = (x * v(bri)).clamp(0, 1)
    mean = (x * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * v(con) + mean).clamp(0, 1)
    gray = (x * gray_w).sum(1, keepdim=True)
    x = ((x - gray) * v(sat) + gray).clamp(0, 1)
    theta = (hue * 2 * math.pi).to(dev, dt)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(len(theta), 3, 3, device=dev, dtype=dt)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = YIQ_TO_RGB.to(dev, dt) @ rot @ RGB_TO_YIQ.to(dev, dt)  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def hed_jitter(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Stain jitter: RGB -> optical density -> HED, h' = h * alpha + beta per channel [B, 3], back to RGB."""
    dev, dt = x.device, x.dtype
    od = -torch.log(x.clamp_min(1e-6))
    hed = torch.einsum("ij,bjhw->bihw", HED_FROM_RGB.T.to(dev, dt), od)
    hed = hed * alpha.to(dev, dt)[:, :, None, None] + beta.to(dev, dt)[:, :, None, None]
    od = torch.einsum("ij,bjhw->bihw", RGB_FROM_HED.T.to(dev, dt), hed)
    return torch.exp(-od).clamp(0, 1)


class BatchAugment:
    """uint8 tiles [B, T, T, 3] (any device) -> augmented, normalised float [B, 3, S, S].

    One call draws every sample's parameters from `generator`; the two views of a pair are two
    calls (independent draws), as in SimCLR's TwoCropTransform.
    """

    def __init__(self, params: AugmentParams, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.p, self.size = params, size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, tiles: Tensor, g: torch.Generator) -> Tensor:
        from torchvision.ops import roi_align

        p, s = self.p, self.size
        x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        b, _, t, _ = x.shape
        boxes = crop_boxes(b, t, p.crop_scale, p.crop_ratio, g)
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], dim=1).to(x.device)
        # one bilinear sample per output pixel when magnifying, ceil(T/S)^2 averaged when shrinking
        x = roi_align(x, rois, output_size=(s, s), spatial_scale=1.0, sampling_ratio=max(1, math.ceil(t / s)),
                      aligned=True)
        hf, vf = _bern(g, b, p.hflip).to(x.device), _bern(g, b, p.vflip).to(x.device)
        x = torch.where(hf[:, None, None, None], x.flip(3), x)
        x = torch.where(vf[:, None, None, None], x.flip(2), x)
        if p.rot90:
            x = _rot90_batch(x, torch.randint(0, 4, (b,), generator=g))
        # per-sample parameters are drawn for every sample (fixed RNG use); each op runs on its subset only
        bj, cj, sj, hj = p.jitter
        apply = _bern(g, b, p.jitter_p)
        bri, con = _u(g, b, max(0, 1 - bj), 1 + bj), _u(g, b, max(0, 1 - cj), 1 + cj)
        sat, hue = _u(g, b, max(0, 1 - sj), 1 + sj), _u(g, b, -hj, hj)
        x = _on_subset(x, apply, lambda v, i: colour_jitter(v, bri[i], con[i], sat[i], hue[i]))
        stain = _bern(g, b, p.hed_p) & (p.hed_sigma > 0)
        alpha = 1 + (2 * torch.rand(b, 3, generator=g) - 1) * p.hed_sigma
        beta = (2 * torch.rand(b, 3, generator=g) - 1) * p.hed_sigma
        x = _on_subset(x, stain, lambda v, i: hed_jitter(v, alpha[i], beta[i]))
        grey = _bern(g, b, p.grayscale_p)
        x = _on_subset(x, grey, lambda v, i: (v * GRAY.to(v.device, v.dtype)[None, :, None, None]).sum(
            1, keepdim=True).expand_as(v))
        blur = _bern(g, b, p.blur_p)
        sigma = _u(g, b, *p.blur_sigma) * s / 224.0
        x = _on_subset(x, blur, lambda v, i: _gaussian_blur(v, sigma[i], torch.ones(len(i), dtype=torch.bool)))
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last)
