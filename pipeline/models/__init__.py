"""Networks, one per file, each with a config dataclass."""
