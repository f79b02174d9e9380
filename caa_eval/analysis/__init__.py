"""The paper's analyses (§8.1–8.3, §9.1) as functions: per-token similarity, vector similarity across
layers and files, red-teaming by elicitation threshold, and the scale of a multiplier (norm fraction, KL).

Each module computes numbers only; the `caa_eval.cli` modules of the same names write files and pictures.
"""

__all__: list[str] = []
