"""PoseVAE: SadTalker's audio-to-head-pose conditional VAE (``audio2pose``; method.md §5.2, TAVCE §III-E).

A window of ``seq_len`` (32) frames of head-pose residuals ``x_t - x_0`` (6-d: yaw, pitch, roll, tx, ty, tz) is
encoded, conditioned on the reference pose x_0, a style class (SadTalker: 46 classes; here one per training
speaker) and the frames' audio embeddings, into a 64-d latent; the decoder maps (z + class bias, x_0, audio) back
to the residuals. Both halves are SadTalker's: a ResUNet over the (seq_len x 6) sequence as an image, and an MLP
(encoder: one hidden layer, then mu / log-variance heads; decoder: two layers ending in a sigmoid). A 1D-conv
sequence discriminator (``netD_motion``) judges pose-residual windows.

Module names are SadTalker's (``audio_encoder``, ``netG.encoder.*``, ``netG.decoder.*``, ``netD_motion.seq.*``),
so the ``audio2pose`` part of a SadTalker checkpoint loads strictly through
:func:`pipeline.models.audio2coeff.load_sadtalker_weights` (its outer ``audio_encoder.audio_encoder.*`` wrapper is
renamed to ``audio_encoder.*``). Two deliberate differences from SadTalker's code, neither changing a key or shape:
the encoder's log-variance comes from ``linear_logvar`` (SadTalker's code reuses ``linear_means`` for both, leaving
``linear_logvar`` unused), and the per-frame audio embeddings keep their frame order in a batch (SadTalker's
audio wrapper concatenates frames along the batch and reshapes batch-major, which mixes samples when B > 1).

Full size: 11.25 M parameters with the training-only encoder and discriminator (SadTalker's figure), of which the
decoder is 3.16 M (plus the 2.81 M Wav2Lip audio encoder at inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.audio_encoder import AudioEncoder, AudioEncoderConfig

POSE_DIM = 6  # yaw, pitch, roll, tx, ty, tz (method.md §1 layout 64-69)


@dataclass(frozen=True)
class PoseVAEConfig:
    """PoseVAE size (defaults: SadTalker's ``auido2pose.yaml``).

    Attributes:
        audio_width: channel multiplier of the Wav2Lip mel encoder (1.0 = 512-d; SadTalker weights need 1).
        seq_len: frames per window (a multiple of 8: the ResUNet halves the time axis three times).
        latent: size of z.
        num_classes: style classes (SadTalker 46); must be >= the number of training speakers.
        audio_emb_out: per-frame audio embedding size after ``linear_audio`` (SadTalker 6).
        encoder_hidden: width of the encoder MLP (SadTalker ENCODER_LAYER_SIZES [192, 128]).
        decoder_hidden: width of the decoder MLP's hidden layer (SadTalker DECODER_LAYER_SIZES [128, 192]).
        unet_filters: ResUNet widths (SadTalker [32, 64, 128, 256]).
        disc_channels: widths of the discriminator's convs: two stride-2 ones and a stride-1 one (SadTalker 256, 512,
            1024).
    """

    audio_width: float = 1.0
    seq_len: int = 32
    latent: int = 64
    num_classes: int = 46
    audio_emb_out: int = 6
    encoder_hidden: int = 128
    decoder_hidden: int = 128
    unet_filters: tuple[int, int, int, int] = (32, 64, 128, 256)
    disc_channels: tuple[int, int, int] = (256, 512, 1024)

    def validate(self) -> None:
        AudioEncoderConfig(self.audio_width).validate()
        if self.seq_len < 8 or self.seq_len % 8:
            raise ValueError(f"seq_len must be a positive multiple of 8 (the ResUNet halves it 3 times), "
                             f"got {self.seq_len}")
        for name in ("latent", "num_classes", "audio_emb_out", "encoder_hidden", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.unet_filters) < 1 or min(self.disc_channels) < 1:
            raise ValueError("unet_filters and disc_channels must be >= 1")


# ----------------------------------------------------------------------------------------------------------------
# ResUNet over a (seq_len x 6) pose sequence seen as a 1-channel image (SadTalker's res_unet.py / networks.py)
# ----------------------------------------------------------------------------------------------------------------
class ResidualConv(nn.Module):
    """Pre-activation residual block: (BN, ReLU, conv s, BN, ReLU, conv) + (conv s, BN) skip."""

    def __init__(self, c_in: int, c_out: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 3, stride, 1),
            nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.conv_skip = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class Upsample(nn.Module):
    """x2 along time by a transposed conv (kernel = stride = (2, 1))."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(c_in, c_out, kernel_size=(2, 1), stride=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """(B, 1, T, 6) -> (B, 1, T, 6) in (0, 1): three (2, 1)-strided residual downsamplings, a bridge, three
    upsamplings with skip connections, a 1x1 conv and a sigmoid (SadTalker's ResUnet)."""

    def __init__(self, filters: tuple[int, int, int, int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        f0, f1, f2, f3 = filters
        self.input_layer = nn.Sequential(nn.Conv2d(1, f0, 3, padding=1), nn.BatchNorm2d(f0), nn.ReLU(),
                                         nn.Conv2d(f0, f0, 3, padding=1))
        self.input_skip = nn.Sequential(nn.Conv2d(1, f0, 3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, (2, 1))
        self.residual_conv_2 = ResidualConv(f1, f2, (2, 1))
        self.bridge = ResidualConv(f2, f3, (2, 1))
        self.upsample_1 = Upsample(f3, f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, 1)
        self.upsample_2 = Upsample(f2, f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, 1)
        self.upsample_3 = Upsample(f1, f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)  # (B, f0, T, 6)
        x2 = self.residual_conv_1(x1)  # (B, f1, T/2, 6)
        x3 = self.residual_conv_2(x2)  # (B, f2, T/4, 6)
        x4 = self.upsample_1(self.bridge(x3))  # (B, f3, T/8, 6) -> (B, f3, T/4, 6)
        x6 = self.upsample_2(self.up_residual_conv1(torch.cat([x4, x3], 1)))  # (B, f2, T/2, 6)
        x8 = self.upsample_3(self.up_residual_conv2(torch.cat([x6, x2], 1)))  # (B, f1, T, 6)
        return self.output_layer(self.up_residual_conv3(torch.cat([x8, x1], 1)))  # (B, 1, T, 6)


# ----------------------------------------------------------------------------------------------------------------
# CVAE
# ----------------------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """q(z | x, x_0, a, c): ResUNet(pose residuals) ++ x_0 ++ linear_audio(a) ++ classbias[c] -> MLP -> (mu, logvar)."""

    def __init__(self, cfg: PoseVAEConfig, audio_in: int) -> None:
        super().__init__()
        self.resunet = ResUnet(cfg.unet_filters)
        n_in = POSE_DIM + cfg.seq_len * POSE_DIM + cfg.seq_len * cfg.audio_emb_out + cfg.latent  # 454 at full size
        self.MLP = nn.Sequential()
        self.MLP.add_module("L0", nn.Linear(n_in, cfg.encoder_hidden))
        self.MLP.add_module("A0", nn.ReLU())
        self.linear_means = nn.Linear(cfg.encoder_hidden, cfg.latent)
        self.linear_logvar = nn.Linear(cfg.encoder_hidden, cfg.latent)
        self.linear_audio = nn.Linear(audio_in, cfg.audio_emb_out)
        self.classbias = nn.Parameter(torch.randn(cfg.num_classes, cfg.latent))

    def forward(self, motion: torch.Tensor, ref: torch.Tensor, audio_emb: torch.Tensor, style: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b = motion.shape[0]
        pose_emb = self.resunet(motion[:, None]).reshape(b, -1)  # (B, 1, T, 6) -> (B, T*6)
        audio = self.linear_audio(audio_emb).reshape(b, -1)  # (B, T, A) -> (B, T*A)
        h = self.MLP(torch.cat([ref, pose_emb, audio, self.classbias[style]], dim=-1))  # (B, hidden)
        return self.linear_means(h), self.linear_logvar(h)  # (B, latent) x 2


class Decoder(nn.Module):
    """p(x | z, x_0, a, c): (z + classbias[c]) ++ x_0 ++ linear_audio(a) -> MLP (sigmoid) -> (T, 6) -> ResUNet ->
    pose_linear -> residuals (B, T, 6)."""

    def __init__(self, cfg: PoseVAEConfig, audio_in: int) -> None:
        super().__init__()
        self.seq_len = cfg.seq_len
        self.resunet = ResUnet(cfg.unet_filters)
        n_in = cfg.latent + cfg.seq_len * cfg.audio_emb_out + POSE_DIM  # 262 at full size
        self.MLP = nn.Sequential()
        self.MLP.add_module("L0", nn.Linear(n_in, cfg.decoder_hidden))
        self.MLP.add_module("A0", nn.ReLU())
        self.MLP.add_module("L1", nn.Linear(cfg.decoder_hidden, cfg.seq_len * POSE_DIM))
        self.MLP.add_module("sigmoid", nn.Sigmoid())
        self.pose_linear = nn.Linear(POSE_DIM, POSE_DIM)
        self.linear_audio = nn.Linear(audio_in, cfg.audio_emb_out)
        self.classbias = nn.Parameter(torch.randn(cfg.num_classes, cfg.latent))

    def forward(self, z: torch.Tensor, ref: torch.Tensor, audio_emb: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        audio = self.linear_audio(audio_emb).reshape(b, -1)  # (B, T*A)
        h = self.MLP(torch.cat([ref, z + self.classbias[style], audio], dim=-1))  # (B, T*6)
        h = self.resunet(h.view(b, 1, self.seq_len, POSE_DIM))  # (B, 1, T, 6)
        return self.pose_linear(h[:, 0])  # (B, T, 6)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * noise (the reparameterisation trick; `noise` ~ N(0, I) given by the caller so
    that training and sampling are keyed and reproducible)."""
    return mu + torch.exp(0.5 * logvar) * noise


@dataclass
class CVAEOutput:
    """Decoded residuals (B, T, 6), the posterior (mu, logvar: (B, latent)) and the sampled z."""

    motion: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class CVAE(nn.Module):
    """SadTalker's ``CVAE``: ``encoder`` (training only) and ``decoder``."""

    def __init__(self, cfg: PoseVAEConfig, audio_in: int) -> None:
        super().__init__()
        self.latent_size = cfg.latent
        self.encoder = Encoder(cfg, audio_in)
        self.decoder = Decoder(cfg, audio_in)

    def forward(self, motion: torch.Tensor, ref: torch.Tensor, audio_emb: torch.Tensor, style: torch.Tensor,
                noise: torch.Tensor) -> CVAEOutput:
        mu, logvar = self.encoder(motion, ref, audio_emb, style)
        z = reparameterize(mu, logvar, noise)
        return CVAEOutput(self.decoder(z, ref, audio_emb, style), mu, logvar, z)


# ----------------------------------------------------------------------------------------------------------------
# Sequence discriminator (SadTalker's discriminator.py)
# ----------------------------------------------------------------------------------------------------------------
class ConvNormRelu(nn.Module):
    """Conv1d (no bias) + BatchNorm1d + LeakyReLU 0.2; k4 s2 p1 halves the time axis, k3 s1 p1 keeps it."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size=kernel, stride=stride, padding=1, bias=False)
        self.norm = nn.BatchNorm1d(c_out)
        self.act = nn.LeakyReLU(0.2)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class PoseSequenceDiscriminator(nn.Module):
    """(B, T, 6) pose residuals -> (B, T/4) patch scores (SadTalker's ``PoseSequenceDiscriminator``)."""

    def __init__(self, cfg: PoseVAEConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.disc_channels
        self.seq = nn.Sequential(ConvNormRelu(POSE_DIM, c1),  # (B, c1, T/2)
                                 ConvNormRelu(c1, c2),  # (B, c2, T/4)
                                 ConvNormRelu(c2, c3, kernel=3, stride=1),  # (B, c3, T/4)
                                 nn.Conv1d(c3, 1, kernel_size=3, stride=1, padding=1))  # (B, 1, T/4)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        return self.seq(motion.transpose(1, 2))[:, 0]  # (B, 6, T) -> (B, 1, T/4) -> (B, T/4)


class PoseVAE(nn.Module):
    """SadTalker's ``Audio2Pose`` networks: ``audio_encoder`` (Wav2Lip mel encoder), ``netG`` (CVAE),
    ``netD_motion`` (sequence discriminator)."""

    def __init__(self, cfg: PoseVAEConfig = PoseVAEConfig()) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.audio_encoder = AudioEncoder(AudioEncoderConfig(cfg.audio_width))
        self.netG = CVAE(cfg, self.audio_encoder.out_features)
        self.netD_motion = PoseSequenceDiscriminator(cfg)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.netD_motion.parameters())

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.audio_encoder.parameters()) + list(self.netG.parameters())

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, T, 1, 80, 16) mel windows -> (B, T, 512) per-frame embeddings (frame order kept)."""
        b, t = mel.shape[:2]
        return self.audio_encoder(mel.flatten(0, 1)).view(b, t, -1)  # (B*T, D) -> (B, T, D)

    def forward(self, mel: torch.Tensor, motion: torch.Tensor, ref: torch.Tensor, style: torch.Tensor,
                noise: torch.Tensor) -> CVAEOutput:
        """Training pass: encode the true residuals `motion` (B, T, 6), sample z with `noise` (B, latent), decode."""
        return self.netG(motion, ref, self.embed_audio(mel), style, noise)

    def sample(self, mel: torch.Tensor, ref: torch.Tensor, style: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Inference: decode residuals (B, T, 6) from a prior sample `z` (B, latent)."""
        return self.netG.decoder(z, ref, self.embed_audio(mel), style)
