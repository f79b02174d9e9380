"""The sweep's vector files: extraction of what is missing, CAA's normalisation, and a hash per cell.

The vectors the cells add are CAA's when `normalize` is on: every behaviour's vector rescaled, per layer, to
the mean norm across the sweep's behaviours (`caa_eval.core.vectors.normalize_to_mean_norm`), written as
copies into `RUN_DIR/vectors_normalized/`; the extracted raw files are kept as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.sweep.config import Behaviour, SweepConfig
from caa_eval.sweep.plan import Cell, vector_file_name, vector_path

__all__ = ["VectorStore"]

log = logging.getLogger(__name__)


class VectorStore:
    """The sweep's vector files: extraction of missing files (and missing layers), CAA's normalisation, and a
    hash per cell of exactly the numbers it adds."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        # layer transfer reads one layer's vector only
        self.layers = (
            [cfg.vector_layer] if cfg.vector_layer is not None else sorted({x for group in cfg.layers for x in group})
        )
        self.info: dict[str, dict[str, Any]] = {}
        self.loaded: dict[str, Any] = {}  # vector file a cell adds -> its SteeringVector, loaded and hashed once

    def pairs_path(self, b: Behaviour) -> Path:
        """The behaviour's contrast pairs: its own file, or CAA's generate set."""
        from caa_eval import data

        return (
            b.pairs if b.pairs is not None else data.resolve_behaviour_pairs(b.name, "generate", self.cfg.caa_data_dir)
        )

    def raw_path(self, b: Behaviour, site: str) -> Path:
        """Where the extracted (never rescaled) vector file of a behaviour and site lives."""
        return self.cfg.vectors_folder / vector_file_name(b.name, site)

    def missing(self) -> list[tuple[Behaviour, str, list[int]]]:
        """(behaviour, site, layers to extract) for every file that is absent or lacks layers."""
        from caa_eval import data
        from caa_eval.core import vectors

        todo = []
        for b in self.cfg.behaviours:
            pairs_sha = data.file_sha256(self.pairs_path(b))
            for site in self.cfg.sites:
                path = self.raw_path(b, site)
                if not path.is_file():
                    todo.append((b, site, self.layers))
                    continue
                sv = vectors.load(path)
                if sv.site != site:
                    raise CAAEvalError(
                        f"{path} was read at site {sv.site!r}, the sweep needs {site!r}; delete it or "
                        "point vectors at another folder"
                    )
                if sv.dataset_sha256 and sv.dataset_sha256 != pairs_sha:
                    raise CAAEvalError(
                        f"{path} was extracted from other contrast pairs than {self.pairs_path(b)}; "
                        "delete it or point vectors at another folder"
                    )
                if sv.normalization:
                    raise CAAEvalError(
                        f"{path} is already rescaled ({sv.normalization.get('method')}); the sweep needs "
                        "raw vectors: point vectors at the raw files"
                    )
                lacking = [x for x in self.layers if x not in sv.vectors]
                if lacking:
                    todo.append((b, site, lacking))
        return todo

    def extract(
        self,
        todo: list[tuple[Behaviour, str, list[int]]],
        model: Any,
        tokenizer: Any,
        progress: bool,
        layout: Any = None,
    ) -> None:
        """Extract what `missing` listed with an already loaded model; existing layers stay bit-identical.

        Args:
            todo: `missing()`'s answer.
            model: the loaded HF model the vectors are read from.
            tokenizer: its tokenizer.
            progress: show progress bars.
            layout: the model's `ModelLayout` (the loaded steered-hf model's, so its `layers_path` holds here too).
        """
        from caa_eval.core import vectors
        from caa_eval.core.diagnostics import DIAGNOSTICS_KEY
        from caa_eval.core.extract import extract_to_file

        for b, site, layers in todo:
            path = self.raw_path(b, site)
            old = vectors.load(path) if path.is_file() else None
            log.info("extracting %s vectors (site %s, layers %s) from %s", b.name, site, layers, self.pairs_path(b))
            started = time.perf_counter()
            target = path if old is None else path.with_name(path.name + ".new.safetensors")
            sv = extract_to_file(
                self.cfg.model,
                self.pairs_path(b),
                target,
                layers=layers,
                site=site,
                batch_size=self.cfg.extract_batch_size,
                behaviour=b.name,
                model=model,
                tokenizer=tokenizer,
                progress=progress,
                layout=layout,
            )
            if old is not None:  # keep the layers already there bit-identical, add the new ones
                diagnostics = {**old.extra.get(DIAGNOSTICS_KEY, {}), **sv.extra.get(DIAGNOSTICS_KEY, {})}
                extra = {**sv.extra, DIAGNOSTICS_KEY: diagnostics}
                dataclasses.replace(sv, vectors={**old.vectors, **sv.vectors}, extra=extra).save(path)
                target.unlink(missing_ok=True)
            log.info("extracted %s (%s) in %.1f s", b.name, site, time.perf_counter() - started)

    def finalize(self) -> None:
        """Write the normalised copies (with normalize) and record per-file facts for the manifest."""
        from caa_eval.core import vectors

        for site in self.cfg.sites:
            raw = [vectors.load(self.raw_path(b, site)) for b in self.cfg.behaviours]
            used = vectors.normalize_to_mean_norm(raw) if self.cfg.normalize else raw
            for b, sv in zip(self.cfg.behaviours, used):
                path = vector_path(self.cfg, b.name, site)
                if self.cfg.normalize:
                    existing = vectors.load(path) if path.is_file() else None
                    if existing is None or existing.sha256() != sv.sha256():
                        sv.save(path)
                sv.source = str(path)  # the label every cell records, as if it had read the file
                self.loaded[str(path)] = sv
                self.info[f"{b.name}/{site}"] = {
                    "file": str(path),
                    "raw_file": str(self.raw_path(b, site)),
                    "sha256": sv.sha256(),
                    "layers": sv.layers,
                    "n_pairs": sv.n_pairs,
                    "dataset_sha256": sv.dataset_sha256,
                    "model_fingerprint": sv.model_fingerprint,
                    "normalization": sv.normalization,
                    "norms": {
                        str(x): round(float(sv.vectors[x].float().norm()), 6) for x in self.layers if x in sv.vectors
                    },
                }

    def content_sha(self, cell: Cell) -> str | None:
        """Hash of exactly the numbers the cell adds (its layers' vectors): unchanged by extracting more layers."""
        if cell.vector is None:
            return None
        import torch

        sv = self.loaded[cell.vector]  # finalize() loaded it
        h = hashlib.sha256(f"{sv.site}".encode())
        for x in cell.layer or []:
            read = x if cell.vector_layer is None else cell.vector_layer
            h.update(f"{x}:".encode())
            h.update(sv.vectors[read].detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()
