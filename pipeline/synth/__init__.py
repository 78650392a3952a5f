"""Synthetic talking-head corpus (the embedded default dataset): espeak-ng speech with phoneme timing, visemes,
prosody-driven head motion and blinks, a small 3D face renderer, written as mp4 + ground-truth sidecars."""
