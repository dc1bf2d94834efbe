"""The demo model's VAE: ComfyUI's TAESD layout with weights set by hand, not learned.

The drawn world is flat colour, so a latent pixel only has to say what colour its 8 x 8 block has and
how much of it is saturated (object): the encoder averages R, G, B and the block's chroma (max - min,
which ReLUs can compute) over each 8 x 8 block and maps them to four channels of about unit spread;
the decoder inverts that map and upsamples. Every block of the TAESD layout is an identity (its
residual branch is zero), the three stride-2 convolutions are 2 x 2 means, so the encoder equals
:func:`encode` below exactly and the model trains on latents computed in closed form.
``dev/train_demo_model.py`` then fine-tunes the decoder to draw sharp edges from the 16 x 16 grid.
"""

from __future__ import annotations

import torch

# latent = SCALE * (feature - CENTRE), features: mean(R,G,B), R - G, (R + G)/2 - B, chroma, all in [0, 1] units
CENTRE = torch.tensor([0.5, 0.0, 0.0, 0.3])
SCALE = torch.tensor([3.0, 2.25, 2.25, 3.0])
VAE_SCALE = 0.18215  # stored as TAESD's vae_scale: SD1.x's latent format multiplies it back, so the UNet sees the latent as made here


def features(rgb: torch.Tensor) -> torch.Tensor:
    """rgb (B, 3, H, W) in [0, 1] -> the four per-pixel features."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    chroma = rgb.max(1).values - rgb.min(1).values
    return torch.stack([(r + g + b) / 3, r - g, (r + g) / 2 - b, chroma], 1)


def encode(rgb: torch.Tensor) -> torch.Tensor:
    """The hand-set encoder in closed form: rgb (B, 3, H, W) in [0, 1] -> latent (B, 4, H/8, W/8)."""
    pooled = torch.nn.functional.avg_pool2d(features(rgb), 8)
    return (pooled - CENTRE.view(1, 4, 1, 1)) * SCALE.view(1, 4, 1, 1)


def _mix() -> torch.Tensor:
    """The 4 x 4 map from (R, G, B, chroma) to the features' first three rows and chroma."""
    return torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0], [1.0, -1.0, 0.0, 0.0], [0.5, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _zero(sd: dict, prefix: str) -> None:
    for key in list(sd):
        if key.startswith(prefix):
            sd[key] = torch.zeros_like(sd[key])


def _identity_taps(weight: torch.Tensor, channels: int) -> None:
    for c in range(channels):
        weight[c, c, 1, 1] = 1.0


def state_dict(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Weights for ComfyUI's TAESD (keys as ``TAESD().state_dict()``, given by ``shapes``)."""
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    sd["vae_scale"] = torch.tensor(VAE_SCALE)
    if "vae_shift" in sd:
        sd["vae_shift"] = torch.tensor(0.0)
    enc, dec = "taesd_encoder.", "taesd_decoder."
    # encoder: 0 conv(3, 64): R, G, B into channels 0-2
    _identity_taps(sd[enc + "0.weight"], 3)
    # 1 Block: channel 3 += chroma. |R-G| + |G-B| + |B-R| = 2 (max - min), from six ReLU'd differences
    w = sd[enc + "1.conv.0.weight"]
    for k, (p, q) in enumerate([(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (0, 2)]):
        w[4 + k, p, 1, 1], w[4 + k, q, 1, 1] = 1.0, -1.0
    for k in range(6):
        sd[enc + "1.conv.2.weight"][4 + k, 4 + k, 1, 1] = 1.0
        sd[enc + "1.conv.4.weight"][3, 4 + k, 1, 1] = 0.5
    # stride-2 convolutions (2, 6, 10): the mean of each 2 x 2 block (taps 1..2 of the 3 x 3 kernel)
    for index in (2, 6, 10):
        w = sd[enc + f"{index}.weight"]
        for c in range(4):
            w[c, c, 1:3, 1:3] = 0.25
    # 14 conv(64, 4): latent = SCALE * (mix @ (R, G, B, chroma) - CENTRE)
    w = sd[enc + "14.weight"]
    w[:, :4, 1, 1] = SCALE.view(4, 1) * _mix()
    sd[enc + "14.bias"] = -SCALE * CENTRE
    # decoder: 0 Clamp, 1 conv(4, 64): back to R, G, B, chroma (the clamp bends |latent| > 1 by a few %)
    inverse = torch.linalg.inv(_mix())
    w = sd[dec + "1.weight"]
    w[:4, :, 1, 1] = inverse / SCALE.view(1, 4)
    sd[dec + "1.bias"][:4] = inverse @ CENTRE
    # every Block stays an identity (zero residual branch); convs after each upsample pass channels through
    for index in (7, 12, 17):
        _identity_taps(sd[dec + f"{index}.weight"], 4)
    _identity_taps(sd[dec + "19.weight"], 3)
    return sd
