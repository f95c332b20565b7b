"""Paths of the workflow's own default config, wherever Snakemake runs (`--directory elsewhere`)."""

from __future__ import annotations

from pathlib import Path


def workflow_file(path: str, workflow_dir: str | Path, workdir: str | Path) -> str:
    """A relative path of config/config.yaml (the demo's `samples`): as written when the working
    directory holds it (a clone, as before), else the workflow's own file. Only for the default
    config: a --configfile's paths stay relative to the working directory, as Snakemake's are."""
    if Path(path).is_absolute() or (Path(workdir) / path).exists() or not (Path(workflow_dir) / path).exists():
        return path
    return str(Path(workflow_dir) / path)
