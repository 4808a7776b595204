"""Post-training objectives on the shared training core: SFT, reward model, DPO, distillation, merging and
rejection sampling (batch and loss builders; no loops of their own)."""
