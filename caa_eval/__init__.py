"""caa-eval: Contrastive Activation Addition (CAA) steering evaluated inside lm-evaluation-harness."""

__version__ = "0.1.0"
