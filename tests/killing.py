"""A tracker that simulates a killed training process (shared by the resume tests of the training stages)."""

from __future__ import annotations


class Killed(RuntimeError):
    """Raised where the process would have been killed."""


class KillAt:
    """Tracker that raises :class:`Killed` when the loop logs the training metrics of step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def log_metrics(self, metrics, step=None):
        if step == self.at and any(k.startswith("train/") for k in metrics):
            raise Killed(step)

    def log_params(self, params):
        pass

    def log_artifact(self, path, subdir=None):
        pass

    def set_tags(self, tags):
        pass
