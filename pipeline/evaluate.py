"""Evaluation protocol (TAVCE §IV, Tables I / IV; issue 13): the same metrics on any talking-head system's videos.

A *system* is a folder of videos; each is matched by file stem to a *reference* (ground-truth) video of the same
clip. Per pair, at the generated video's resolution (the reference is resized to it, so every system is judged at
the size it produces):

| metric | extractor (label) | what |
|---|---|---|
| FID / KID | ``inception_v3_fid`` (pytorch-fid weights) or ``dlib_resnet_v1`` | all generated vs all reference frames |
| CSIM | ``dlib_resnet_v1`` or ``arcface`` | generated frames vs the source portrait (the reference's first frame) |
| LMD mouth / face | ``dlib_68_ibug`` | generated vs reference landmarks, frame by frame (``rigid``: pose removed) |
| LSE-D / LSE-C / AV offset | ``syncnet_tavce`` or ``syncnet_v2`` | the video with its audio (SyncNet offset search) |
| TAVC similarity | ``tavc_tavce`` | consecutive generated frames vs the audio |
| rigid |AV-Off| | ``ms_sync_rigid_tavce`` | head motion (landmarks 17-47) vs the audio, 200/400/800 ms |

Audio: the generated file's own audio track, or ``<audio dir>/<stem>.*`` when given. A file that cannot be read,
has no face or no audio is reported with its name and reason, and the other files are still scored.

The ``evaluate`` stage (:func:`run_evaluation`) produces the systems itself: "ours" (the trained model driven by each
test clip's audio from its first frame, through `pipeline.animate`'s model code), "static source frame" (the first
frame held still, with the audio) and "ground truth" (the real clip), all written as mp4 and scored by the same code.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import cv2
import numpy as np
import torch

from pipeline import audio as audio_mod
from pipeline import media
from pipeline.checkpoint import WeightsError
from pipeline.metrics import fid as fid_mod
from pipeline.metrics.av_offset import MS_SYNC_NAME, rigid_av_offset, rigid_syncers
from pipeline.metrics.csim import ArcFaceIdentity, cosine, load_arcface
from pipeline.metrics.dlib_face import DESCRIPTOR_NAME, LANDMARKS_NAME, DlibFace, FaceTrack68
from pipeline.metrics.lmd import landmark_distance
from pipeline.metrics.lse import DomainCheck, domain_check
from pipeline.metrics.sync import SyncNetScorer
from pipeline.metrics.tavc_similarity import TAVC_NAME, tavc_video_similarity

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", *VIDEO_EXTENSIONS)
SYNC_TRACK_SIDE = 256  # px: frames are upscaled to this side before the mediapipe landmark tracker sees them


class EvaluateError(ValueError):
    """A video or folder the evaluation cannot use; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricWeights:
    """Optional published feature extractors; null = the labelled substitute (see the module table)."""

    inception: str | None = None  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    arcface: str | None = None  # insightface arcface_torch backbone.pth (IResNet)
    syncnet_v2: str | None = None  # syncnet_python's syncnet_v2.model


@dataclass(frozen=True)
class MetricsConfig:
    """How the metrics are computed.

    Attributes:
        weights: published extractors to use instead of the substitutes.
        lmd_normalize: ``rigid`` (pose removed by a similarity on landmarks 17-47) | ``none``.
        sync_landmarks: landmarks that place the SyncNet / TAVC mouth crops and drive the rigid syncers:
            ``mediapipe`` (the tracker the sync networks were trained on) | ``dlib`` (dlib_68_ibug).
        vshift: offsets -vshift..vshift searched by LSE and the rigid AV offset.
        max_frames: score at most this many frames of each video (0 = all).
        frame_stride: every n-th frame enters FID / KID and CSIM (identity descriptors cost ~60 ms a frame).
        kid_subsets / kid_subset_size: KID estimator.
    """

    weights: MetricWeights = field(default_factory=MetricWeights)
    lmd_normalize: Literal["none", "rigid"] = "rigid"
    sync_landmarks: Literal["mediapipe", "dlib"] = "mediapipe"
    vshift: int = 15
    max_frames: int = 0
    frame_stride: int = 1
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def validate(self) -> None:
        if self.vshift < 1 or self.max_frames < 0 or self.frame_stride < 1 or self.kid_subsets < 1 \
                or self.kid_subset_size < 2:
            raise ValueError("vshift >= 1, max_frames >= 0, frame_stride >= 1, kid_subsets >= 1 and "
                             "kid_subset_size >= 2 are required")


@dataclass(frozen=True)
class SyncModels:
    """Trained sync networks of a pipeline run (any may be None: that metric is then left out)."""

    syncnet: str | None = None  # models/syncnet/checkpoint.pt
    syncers: str | None = None  # models/syncers/checkpoint.pt
    tavc: str | None = None  # models/tavc/checkpoint.pt


class Extractors:
    """Every feature network of the protocol, loaded once."""

    def __init__(self, cfg: MetricsConfig, models: SyncModels, device: str | torch.device = "cpu") -> None:
        from pipeline.models.syncer import load_syncers
        from pipeline.models.tavc import load_tavc

        self.cfg = cfg
        self.face = DlibFace.shared()
        w = cfg.weights
        self.arcface = ArcFaceIdentity(load_arcface(w.arcface), self.face, device) if w.arcface else None
        self.inception = fid_mod.FIDInceptionV3().load_pt_inception(w.inception) if w.inception else None
        self.syncnet = (SyncNetScorer.load(models.syncnet, w.syncnet_v2, vshift=cfg.vshift, device=device)
                        if models.syncnet or w.syncnet_v2 else None)
        self.tavc = load_tavc(models.tavc) if models.tavc else None
        self.rigid = rigid_syncers(load_syncers(models.syncers)) if models.syncers else None
        self._mediapipe: Any = None
        self.device = device

    @property
    def names(self) -> dict[str, str]:
        """Metric -> extractor label, as printed in every table."""
        out = {"fid": fid_mod.EXTRACTOR_INCEPTION if self.inception else fid_mod.EXTRACTOR_DLIB,
               "csim": self.arcface.name if self.arcface else DESCRIPTOR_NAME,
               "lmd": LANDMARKS_NAME,
               "sync_landmarks": "mediapipe68" if self.cfg.sync_landmarks == "mediapipe" else LANDMARKS_NAME}
        if self.syncnet:
            out["lse"] = self.syncnet.name
        if self.tavc:
            out["tavc"] = TAVC_NAME
        if self.rigid:
            out["rigid_offset"] = MS_SYNC_NAME
        return out

    @property
    def needs_sync_landmarks(self) -> bool:
        return any(m is not None for m in (self.syncnet, self.tavc, self.rigid))

    def mediapipe(self) -> Any:
        if self._mediapipe is None:
            from pipeline.faces.landmarks import make_backend

            self._mediapipe = make_backend("mediapipe")
        return self._mediapipe


# ----------------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class VideoAnalysis:
    """A video's frames, audio and the features every metric needs, computed once.

    Attributes:
        frames: (T, S, S', 3) uint8 at the evaluation size; wav: (N,) 16 kHz or None.
        track: dlib landmarks; descriptors: (T, 128) dlib ResNet (NaN rows without a face).
        sync_landmarks: (T, 68, 2) landmarks for the sync metrics, gaps interpolated; None if no face anywhere.
    """

    name: str
    frames: np.ndarray
    wav: np.ndarray | None
    track: FaceTrack68
    descriptors: np.ndarray
    sync_landmarks: np.ndarray | None
    fid_features: np.ndarray


def read_clip(path: str | os.PathLike[str], audio: str | os.PathLike[str] | None = None, *,
              size: tuple[int, int] | None = None, max_frames: int = 0,
              need_audio: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames (T, H, W, 3) uint8 at 25 fps (resized to `size` = (H, W) when given) and 16 kHz audio (from `audio`,
    else from the video itself) of one video. Raises EvaluateError naming the file."""
    try:
        frames = media.read_video(path, fps=audio_mod.FPS).frames
    except media.MediaError as err:
        raise EvaluateError(f"{path}: cannot read it as a video ({err})") from err
    if len(frames) == 0:
        raise EvaluateError(f"{path}: no video frames")
    if max_frames:
        frames = frames[:max_frames]
    if size is not None and frames.shape[1:3] != tuple(size):
        frames = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])
    wav = None
    src = audio if audio is not None else path
    try:
        wav = media.read_audio(src, sample_rate=audio_mod.SAMPLE_RATE)
    except media.MediaError as err:
        if need_audio:
            raise EvaluateError(f"{src}: no usable audio ({err}); give the speech with --audio DIR") from err
    if wav is not None:
        wav = wav[:round(len(frames) * audio_mod.SAMPLE_RATE / audio_mod.FPS)]
    return frames, wav


def _fill_gaps(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(T, 68, 2) with rows missing where ~found -> every row, linearly interpolated (edges held)."""
    t = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)  # (T, 136)
    out = np.stack([np.interp(t, t[found], flat[found, k]) for k in range(flat.shape[1])], axis=1)
    return out.reshape(landmarks.shape)


def sync_landmarks(ext: Extractors, frames: np.ndarray, track: FaceTrack68) -> np.ndarray | None:
    """(T, 68, 2) landmarks for the sync metrics (config `sync_landmarks`), gaps filled; None without any face."""
    if ext.cfg.sync_landmarks == "dlib":
        lm, found = track.landmarks, track.found
    else:
        scale = max(1.0, SYNC_TRACK_SIDE / min(frames.shape[1:3]))
        big = frames if scale == 1.0 else np.stack([
            cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
            for f in frames])
        mp = ext.mediapipe().process(big)
        lm, found = mp.landmarks[..., :2].astype(np.float64) / scale, mp.has_landmarks.astype(bool)
    if not found.any():
        return None
    return _fill_gaps(lm, found)


def analyze(ext: Extractors, name: str, frames: np.ndarray, wav: np.ndarray | None,
            stride: int = 1) -> VideoAnalysis:
    """Landmarks, identity descriptors (every `stride`-th frame), sync landmarks and FID features of one video."""
    track, desc = ext.face.analyze(frames, describe_every=stride)
    if not track.found.any():
        raise EvaluateError(f"{name}: no face found in any of its {len(frames)} frames ({LANDMARKS_NAME} detector "
                            f"dlib_hog)")
    lms = sync_landmarks(ext, frames, track) if ext.needs_sync_landmarks else None
    if ext.inception is not None:
        feats = fid_mod.inception_features(ext.inception, frames[::stride], device=ext.device)
    else:
        d = desc[::stride]
        feats = d[np.isfinite(d).all(axis=1)]
    return VideoAnalysis(name, frames, wav, track, desc, lms, feats)


def score_pair(ext: Extractors, gen: VideoAnalysis, ref: VideoAnalysis, *, reference_row: bool = False
               ) -> dict[str, Any]:
    """Per-clip metrics of a generated video against its reference (module table); NaN where a metric cannot be
    computed for this clip (the reason is logged)."""
    row: dict[str, Any] = {"clip": gen.name, "frames": len(gen.frames),
                           "face_found": gen.track.found_fraction}
    # CSIM against the source portrait = the reference's first frame with a face
    src_idx = int(np.flatnonzero(ref.track.found)[0])
    if ext.arcface is not None:
        src = ext.arcface.embed(ref.frames[src_idx:src_idx + 1])[0]
        emb = ext.arcface.embed(gen.frames[::ext.cfg.frame_stride])
    else:
        src = ref.descriptors[src_idx]
        if not np.isfinite(src).all():
            src = ext.face.descriptors(ref.frames[src_idx:src_idx + 1])[0]
        emb = gen.descriptors
    ok = np.isfinite(emb).all(axis=1)
    row["csim"] = float(cosine(emb[ok], src).mean()) if ok.any() and np.isfinite(src).all() else float("nan")
    if not reference_row:
        try:
            sx = gen.frames.shape[2]
            r = landmark_distance(gen.track.landmarks, ref.track.landmarks, sx, ref.frames.shape[2],
                                  ext.cfg.lmd_normalize)
            row["lmd_mouth"], row["lmd_face"] = r.mouth, r.face
        except ValueError as err:
            log.warning("%s: LMD not computed (%s)", gen.name, err)
            row["lmd_mouth"] = row["lmd_face"] = float("nan")
    if gen.wav is not None and gen.sync_landmarks is not None:
        if ext.syncnet is not None:
            s = ext.syncnet.score(gen.frames, gen.wav, gen.sync_landmarks, gen.name)
            row.update(lse_offset=s.offset, abs_offset=abs(s.offset), lse_d=s.lse_d, lse_c=s.lse_c)
        if ext.tavc is not None:
            row["tavc_similarity"] = tavc_video_similarity(ext.tavc, gen.frames, gen.wav, gen.sync_landmarks).similarity
        if ext.rigid is not None:
            try:
                r2 = rigid_av_offset(ext.rigid, gen.sync_landmarks, gen.wav, ext.cfg.vshift)
                row.update({f"rigid_abs_offset_{k}": v for k, v in r2.abs_offset.items()})
            except ValueError as err:
                log.warning("%s: rigid AV offset not computed (%s)", gen.name, err)
    return row


# ----------------------------------------------------------------------------------------------------------------
# A system (folder of videos)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One generated video, its reference clip and (optionally) a separate audio file."""

    name: str
    generated: Path
    reference: Path
    audio: Path | None = None


def _index(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in extensions}


def match_folders(generated: str | os.PathLike[str], reference: str | os.PathLike[str],
                  audio: str | os.PathLike[str] | None = None) -> tuple[list[Pair], list[dict[str, str]]]:
    """Pairs of generated and reference videos with the same file stem, and the generated files that have no
    reference (or no audio file when `audio` is given), as error rows ``{file, reason}``."""
    g, r = Path(generated), Path(reference)
    for folder, what in ((g, "generated"), (r, "reference")):
        if not folder.is_dir():
            raise EvaluateError(f"{folder}: no such {what} folder")
    gens, refs = _index(g, VIDEO_EXTENSIONS), _index(r, VIDEO_EXTENSIONS)
    auds = _index(Path(audio), AUDIO_EXTENSIONS) if audio is not None else None
    if audio is not None and not Path(audio).is_dir():
        raise EvaluateError(f"{audio}: no such audio folder")
    if not gens:
        raise EvaluateError(f"{g}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
    pairs, errors = [], []
    for stem, path in gens.items():
        if stem not in refs:
            errors.append({"file": str(path), "reason": f"no reference video named {stem}.* in {r}"})
        elif auds is not None and stem not in auds:
            errors.append({"file": str(path), "reason": f"no audio file named {stem}.* in {audio}"})
        else:
            pairs.append(Pair(stem, path, refs[stem], auds[stem] if auds is not None else None))
    return pairs, errors


@dataclass
class SystemResult:
    """Per-clip rows, the files that could not be scored, and the summary (means, FID/KID) of one system."""

    rows: list[dict[str, Any]]
    errors: list[dict[str, str]]
    summary: dict[str, Any]


METRIC_KEYS = ("csim", "lmd_mouth", "lmd_face", "lse_d", "lse_c", "abs_offset", "tavc_similarity",
               "rigid_abs_offset_200ms", "rigid_abs_offset_400ms", "rigid_abs_offset_800ms")


def summarize(rows: list[dict[str, Any]], gen_features: list[np.ndarray], ref_features: list[np.ndarray],
              ext: Extractors, *, reference_row: bool = False, seed: int = 0) -> dict[str, Any]:
    """Means over clips of every per-clip metric, plus FID / KID of all frames (not for the reference row)."""
    out: dict[str, Any] = {"clips": len(rows)}
    for k in METRIC_KEYS:
        vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            out[k] = float(vals.mean())
    if not reference_row and gen_features and ref_features:
        gf, rf = np.concatenate(gen_features), np.concatenate(ref_features)
        if len(gf) >= 2 and len(rf) >= 2:
            res = fid_mod.fid_from_features(rf, gf, ext.names["fid"], kid_subsets=ext.cfg.kid_subsets,
                                            kid_subset_size=ext.cfg.kid_subset_size, seed=seed)
            out.update(fid=res.fid, kid=res.kid, kid_std=res.kid_std, fid_frames_generated=res.n_generated,
                       fid_frames_reference=res.n_real)
    return out


class ReferenceCache:
    """Analyses of reference videos, shared by every system scored against them."""

    def __init__(self, ext: Extractors) -> None:
        self.ext = ext
        self._items: dict[tuple[str, tuple[int, int]], VideoAnalysis] = {}

    def get(self, path: Path, size: tuple[int, int], name: str) -> VideoAnalysis:
        key = (str(path), size)
        if key not in self._items:
            frames, wav = read_clip(path, size=size, max_frames=self.ext.cfg.max_frames, need_audio=False)
            self._items[key] = analyze(self.ext, str(path), frames, wav, self.ext.cfg.frame_stride)
        return self._items[key]


def evaluate_pairs(ext: Extractors, pairs: Iterable[Pair], *, references: ReferenceCache | None = None,
                   reference_row: bool = False, errors: list[dict[str, str]] | None = None,
                   progress: bool = False, seed: int = 0) -> SystemResult:
    """Score every pair; a pair that fails is recorded in `errors` with its file and reason, the rest go on.

    Args:
        reference_row: the generated videos *are* the references (ground-truth row): FID and LMD are left out.
    """
    from tqdm import tqdm

    references = references or ReferenceCache(ext)
    errors = list(errors or [])
    rows, gen_feats, ref_feats = [], [], []
    pairs = list(pairs)
    for p in tqdm(pairs, desc="evaluate", unit="video", disable=not progress):
        try:
            frames, wav = read_clip(p.generated, p.audio, max_frames=ext.cfg.max_frames,
                                    need_audio=ext.needs_sync_landmarks)
            ref = references.get(p.reference, frames.shape[1:3], p.name)
            gen = analyze(ext, str(p.generated), frames, wav, ext.cfg.frame_stride)
            if gen.sync_landmarks is None and ext.needs_sync_landmarks:
                raise EvaluateError(f"{p.generated}: the {ext.names['sync_landmarks']} tracker finds no face")
            row = score_pair(ext, gen, ref, reference_row=reference_row)
            row["clip"] = p.name
        except (EvaluateError, WeightsError, ValueError) as err:
            log.warning("%s", err)
            errors.append({"file": str(p.generated), "reason": str(err)})
            continue
        rows.append(row)
        gen_feats.append(gen.fid_features)
        ref_feats.append(ref.fid_features)
    summary = summarize(rows, gen_feats, ref_feats, ext, reference_row=reference_row, seed=seed)
    summary["errors"] = len(errors)
    return SystemResult(rows, errors, summary)


def sync_domain_check(ext: Extractors, pairs: Sequence[Pair], references: ReferenceCache) -> DomainCheck | None:
    """:class:`pipeline.metrics.lse.DomainCheck` of the SyncNet on the ground-truth videos of `pairs`: their own
    audio vs the next clip's audio (needs >= 2 clips)."""
    if ext.syncnet is None or len(pairs) < 2:
        return None
    items = []
    for p in pairs:
        frames, wav = read_clip(p.reference, p.audio, max_frames=ext.cfg.max_frames)
        ref = references.get(p.reference, frames.shape[1:3], p.name)
        if ref.sync_landmarks is not None:
            items.append((ref, wav))
    if len(items) < 2:
        return None
    offsets, own_c, shuffled_c = [], [], []
    for i, (ref, wav) in enumerate(items):
        own = ext.syncnet.score(ref.frames, wav, ref.sync_landmarks, ref.name)
        other = items[(i + 1) % len(items)][1]
        other = np.resize(other, len(wav)) if len(other) < len(wav) else other[:len(wav)]
        shuffled = ext.syncnet.score(ref.frames, other, ref.sync_landmarks, ref.name)
        offsets.append(own.offset)
        own_c.append(own.lse_c)
        shuffled_c.append(shuffled.lse_c)
    return domain_check(offsets, own_c, shuffled_c)


# ----------------------------------------------------------------------------------------------------------------
# Tables and files
# ----------------------------------------------------------------------------------------------------------------
COLUMNS = (  # (summary key, header, extractor key, direction)
    ("fid", "FID", "fid", "↓"), ("kid", "KID", "fid", "↓"), ("csim", "CSIM", "csim", "↑"),
    ("lse_d", "LSE-D", "lse", "↓"), ("lse_c", "LSE-C", "lse", "↑"), ("abs_offset", "|AV off|", "lse", "↓"),
    ("lmd_mouth", "LMD mouth", "lmd", "↓"), ("tavc_similarity", "TAVC sim", "tavc", "↑"),
    ("rigid_abs_offset_200ms", "|AV-Off| rigid 200ms", "rigid_offset", "↓"),
)


def column_header(key: str, names: dict[str, str]) -> str:
    """``FID[dlib_resnet_v1] ↓``-style header naming the extractor (plain ``FID`` only for pytorch-fid's Inception)."""
    col = next(c for c in COLUMNS if c[0] == key)
    extractor = names.get(col[2], "n/a")
    label = col[1] if (col[2] == "fid" and extractor == fid_mod.EXTRACTOR_INCEPTION) else f"{col[1]}[{extractor}]"
    return f"{label} {col[3]}"


def markdown_table(results: dict[str, dict[str, dict[str, Any]]], names: dict[str, str]) -> str:
    """Table I style: one row per (dataset, system), one column per metric, each header naming its extractor.

    Args:
        results: dataset -> system -> summary.
    """
    keys = [c[0] for c in COLUMNS if any(c[0] in s for d in results.values() for s in d.values())]
    head = ["dataset", "system", "clips"] + [column_header(k, names).replace("|", "\\|") for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dataset, systems in results.items():
        for system, s in systems.items():
            cells = [dataset, system, str(s.get("clips", 0))]
            for k in keys:
                v = s.get(k)
                cells.append("—" if v is None else (f"{v:.4f}" if k == "kid" else f"{v:.3f}"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_rows_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Per-clip rows (any keys; missing cells empty)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def extractor_notes(names: dict[str, str]) -> str:
    """What each extractor label means (printed under every table)."""
    text = {
        fid_mod.EXTRACTOR_INCEPTION: "pytorch-fid InceptionV3 pool3 (2048-d, 299 px): the papers' FID",
        fid_mod.EXTRACTOR_DLIB: "dlib's pretrained ResNet face-recognition descriptor (128-d; substitute: not the "
                                "papers' Inception FID)",
        "arcface": "insightface ArcFace IResNet (512-d), the papers' CSIM network",
        LANDMARKS_NAME: "dlib's 68-point iBUG shape predictor (300-W data: non-commercial)",
        "syncnet_tavce": "this project's SyncNet (train_syncnet stage), not the public syncnet_v2",
        "syncnet_v2": "the public syncnet_v2 weights (the published LSE protocol)",
        TAVC_NAME: "this project's TAVC networks (train_tavc stage)",
        MS_SYNC_NAME: "this project's MS-Sync rigid triplet syncers (train_syncers stage), |offset| in frames",
        "mediapipe68": "mediapipe face mesh mapped to 68 points (mouth crops and head motion of the sync metrics)",
    }
    used = dict.fromkeys(names.values())
    return "\n".join(f"- `{n}`: {text[n]}" for n in used if n in text) + "\n"


def write_report(out: str | os.PathLike[str], results: dict[str, dict[str, SystemResult]], names: dict[str, str],
                 extra: dict[str, Any] | None = None, title: str = "Evaluation") -> dict[str, Any]:
    """metrics.json, table.md, clips.csv, errors.csv (if any) and metrics.png of a set of results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {d: {s: r.summary for s, r in systems.items()} for d, systems in results.items()}
    metrics = {"extractors": names, "results": summaries, **(extra or {})}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    table = markdown_table(summaries, names)
    (out / "table.md").write_text(f"# {title}\n\n{table}\nExtractors:\n{extractor_notes(names)}")
    rows = [{"dataset": d, "system": s, **row} for d, systems in results.items() for s, r in systems.items()
            for row in r.rows]
    write_rows_csv(out / "clips.csv", rows)
    errors = [{"dataset": d, "system": s, **e} for d, systems in results.items() for s, r in systems.items()
              for e in r.errors]
    if errors:
        write_rows_csv(out / "errors.csv", errors)
    plot_summary(summaries, names, out / "metrics.png")
    return metrics


def plot_summary(summaries: dict[str, dict[str, dict[str, Any]]], names: dict[str, str], path: Path) -> None:
    """One bar chart per metric: systems side by side, one group per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [c[0] for c in COLUMNS if any(c[0] in s for d in summaries.values() for s in d.values())]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 3.2), squeeze=False)
    datasets = list(summaries)
    systems = list(dict.fromkeys(s for d in summaries.values() for s in d))
    width = 0.8 / max(1, len(systems))
    for ax, k in zip(axes[0], keys):
        for j, system in enumerate(systems):
            vals = [summaries[d].get(system, {}).get(k, np.nan) for d in datasets]
            ax.bar(np.arange(len(datasets)) + j * width, vals, width, label=system)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(systems) - 1) / 2, datasets, fontsize=7)
        ax.set_title(column_header(k, names), fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# `tavce evaluate`: folders of videos
# ----------------------------------------------------------------------------------------------------------------
def evaluate_folders(generated: str | os.PathLike[str], reference: str | os.PathLike[str], out: str | os.PathLike[str],
                     *, audio: str | os.PathLike[str] | None = None, cfg: MetricsConfig = MetricsConfig(),
                     models: SyncModels = SyncModels(), system: str = "generated", dataset: str = "videos",
                     device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Score a folder of any system's videos against reference clips matched by file stem (the library call behind
    ``tavce evaluate``); writes the report files into `out` and returns metrics.json's content."""
    pairs, errors = match_folders(generated, reference, audio)
    ext = Extractors(cfg, models, device)
    refs = ReferenceCache(ext)
    result = evaluate_pairs(ext, pairs, references=refs, errors=errors, progress=progress)
    check = sync_domain_check(ext, [p for p in pairs if p.name in {r["clip"] for r in result.rows}], refs)
    extra = {"errors": result.errors, "generated": str(generated), "reference": str(reference),
             "sync_domain_check": check.as_dict() if check else None}
    return write_report(out, {dataset: {system: result}}, ext.names, extra, title=f"Evaluation of {generated}")


__all__ = ["EvaluateError", "Extractors", "MetricWeights", "MetricsConfig", "Pair", "ReferenceCache", "SyncModels",
           "SystemResult", "analyze", "evaluate_folders", "evaluate_pairs", "markdown_table", "match_folders",
           "read_clip", "score_pair", "summarize", "write_report"]
