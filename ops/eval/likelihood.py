"""Bits per byte of a model on held-out text.

Key design choice: the score is summed token negative log-likelihood divided by the UTF-8 bytes of exactly
the text that was scored (found from the tokenizer's character offsets), so models with different
tokenizers are compared on the same bytes. Each document is scored from its start, conditioned on the
end-of-text token, truncated to ``max_tokens`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DocScore:
    nll_nats: float
    n_bytes: int
    n_tokens: int


def score_documents(
    model, tok, texts: list[str], *, max_tokens: int = 256, batch_size: int = 8
) -> list[DocScore]:
    """Per-document summed NLL (nats) and scored byte count. Empty documents score zero bytes."""
    import torch

    bos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else bos
    enc = []
    for text in texts:
        e = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = e["input_ids"][:max_tokens]
        offs = e["offset_mapping"][: len(ids)]
        end_char = offs[-1][1] if offs else 0
        enc.append(([bos] + ids, len(text[:end_char].encode("utf-8"))))
    scores: list[DocScore] = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(enc), batch_size):
            chunk = enc[s : s + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            m = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (ids, _) in enumerate(chunk):
                x[i, : len(ids)] = torch.tensor(ids)
                m[i, : len(ids)] = 1
            logits = model(input_ids=x, attention_mask=m).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = x[:, 1:]
            nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * m[:, 1:]
            for i, (ids, nbytes) in enumerate(chunk):
                scores.append(DocScore(float(nll[i].sum()), nbytes, len(ids) - 1))
    return scores
