"""ExpNet: SadTalker's audio-to-expression network (``audio2exp``; method.md §5.1, TAVCE §III-E).

Each video frame is mapped on its own: the frame's 0.2 s mel window (1 x 80 x 16, method.md §1.1) goes through the
Wav2Lip mel encoder (`pipeline.models.audio_encoder.AudioEncoder`) to a 512-d feature, which is concatenated with
the reference expression (64) and an eye-blink ratio (1) and mapped by one linear layer to the frame's 64
expression coefficients. Module and key names are SadTalker's ``SimpleWrapperV2`` (``audio_encoder.<i>.conv_block.*``,
``mapping1.*``), so the ``audio2exp`` part of a SadTalker checkpoint loads strictly
(:func:`pipeline.models.audio2coeff.load_sadtalker_weights`). Full size: 2.85 M parameters (SadTalker's figure).

The blink ratio (SadTalker's ``ratio_gt``) is, in this project, the eye openness of the frontalised landmarks
(`eye_openness`): the true one while training, the reference frame's held constant (or a given sequence) when
generating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.audio import MEL_WINDOW_FRAMES, N_MELS
from pipeline.models.audio_encoder import AudioEncoder, AudioEncoderConfig

NUM_EXPRESSION = 64  # expression coefficients (method.md §1 layout 0-63)


@dataclass(frozen=True)
class ExpNetConfig:
    """ExpNet size.

    Attributes:
        audio_width: channel multiplier of the Wav2Lip mel encoder (1.0 = SadTalker, 512-d; SadTalker weights need 1).
    """

    audio_width: float = 1.0

    def validate(self) -> None:
        AudioEncoderConfig(self.audio_width).validate()


class ExpNet(nn.Module):
    """SadTalker's audio2exp ``SimpleWrapperV2``: ``e_t = W [E_a(mel_t); e_ref; r_t] + b`` per frame."""

    def __init__(self, cfg: ExpNetConfig = ExpNetConfig()) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(AudioEncoderConfig(cfg.audio_width))
        self.mapping1 = nn.Linear(self.audio_encoder.out_features + NUM_EXPRESSION + 1, NUM_EXPRESSION)
        nn.init.zeros_(self.mapping1.bias)  # SadTalker initialises this bias to 0

    def forward(self, mel: torch.Tensor, ref_expression: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Expression coefficients of T frames.

        Args:
            mel: (B, T, 1, 80, 16) mel windows of the frames.
            ref_expression: (B, 64) the reference frame's expression (repeated over T, as SadTalker does).
            ratio: (B, T) eye-blink ratio of each frame.

        Returns:
            (B, T, 64).
        """
        b, t = mel.shape[:2]
        if mel.shape[2:] != (1, N_MELS, MEL_WINDOW_FRAMES) or ref_expression.shape != (b, NUM_EXPRESSION) \
                or ratio.shape != (b, t):
            raise ValueError(f"ExpNet expects mel (B, T, 1, {N_MELS}, {MEL_WINDOW_FRAMES}), ref (B, 64), ratio (B, T); "
                             f"got {tuple(mel.shape)}, {tuple(ref_expression.shape)}, {tuple(ratio.shape)}")
        a = self.audio_encoder(mel.flatten(0, 1))  # (B*T, 512)
        ref = ref_expression[:, None].expand(b, t, NUM_EXPRESSION).reshape(b * t, NUM_EXPRESSION)  # (B*T, 64)
        y = self.mapping1(torch.cat([a, ref, ratio.reshape(b * t, 1)], dim=1))  # (B*T, 64)
        return y.view(b, t, NUM_EXPRESSION)  # (B, T, 64)
