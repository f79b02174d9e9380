"""CAA + finetuning (the paper's Table 4): LoRA finetunes toward / away from a behaviour, in the A/B format.

- `examples`: the training items in the A/B task's format, and the check that keeps the A/B test set out;
- `train`: the LoRA finetune and the adapter folder it writes (`finetune_to_dir`);
- `adapter`: reading that folder, and the base-model fingerprint under a peft adapter (used by steered-hf).

Submodules are imported explicitly (`from caa_eval.finetune.train import finetune_to_dir`), so steered-hf
can use `adapter` without importing the training code.
"""

__all__ = ["adapter", "examples", "train"]
