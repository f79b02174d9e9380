"""lm-eval integration: the steered-hf model, the task glue the shipped YAMLs call, and registration."""
