"""Training loops (one module per model family) and their shared plumbing (`common`)."""
