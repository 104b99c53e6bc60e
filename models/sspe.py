"""Spatial-Spectral Prompt Encoder (paper 3.2, Algorithm 1, Appendix B).

A prompt region gives two codes: a spectral code from the radial profile of its FFT magnitude
(orientation-invariant texture) and a spatial code from cross-attention over the prompt image's
features, masked to the region. They are fused as e = f_align(z_spatial) + v_align(z_spectral)
and L2-normalised, so prototypes are plain re-normalised means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.box_ops import roi_grid
from models.layers import MLP, AttentionBlock, FeedForward

_LUMA = (0.299, 0.587, 0.114)


def radial_bin_weights(size: int, bins: int) -> Tensor:
    """(bins, size*size) row-normalised weights that average an fft-shifted magnitude over rings.

    Radii are normalised by the largest one (Algorithm 1, line 5). With J bins finer than a pixel,
    hard bins would be empty, so each bin averages the pixels within one ring width of its radius
    with triangular weights; the weights depend on radius alone, so the profile is exactly
    invariant to 90-degree rotations and flips of the crop.
    """
    c = size // 2  # fftshift puts the zero frequency at index size // 2
    coords = torch.arange(size, dtype=torch.float64) - c
    r = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2).flatten()
    r = r / r.max()
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    width = max(1.0 / bins, 1.0 / float(r.numel() ** 0.5 / 2**0.5))  # at least one pixel step
    w = (1 - (r[None, :] - centres[:, None]).abs() / width).clamp(min=0)
    return (w / w.sum(dim=1, keepdim=True)).float()


def circular_window(size: int) -> Tensor:
    """(size, size) Hann taper on the distance from the centre; damps the crop's border so the FFT
    shows its texture, not the artificial edges, and stays symmetric under rotation."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2) / (size / 2)
    return (0.5 * (1 + torch.cos(torch.pi * r.clamp(max=1.0)))).float()


def radial_spectrum(crops: Tensor, weights: Tensor, window: Tensor) -> Tensor:
    """Radial frequency profile of square grayscale crops.

    crops: (R, S, S); weights: (J, S*S) from `radial_bin_weights`; window: (S, S).
    Returns (R, J), L2-normalised. The crop mean is removed first: brightness is not texture.
    """
    x = crops - crops.mean(dim=(-2, -1), keepdim=True)
    x = x * window
    mag = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs()  # (R, S, S)
    prof = mag.flatten(1) @ weights.t()  # (R, J)
    return F.normalize(prof, dim=-1, eps=1e-8)


def shifted_dft_matrices(size: int) -> tuple[Tensor, Tensor]:
    """cos and sin parts (each (size, size)) of the 1-D DFT matrix with fftshift applied to its
    output rows: W[k, n] = exp(-2 pi i k' n / size) with k' = (k - size // 2) mod size."""
    k = (torch.arange(size, dtype=torch.int64) - size // 2) % size  # fftshift as a row permutation
    n = torch.arange(size, dtype=torch.int64)
    angle = 2 * torch.pi * ((k[:, None] * n[None, :]) % size).double() / size  # exact phase
    return torch.cos(angle).float(), torch.sin(angle).float()


def radial_spectrum_dft(
    crops: Tensor, weights: Tensor, window: Tensor, dft: tuple[Tensor, Tensor]
) -> Tensor:
    """`radial_spectrum` with the FFT written as two real matmuls, for ONNX/TensorRT export.

    `torch.fft` has no ONNX export; on the fixed crop size the shifted 2-D DFT of a crop X is
    W X W^T with W = C - iS from `shifted_dft_matrices`, so Re = C X C^T - S X S^T and
    Im = -(C X S^T + S X C^T). Equal to `radial_spectrum` up to float32 rounding.
    """
    cos, sin = dft  # (S, S) each
    x = crops - crops.mean(dim=(-2, -1), keepdim=True)
    x = x * window
    xc, xs = cos @ x, sin @ x  # (R, S, S): the DFT over rows
    re = xc @ cos.t() - xs @ sin.t()
    im = xc @ sin.t() + xs @ cos.t()  # the sign of Im does not matter for |F|
    mag = torch.sqrt(re * re + im * im)  # (R, S, S)
    prof = mag.flatten(1) @ weights.t()  # (R, J)
    return F.normalize(prof, dim=-1, eps=1e-8)


def crop_regions(images: Tensor, boxes: Tensor, batch_index: Tensor, size: int) -> Tensor:
    """Grayscale crops of normalised xyxy boxes: images (B, 3, H, W) -> (R, size, size)."""
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    gray = (images * luma).sum(dim=1, keepdim=True)[batch_index]  # (R, 1, H, W)
    grid = roi_grid(boxes, size)
    return F.grid_sample(gray, grid, mode="bilinear", align_corners=False).squeeze(1)


class RadialFrequencyEncoder(nn.Module):
    """Projects the J-bin spectrum to the spectral code z_spectral (the paper's RFE).

    The log keeps the many small high-frequency bins from vanishing next to the low ones.
    """

    def __init__(self, bins: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(bins)
        self.mlp = MLP(bins, dim, dim, 3)

    def forward(self, spectrum: Tensor) -> Tensor:
        return self.mlp(self.norm(torch.log(spectrum + 1e-4)))


class SpatialPromptEncoder(nn.Module):
    """Masked cross-attention: a region query attends only to feature cells inside the region.

    The query starts as the masked mean of those cells plus a learned embedding, so even a
    one-cell region gives a sensible code.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feat_map: Tensor, region_masks: Tensor, batch_index: Tensor) -> Tensor:
        """feat_map (B, d, h, w); region_masks (R, H, W) in {0, 1} at input size -> (R, d)."""
        h, w = (int(n) for n in feat_map.shape[-2:])  # static under tracing (ONNX pooling)
        cells = F.adaptive_max_pool2d(region_masks[:, None].float(), (h, w)).flatten(1)  # (R, h*w)
        # Guarantee one cell: the one holding the region's strongest (e.g. largest) response.
        pooled = F.adaptive_avg_pool2d(region_masks[:, None].float(), (h, w)).flatten(1)
        top = F.one_hot(pooled.argmax(dim=1), h * w).to(cells.dtype)
        return self.attend(feat_map, torch.maximum(cells, top), batch_index)

    def attend(self, feat_map: Tensor, inside: Tensor, batch_index: Tensor) -> Tensor:
        """feat_map (B, d, h, w); inside (R, h*w) in {0, 1}, at least one cell each -> (R, d)."""
        tokens = feat_map.flatten(2).transpose(1, 2)[batch_index]  # (R, h*w, d)
        mean = (tokens * inside[..., None]).sum(1) / inside.sum(1, keepdim=True)  # (R, d)
        q = mean[:, None] + self.query  # (R, 1, d)
        q = self.attn(q, tokens, mask=inside < 0.5)
        return self.norm(self.ffn(q))[:, 0]


class SSPE(nn.Module):
    """Spatial-Spectral Prompt Encoder: (image features, regions) -> embeddings e (R, d)."""

    def __init__(
        self, dim: int, heads: int, ffn: int, bins: int, crop: int, dropout: float
    ) -> None:
        super().__init__()
        self.crop = crop
        self.register_buffer("bin_weights", radial_bin_weights(crop, bins), persistent=False)
        self.register_buffer("window", circular_window(crop), persistent=False)
        cos, sin = shifted_dft_matrices(crop)
        self.register_buffer("dft_cos", cos, persistent=False)
        self.register_buffer("dft_sin", sin, persistent=False)
        self.spectral = RadialFrequencyEncoder(bins, dim)
        self.spatial = SpatialPromptEncoder(dim, heads, ffn, dropout)
        self.f_align = MLP(dim, dim, dim, 2)
        self.v_align = MLP(dim, dim, dim, 2)

    def forward(
        self,
        images: Tensor,
        feat_map: Tensor,
        boxes: Tensor,
        region_masks: Tensor,
        batch_index: Tensor,
    ) -> Tensor:
        """images (B, 3, H, W) normalised; feat_map (B, d, h, w); boxes (R, 4) normalised xyxy;
        region_masks (R, H, W); batch_index (R,) image of each region -> (R, d) unit vectors."""
        crops = crop_regions(images, boxes, batch_index, self.crop)
        spectrum = radial_spectrum(crops, self.bin_weights, self.window)
        return self.fuse(spectrum, feat_map, region_masks, batch_index)

    def forward_exportable(
        self,
        images: Tensor,
        feat_map: Tensor,
        boxes: Tensor,
        region_masks: Tensor,
        batch_index: Tensor,
    ) -> Tensor:
        """`forward` with the FFT written as DFT matmuls: the form inside exported graphs."""
        crops = crop_regions(images, boxes, batch_index, self.crop)
        spectrum = radial_spectrum_dft(
            crops, self.bin_weights, self.window, (self.dft_cos, self.dft_sin)
        )
        return self.fuse(spectrum, feat_map, region_masks, batch_index)

    def whole_image(self, images: Tensor, feat_map: Tensor) -> Tensor:
        """(B, d): each whole image as one region, in exportable form (no mask pooling, which
        needs static shapes, and no torch.fft)."""
        b = images.shape[0]
        boxes = images.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(b, 4)
        index = torch.arange(b, device=images.device)
        crops = crop_regions(images, boxes, index, self.crop)
        spectrum = radial_spectrum_dft(
            crops, self.bin_weights, self.window, (self.dft_cos, self.dft_sin)
        )
        inside = torch.ones_like(feat_map[:, 0].flatten(1))  # (B, h*w)
        return self.combine(spectrum, self.spatial.attend(feat_map, inside, index))

    def fuse(
        self, spectrum: Tensor, feat_map: Tensor, region_masks: Tensor, batch_index: Tensor
    ) -> Tensor:
        """Radial spectra (R, J) and the spatial path -> (R, d) unit embeddings; shared by
        `forward` and the export wrapper (which computes the spectrum without torch.fft)."""
        return self.combine(spectrum, self.spatial(feat_map, region_masks, batch_index))

    def combine(self, spectrum: Tensor, z_spat: Tensor) -> Tensor:
        """Radial spectra (R, J) and spatial codes (R, d) -> (R, d) unit embeddings."""
        return F.normalize(self.f_align(z_spat) + self.v_align(self.spectral(spectrum)), dim=-1)
