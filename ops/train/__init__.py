"""The one training core every objective shares (pretraining, SFT, reward model, DPO, distillation; RL reuses
its optimizer and schedule helpers). See ``core.train``."""
