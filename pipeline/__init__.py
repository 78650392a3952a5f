"""tavce: reproducible pipeline for audio-driven one-shot talking-head animation (TAVCE and relatives).

`pipeline` is the library. It never reads params.yaml, argv, environment variables or fixed paths; the thin
entry points in `stages/` do that and hand typed configs to the functions here.
"""

__version__ = "0.1.0"
