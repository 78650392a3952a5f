"""Thin DVC entry points: paths from argv (declared in dvc.yaml), a params section, one library call."""
