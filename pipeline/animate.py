"""`tavce animate`: one portrait photo + one speech recording -> a lip-synced talking-head video (issue 12 item 3).

The inference path of TAVCE (SadTalker's, with CERL):

1. the portrait is read (EXIF orientation honoured), its face found, cropped and landmarked with the preprocessing
   code (`pipeline.faces`: same detector, `fixed_crop` convention and crop side as the training clips), and its 73-d
   coefficients fitted with the corpus' expression basis (`pipeline.faces.coeffs`) -> the reference coefficients;
2. the audio (any file ffmpeg reads, video included; downmixed and resampled to 16 kHz mono by `media.read_audio`)
   -> Wav2Lip mel -> one (80, 16) window per 25 fps frame;
3. Audio2Coeff (`generate_motion`: ExpNet + PoseVAE / MS-Sync, seeded) -> (T, 70) motion coefficients;
4. MappingNet on 27-frame coefficient windows -> per-frame HeadMotion; the source's own motion is MappingNet on the
   reference coefficients repeated over a window;
5. the renderer (`pipeline.render.render`; CERL fed with the TAVC audio relationship of frames i-1, i) renders the
   frames chunk by chunk (`chunk_seconds`), each chunk streamed to the encoder, so memory does not grow with the
   audio's length; the source is encoded once per chunk;
6. H.264 + AAC mp4 with the (16 kHz mono) input audio muxed in sync; optionally the crop pasted back into the photo
   with a feathered mask, and a GIF preview.

Models come from a pipeline run's ``models/`` folder, from a bundle written by :func:`pipeline.bundle.export_bundle`, or
from SadTalker's release (``tavce animate --sadtalker DIR``: `pipeline.models.sadtalker`), whose networks read BFM
coefficients: the portrait's then come from Deep3DFaceRecon (`AnimateModels.coeff_estimator`) instead of the
expression basis.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from pipeline import audio as audio_mod
from pipeline import media
from pipeline.faces import coeffs as coeffs_mod
from pipeline.faces import crop as crop_mod
from pipeline.faces.landmarks import _iou, make_backend
from pipeline.models.audio2coeff import Audio2Coeff, generate_motion, load_audio2coeff
from pipeline.models.renderer.renderer import Renderer, load_renderer
from pipeline.models.tavc import TAVC, load_tavc, relationship
from pipeline.models.renderer.inference import InferenceOptions, prepare_renderer
from pipeline.render import render

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MIN_AUDIO_SECONDS = 0.5  # shorter audio gives fewer frames than one PoseVAE window makes sense for
SILENCE_DB = -60.0  # dBFS RMS over the whole file: below this the audio is silent (preprocess' default threshold)
DEFAULT_CROP_SCALE = 1.8  # PreprocessConfig.crop_scale's default: the training crops' framing
FEATHER_FRACTION = 0.1  # paste-back mask: blur width as a fraction of the crop side


class AnimateError(ValueError):
    """An input `animate` cannot use; the message names the file and says why."""


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------
RENDERER_CANDIDATES = ("train/checkpoint.pt", "renderer/checkpoint.pt")  # TAVCE's final stage first
AUDIO2COEFF_FILE = "audio2coeff/checkpoint.pt"
TAVC_FILE = "tavc/checkpoint.pt"
BASIS_FILE = "expression_basis.npz"


@dataclass
class AnimateModels:
    """The networks `animate` runs, and where they came from.

    ``coeff_estimator`` (SadTalker's release): a `pipeline.faces.deep3d.Deep3DEstimator`-like callable
    ``(frames (1, S, S, 3), landmarks (1, 68, 2)) -> result`` with ``.motion`` (1, 70) and ``.align`` (1, 5); when
    set, the portrait's coefficients 0-69 are its BFM estimate and ``basis`` may be None.
    """

    renderer: Renderer
    audio2coeff: Audio2Coeff
    tavc: TAVC | None
    basis: coeffs_mod.ExpressionBasis | None
    sources: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    coeff_estimator: Any | None = None


def model_files(models: str | os.PathLike[str], expression_basis: str | os.PathLike[str] | None = None
                ) -> dict[str, Path]:
    """The files of a ``models/`` folder that `animate` needs: renderer (``train/`` if present, else ``renderer/``),
    audio2coeff, tavc (optional: only for CERL) and the expression basis (``expression_basis`` argument, else
    ``<models>/expression_basis.npz``, else ``<models>/../data/processed/expression_basis.npz``, a pipeline run's
    layout). Raises AnimateError naming what is missing."""
    root = Path(models)
    if not root.is_dir():
        raise AnimateError(f"{root}: no such models folder or bundle file")
    found: dict[str, Path] = {}
    renderer = next((root / c for c in RENDERER_CANDIDATES if (root / c).is_file()), None)
    if renderer is None:
        raise AnimateError(f"{root}: no renderer checkpoint ({' or '.join(RENDERER_CANDIDATES)}); run the pipeline "
                           f"(dvc repro) or pass a bundle from `tavce export`")
    found["renderer"] = renderer
    if not (root / AUDIO2COEFF_FILE).is_file():
        raise AnimateError(f"{root}: no {AUDIO2COEFF_FILE} (the train_audio2coeff stage's model)")
    found["audio2coeff"] = root / AUDIO2COEFF_FILE
    if (root / TAVC_FILE).is_file():
        found["tavc"] = root / TAVC_FILE
    candidates = ([Path(expression_basis)] if expression_basis is not None
                  else [root / BASIS_FILE, root.parent / "data" / "processed" / BASIS_FILE])
    basis = next((c for c in candidates if c.is_file()), None)
    if basis is None:
        raise AnimateError(f"{root}: no expression basis (looked for {', '.join(map(str, candidates))})")
    found["expression_basis"] = basis
    return found


def load_models(models: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                expression_basis: str | os.PathLike[str] | None = None) -> AnimateModels:
    """Load `animate`'s networks from a ``models/`` folder or a ``.tavce`` bundle file (:mod:`pipeline.bundle`).

    Raises:
        AnimateError: a file is missing, or the renderer cannot be driven by audio (no MappingNet).
    """
    from pipeline import bundle  # same layer; imported here to keep the import graph one-way at module load

    path = Path(models)
    manifest: dict[str, Any] = {}
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="tavce_bundle_") as tmp:
            manifest = bundle.extract_bundle(path, tmp)
            loaded = load_models(tmp, device=device)
            loaded.sources = {k: f"{path}:{Path(v).relative_to(tmp)}" for k, v in loaded.sources.items()}
            loaded.manifest = manifest
            return loaded
    files = model_files(path, expression_basis)
    renderer = load_renderer(files["renderer"], device=device)
    if renderer.mapping is None:
        raise AnimateError(f"{files['renderer']}: this renderer has motion_source: estimator (no MappingNet), so it can "
                           f"only be driven by video; animate needs one trained with motion_source: coefficients "
                           f"(the `train` stage's models/train/checkpoint.pt)")
    a2c = load_audio2coeff(files["audio2coeff"], device=device)
    tavc = load_tavc(files["tavc"], device=device) if "tavc" in files else None
    if renderer.cerl is not None and tavc is None:
        warnings.warn(f"{path}: the renderer uses CERL but there is no {TAVC_FILE}; CERL gets no audio relationship",
                      stacklevel=2)
    basis = coeffs_mod.ExpressionBasis.load(files["expression_basis"])
    return AnimateModels(renderer, a2c, tavc, basis, {k: str(v) for k, v in files.items()}, manifest)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Any common image (jpg/png/webp/...) as (H, W, 3) uint8 RGB, upright by its EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
    except FileNotFoundError as err:
        raise AnimateError(f"{path}: no such image file") from err
    except (UnidentifiedImageError, OSError) as err:
        raise AnimateError(f"{path}: cannot read it as an image ({err})") from err
    return np.ascontiguousarray(rgb)


def read_speech(path: str | os.PathLike[str], min_seconds: float = MIN_AUDIO_SECONDS,
                silence_db: float = SILENCE_DB) -> np.ndarray:
    """Any audio or video-with-audio file -> (S,) float32 16 kHz mono; refuses silent or too short audio."""
    if not Path(path).is_file():
        raise AnimateError(f"{path}: no such audio file")
    try:
        wav = media.read_audio(path, sample_rate=audio_mod.SAMPLE_RATE)  # (S,)
    except media.MediaError as err:
        raise AnimateError(f"{path}: cannot read audio from it ({err})") from err
    seconds = len(wav) / audio_mod.SAMPLE_RATE
    if seconds < min_seconds:
        raise AnimateError(f"{path}: the audio lasts {seconds:.2f} s; animate needs at least {min_seconds:g} s")
    level = audio_mod.rms_dbfs(wav)
    if not level > silence_db:
        raise AnimateError(f"{path}: the audio is silent (RMS level {level:.1f} dBFS < {silence_db:g} dBFS); "
                           f"there is no speech to animate")
    return wav


@dataclass(frozen=True)
class Portrait:
    """The portrait as the renderer sees it: the square face crop, its reference coefficients and where it sits."""

    image: np.ndarray  # (H, W, 3) uint8, the upright photo
    crop: crop_mod.CropBox  # in photo pixels
    face: np.ndarray  # (S, S, 3) uint8, the crop resized to the renderer's side
    coeffs: np.ndarray  # (73,) float32 reference coefficients
    faces_found: int
    align: np.ndarray | None = None  # (5,) Deep3DFaceRecon alignment (W0, H0, s, tx, ty) with a coeff_estimator


def _detections(backend: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every face box (N, 4) and score (N,) of one image, largest first.

    The mediapipe backend tracks the primary (largest) face only and its `_detect` stops at the first detector
    model that finds a face; here every model of it runs and their boxes are merged (IoU > 0.3 = the same face),
    since the short-range model can miss the smaller face of a group photo that the full-range one finds.
    """
    boxes, scores = [], []
    for model in sorted(getattr(backend, "_detectors", {})):
        H, W = image.shape[:2]
        for d in backend._detectors[model].process(image).detections or []:
            rb = d.location_data.relative_bounding_box
            box = np.array([rb.xmin * W, rb.ymin * H, (rb.xmin + rb.width) * W, (rb.ymin + rb.height) * H])
            if all(_iou(box, b) <= 0.3 for b in boxes):
                boxes.append(box)
                scores.append(float(d.score[0]))
    if not boxes:  # another backend (face_alignment), or none found: the tracked primary face
        track = backend.process(image[None])
        ok = track.scores > 0
        boxes, scores = list(track.boxes[ok].astype(np.float64)), list(track.scores[ok].astype(np.float64))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    b, s = np.stack(boxes), np.asarray(scores)  # (N, 4), (N,)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (N,)
    order = np.lexsort((-s, -area))
    return b[order], s[order]


def find_portrait(image: np.ndarray, image_size: int, basis: coeffs_mod.ExpressionBasis | None, *,
                  name: str = "image", face_index: int | None = None, crop_scale: float = DEFAULT_CROP_SCALE,
                  backend: Any | None = None, min_confidence: float = 0.5,
                  coeff_estimator: Any | None = None) -> Portrait:
    """Find, crop and fit the face of one photo with the preprocessing code.

    Args:
        image: (H, W, 3) uint8 RGB.
        image_size: the renderer's side S.
        basis: the corpus' expression basis.
        name: the file name, for errors.
        face_index: which face when there are several (0 = largest); None = the largest, with a warning.
        crop_scale: `fixed_crop`'s scale (preprocess.crop_scale of the training corpus).
        backend: a landmark backend (`make_backend`); None = mediapipe.
        coeff_estimator: BFM coefficients for 0-69 instead of the basis (`AnimateModels.coeff_estimator`).
    """
    if basis is None and coeff_estimator is None:
        raise ValueError("find_portrait needs an expression basis or a coefficient estimator")
    backend = backend or make_backend("mediapipe", min_confidence=min_confidence)
    H, W = image.shape[:2]
    boxes, _ = _detections(backend, image)
    if len(boxes) == 0:
        raise AnimateError(f"{name}: no face found in the image")
    if face_index is not None and not 0 <= face_index < len(boxes):
        raise AnimateError(f"{name}: --face-index {face_index} but {len(boxes)} face(s) found (0 = largest)")
    if len(boxes) > 1 and face_index is None:
        warnings.warn(f"{name}: {len(boxes)} faces found; animating the largest (face index 0; choose another with "
                      f"--face-index, 0 = largest)", stacklevel=2)
    box = boxes[face_index or 0]  # (4,)
    # Landmarks of the chosen face: on the whole photo when it is the only one, else on a region around it (the
    # tracker follows the largest face).
    if len(boxes) == 1:
        x0 = y0 = 0
        region = image
    else:
        side = 3.0 * max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        region = np.ascontiguousarray(image[y0:int(min(H, cy + side / 2)), x0:int(min(W, cx + side / 2))])
    track = backend.process(region[None])
    if not track.has_landmarks[0]:
        raise AnimateError(f"{name}: a face was detected but its landmarks were not found (too small, turned away "
                           f"or occluded?)")
    lms = track.landmarks[:1].copy()  # (1, 68, 3) region pixels
    lms[..., 0] += x0
    lms[..., 1] += y0
    tb = track.boxes[:1].astype(np.float64) + np.array([x0, y0, x0, y0])  # (1, 4)
    crop = crop_mod.fixed_crop(tb, (H, W), scale=crop_scale)
    face = crop_mod.apply_crop(image, crop, image_size)  # (S, S, 3)
    lms = crop_mod.transform_landmarks(lms, crop, image_size).astype(np.float32)  # (1, 68, 3) crop pixels
    pose = coeffs_mod.fit_pose(lms, image_size=image_size)
    expr = (basis.project(coeffs_mod.expression_residuals(pose.aligned)) if basis is not None
            else np.zeros((1, coeffs_mod.NUM_EXPRESSION)))  # (1, 64)
    cx, cy = crop.center
    coeffs = coeffs_mod.coefficients(expr, pose.rotation, pose.translation, pose.scale,
                                     crop_center=(cx / W, cy / H))[0]  # (73,)
    align = None
    if coeff_estimator is not None:  # BFM exp, angle, trans (SadTalker's networks read these); 70-72 as above
        est = coeff_estimator(face[None], lms[..., :2])
        if not np.all(np.isfinite(est.motion)):
            raise AnimateError(f"{name}: the face reconstruction network gave no coefficients for this face")
        coeffs[coeffs_mod.MOTION] = est.motion[0]
        align = np.asarray(est.align[0], np.float64)
    return Portrait(image, crop, face, coeffs, len(boxes), align)


def mapping_windows(coeffs: np.ndarray, centres: Any, window: int, coeff_dim: int,
                    portrait: Portrait) -> np.ndarray:
    """MappingNet input (N, coeff_dim, window): the 70 motion coefficients (`coefficient_windows`), plus, for SadTalker's
    73-input MappingNet (``mapping_00109``, its `full` mode), the portrait's alignment scale and translation
    (``align[2:]``) repeated, as SadTalker appends its source's to every frame."""
    win = coeffs_mod.coefficient_windows(coeffs, centres, window)  # (N, 70, W)
    if coeff_dim == win.shape[1]:
        return win
    if coeff_dim == win.shape[1] + 3 and portrait.align is not None:
        extra = np.broadcast_to(portrait.align[2:].astype(np.float32)[None, :, None], (len(win), 3, window))
        return np.ascontiguousarray(np.concatenate([win, extra], axis=1))  # (N, 73, W)
    raise AnimateError(f"MappingNet reads {coeff_dim} coefficients per frame; animate provides 70 (or 73 with "
                       f"SadTalker's Deep3DFaceRecon alignment)")


# ----------------------------------------------------------------------------------------------------------------
# Motion and frames
# ----------------------------------------------------------------------------------------------------------------
def speech_motion(models: AnimateModels, wav: np.ndarray, reference: np.ndarray, *, pose_style: int = 0,
                  seed: int = 0) -> tuple[audio_mod.MelWindows, np.ndarray]:
    """Mel windows (T, 1, 80, 16; lazy, indexable like the array) and Audio2Coeff motion (T, 70) for T = the
    audio's 25 fps frames."""
    n = max(1, round(len(wav) * audio_mod.FPS / audio_mod.SAMPLE_RATE))
    mel = audio_mod.wav2lip_mel(wav)  # (M, 80)
    windows = audio_mod.MelWindows(mel, n)  # (T, 1, 80, 16), made on demand (long audio)
    with torch.no_grad():
        motion = generate_motion(models.audio2coeff, windows, reference, pose_style=pose_style, seed=seed)  # (T, 70)
    return windows, motion


def _relation(tavc: TAVC | None, windows: np.ndarray | audio_mod.MelWindows, start: int, stop: int,
              device: torch.device) -> torch.Tensor | None:
    """C^a of frames (i-1, i) for i in [start, stop): (t, D, D), as the renderer was trained (frame 0 pairs with
    itself)."""
    if tavc is None:
        return None
    idx = np.arange(start, stop)
    prev = np.maximum(idx - 1, 0)
    with torch.no_grad():
        tavc = tavc.to(device)
        f_prev = tavc.encode_audio(torch.from_numpy(windows[prev]).to(device))  # (t, D)
        f_cur = tavc.encode_audio(torch.from_numpy(windows[idx]).to(device))  # (t, D)
        return relationship(f_prev, f_cur).cpu()  # (t, D, D)


def feather_mask(size: int, fraction: float = FEATHER_FRACTION) -> np.ndarray:
    """(size, size) float32 in [0, 1]: 1 inside, falling smoothly to 0 at the border (paste-back blending)."""
    margin = max(1, int(round(size * fraction)))
    m = np.zeros((size, size), np.float32)
    m[margin:size - margin, margin:size - margin] = 1.0
    k = 2 * margin + 1
    return cv2.GaussianBlur(m, (k, k), 0)


def paste_back(photo: np.ndarray, frames: np.ndarray, crop: crop_mod.CropBox, mask: np.ndarray) -> np.ndarray:
    """Paste (t, S, S, 3) animated crops into the photo at `crop` with the feathered `mask` (crop.size side).

    Returns (t, H', W', 3) with H', W' the photo's size rounded down to even (H.264 yuv420p)."""
    H, W = photo.shape[:2]
    He, We = H - H % 2, W - W % 2
    # The part of the crop inside the photo.
    sx0, sy0, sx1, sy1 = max(crop.x0, 0), max(crop.y0, 0), min(crop.x1, W), min(crop.y1, H)
    m = mask[sy0 - crop.y0:sy1 - crop.y0, sx0 - crop.x0:sx1 - crop.x0, None]  # (h, w, 1)
    out = np.empty((len(frames), He, We, 3), np.uint8)
    base = photo.astype(np.float32)
    for k, f in enumerate(frames):
        big = cv2.resize(f, (crop.size, crop.size), interpolation=cv2.INTER_CUBIC).astype(np.float32)  # (s, s, 3)
        part = big[sy0 - crop.y0:sy1 - crop.y0, sx0 - crop.x0:sx1 - crop.x0]
        img = base.copy()
        img[sy0:sy1, sx0:sx1] = m * part + (1 - m) * img[sy0:sy1, sx0:sx1]
        out[k] = np.clip(img[:He, :We] + 0.5, 0, 255).astype(np.uint8)
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AnimateError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(device)


@dataclass(frozen=True)
class AnimateResult:
    out: Path
    gif: Path | None
    frames: int
    seconds: float
    faces_found: int
    size: tuple[int, int]


def default_batch_size(device: torch.device | str, image_size: int) -> int:
    """Frames per renderer pass when the caller names none: 1 on a CPU at 256 px and above, 8 otherwise. On this
    project's 2-core CPU the 256-px activations of several frames overflow the caches: batch 4 rendered 9-13 % slower
    than batch 1 (benchmarks/render_fps.py, issue 16), while at 64 px batching is 1.5-3x faster and on a GPU it is
    what fills the device."""
    return 1 if torch.device(device).type == "cpu" and image_size >= 256 else 8


def animate(image: str | os.PathLike[str], audio: str | os.PathLike[str], out: str | os.PathLike[str], *,
            models: str | os.PathLike[str] | AnimateModels = "models", pose_style: int = 0, seed: int = 0,
            face_index: int | None = None, paste_back_full: bool = False, gif: bool = False, device: str = "auto",
            batch_size: int | None = None, chunk_seconds: float = 4.0, crop_scale: float | None = None,
            expression_basis: str | os.PathLike[str] | None = None, progress: bool = True,
            options: InferenceOptions | None = None, encoder_threads: int = 0) -> AnimateResult:
    """Animate one portrait with one speech recording (the library call behind ``tavce animate``).

    Args:
        image: portrait photo (jpg/png/webp/...; EXIF orientation honoured).
        audio: speech (wav/mp3/m4a/flac/ogg or a video with audio; any rate, any channels).
        out: the mp4 to write (H.264 + AAC, 25 fps, the audio muxed in sync).
        models: a pipeline run's ``models/`` folder, a ``tavce export`` bundle, or already loaded `AnimateModels`.
        pose_style: PoseVAE style class (a training speaker).
        seed: PoseVAE's latent samples; the video is a function of (inputs, models, seed).
        face_index: which face when the photo has several (0 = largest); None = the largest with a warning.
        paste_back_full: paste the animated crop back into the whole photo (feathered) instead of writing the crop.
        gif: also write ``<out>.gif``, a small preview.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: frames per renderer forward pass; None = :func:`default_batch_size` (1 on a CPU at 256 px and
            above, else 8).
        chunk_seconds: audio seconds rendered and encoded at a time (bounds memory for long audio).
        crop_scale: face crop framing; None = the bundle's recorded preprocess.crop_scale, else 1.8 (the default).
        expression_basis: override the expression basis file (folder models only).
        progress: a tqdm bar over frames with the time left.
        options: renderer inference switches (issue 16; e.g. ``InferenceOptions.fastest(device)``: the exact
            rewrites and channels-last, bf16 where the CPU has it); one inference copy is prepared for the whole call.
            None = the trained model's own fp32 arithmetic.
        encoder_threads: x264 threads; 0 = ffmpeg's choice by the CPU count (x264's threaded output is the same on
            every run with the same count), 1 = byte-identical files on any machine. With one thread x264 was half
            of `animate`'s time at 256 px on a GPU machine (benchmarks/animate_fps.py).
    """
    from tqdm import tqdm

    if (batch_size is not None and batch_size < 1) or chunk_seconds <= 0:
        raise ValueError(f"batch_size must be >= 1 and chunk_seconds > 0, got {batch_size}, {chunk_seconds}")
    dev = resolve_device(device)
    out = Path(out)
    photo = read_image(image)
    wav = read_speech(audio)
    m = models if isinstance(models, AnimateModels) else load_models(models, device="cpu",
                                                                     expression_basis=expression_basis)
    renderer = m.renderer.to(dev)  # once: render() keeps a model where it finds it
    m.audio2coeff.to(dev)  # generate_motion runs where the model is (PoseVAE's latents are drawn on the CPU, seeded)
    if batch_size is None:
        batch_size = default_batch_size(dev, renderer.cfg.image_size)
    fast = prepare_renderer(renderer, options, dev) if options is not None else None  # one copy for every chunk
    if crop_scale is None:
        crop_scale = float(m.manifest.get("preprocess", {}).get("crop_scale", DEFAULT_CROP_SCALE))
    portrait = find_portrait(photo, renderer.cfg.image_size, m.basis, name=str(image), face_index=face_index,
                             crop_scale=crop_scale, coeff_estimator=m.coeff_estimator)
    torch.manual_seed(seed)
    windows, coeffs = speech_motion(m, wav, portrait.coeffs, pose_style=pose_style, seed=seed)  # (T, 1, 80, 16), (T, 70)
    T = len(coeffs)
    W, Dm = renderer.cfg.mapping.window, renderer.cfg.mapping.coeff_dim
    with torch.no_grad():
        src_win = mapping_windows(portrait.coeffs[None], [0], W, Dm, portrait)  # (1, 70, W): the reference repeated
        source_motion = renderer.map_motion(torch.from_numpy(src_win).to(dev))
    wav = np.pad(wav[:round(T * audio_mod.SAMPLE_RATE / audio_mod.FPS)],
                 (0, max(0, round(T * audio_mod.SAMPLE_RATE / audio_mod.FPS) - len(wav))))  # exactly T frames long
    chunk = max(1, int(round(chunk_seconds * audio_mod.FPS)))
    mask = feather_mask(portrait.crop.size) if paste_back_full else None
    bar = tqdm(total=T, unit="frame", desc="animate", disable=not progress)
    size: list[tuple[int, int]] = []

    def frames() -> Iterator[np.ndarray]:
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            with torch.no_grad():
                motion = renderer.map_motion(
                    torch.from_numpy(mapping_windows(coeffs, range(s, e), W, Dm, portrait)).to(dev))  # (t, ...)
            rel = _relation(m.tavc, windows, s, e, dev) if renderer.cerl is not None else None
            part = render(fast if fast is not None else renderer, portrait.face, motion, source_motion=source_motion,
                          relation=rel, batch_size=batch_size, device=dev)  # (t, S, S, 3)
            if mask is not None:
                part = paste_back(photo, part, portrait.crop, mask)
            size.append(part.shape[1:3])
            bar.update(e - s)
            yield part

    try:
        media.write_video(out, frames(), fps=audio_mod.FPS, audio=wav, sample_rate=audio_mod.SAMPLE_RATE,
                          threads=encoder_threads)
    finally:
        bar.close()
    gif_path = None
    if gif:
        gif_path = out.with_suffix(".gif")
        media.video_to_gif(out, gif_path)
    return AnimateResult(out, gif_path, T, T / audio_mod.FPS, portrait.faces_found, size[0] if size else (0, 0))


def read_frames_of(path: str | os.PathLike[str]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a written video (tests, checks)."""
    return media.read_video(path, fps=audio_mod.FPS).frames


__all__ = ["AnimateError", "AnimateModels", "AnimateResult", "animate", "default_batch_size", "find_portrait",
           "load_models", "model_files", "read_image", "read_speech", "speech_motion", "paste_back", "feather_mask",
           "MIN_AUDIO_SECONDS"]
