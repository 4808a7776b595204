"""Byte-level BPE tokenizer with lmforge's special tokens and chat template (the one owner of the chat format).

Key design choice: the pre-tokenizer isolates every digit (``\\p{N}`` -> one piece each) before the GPT-2
byte-level split, as Qwen's tokenizers do, so no merge can ever hide place value from a small model doing
arithmetic. The initial alphabet is all 256 bytes, so any text round-trips. The result is saved as a
``PreTrainedTokenizerFast`` directory (``tokenizer.json`` + ``tokenizer_config.json`` with the chat template),
loadable with ``transformers.AutoTokenizer.from_pretrained(path)`` and, as a bare ``tokenizer.json`` file,
by datatrove's ``DocumentTokenizer``.

The chat format (every stage agrees on it; post-training imports the helpers below)::

    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n          <- prompt (generation prompt)
    <think>{reasoning}</think><answer>{answer}</answer><|im_end|>             <- response
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK, THINK_END = "<think>", "</think>"
ANSWER, ANSWER_END = "<answer>", "</answer>"
# Order fixes their ids (0..7): eos is id 0 in every lmforge tokenizer.
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END, THINK, THINK_END, ANSWER, ANSWER_END]

# Jinja template rendered by ``tokenizer.apply_chat_template``. Each message is
# ``<|im_start|>{role}\n{content}<|im_end|>``; messages are separated by "\n"; the generation prompt is
# ``<|im_start|>assistant\n``. A conversation that ends with the assistant therefore ends in ``<|im_end|>``
# exactly, which is the response format above.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{%- if not loop.last or add_generation_prompt -%}{{ '\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def chat_prompt(question: str) -> str:
    """The prompt string for one user question, ending with the assistant generation prompt."""
    return f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"


def chat_response(reasoning: str, answer: str, *, end: bool = True) -> str:
    """The assistant response string (what SFT trains on, what rewards parse).

    ``end=False`` omits the closing ``<|im_end|>``: that is the assistant message *content* to give
    ``apply_chat_template``, which appends ``<|im_end|>`` itself.
    """
    return f"{THINK}{reasoning}{THINK_END}{ANSWER}{answer}{ANSWER_END}" + (IM_END if end else "")


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    # Digits first (each its own piece), then GPT-2's byte-level regex split on what remains.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` with the special tokens at ids 0..7.

    ``vocab_size`` counts everything (specials + 256 bytes + merges); it must leave room for merges.
    """
    from tokenizers import Tokenizer, decoders, models, processors, trainers
    from tokenizers import pre_tokenizers as pt

    floor = len(SPECIAL_TOKENS) + 256
    if vocab_size <= floor:
        raise ValueError(f"vocab_size {vocab_size} must exceed {floor} (special tokens + 256 byte tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):  # invariant the rest of lmforge relies on (eos id 0 etc.)
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s!r} got id {tok.token_to_id(s)}, expected {i}")
    return tok


def to_transformers(tok: Any, *, model_max_length: int = 2048) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` with eos/pad and the chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        model_max_length=model_max_length,
        additional_special_tokens=SPECIAL_TOKENS[2:],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation batches pad on the left; training code passes masks explicitly
    return fast


def save_tokenizer(tok: Any, out_dir: Path, *, model_max_length: int = 2048) -> Any:
    """Save as a transformers tokenizer directory; returns the ``PreTrainedTokenizerFast``."""
    fast = to_transformers(tok, model_max_length=model_max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_jinja_files=False keeps the template inside tokenizer_config.json (older readers look only there).
    fast.save_pretrained(str(out_dir), save_jinja_files=False)
    return fast


def load_tokenizer(path: Path | str) -> Any:
    """Load a tokenizer directory written by :func:`save_tokenizer` (or any model artifact) — local only;
    a tokenizer without a pad token pads with eos."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p}: no tokenizer.json (not a tokenizer or model artifact directory)")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.pad_token is None and tok.eos_token is not None:
        # Llama-family tokenizers ship without a pad token; padding positions are masked everywhere, so
        # eos serves (the usual choice) and batches of unequal lengths work the same for every model.
        tok.pad_token = tok.eos_token
    return tok


def split_held_out(texts: list[str], frac: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Document-level split into (train, held_out); held_out gets >= 1 doc when possible.

    Which documents are held out depends on their text and ``seed`` only, never on their position, so the
    same documents in another order give the same tokenizer (BPE merges depend on word counts alone).
    """
    def key(i: int) -> bytes:
        return hashlib.sha256(f"{seed}\x00{texts[i]}".encode("utf-8", errors="surrogatepass")).digest()

    n_held = min(len(texts) - 1, max(1, round(frac * len(texts)))) if len(texts) > 1 else 0
    held = set(sorted(range(len(texts)), key=lambda i: (key(i), i))[:n_held])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def evaluate(tok: Any, texts: list[str]) -> dict[str, Any]:
    """Bytes per token, round-trip failures and vocabulary use of a ``tokenizers.Tokenizer`` on ``texts``."""
    n_bytes = n_tokens = 0
    used: set[int] = set()
    bad: list[int] = []
    max_id = -1
    vocab = tok.get_vocab_size()
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        ids = enc.ids
        n_bytes += len(texts[i].encode("utf-8"))
        n_tokens += len(ids)
        used.update(ids)
        if ids:
            max_id = max(max_id, max(ids))
        if tok.decode(ids, skip_special_tokens=False) != texts[i]:
            bad.append(i)
    return {
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "vocab_used": len(used),
        "vocab_use_frac": len(used) / vocab,
        "roundtrip_failures": len(bad),
        "roundtrip_failed_docs": bad[:10],
        "max_id": max_id,
        "vocab_size": vocab,
    }


def iter_repeated(parts: list[tuple[list[str], int]]) -> Iterator[str]:
    """Yield every text of each part ``weight`` times (used to up-weight small task corpora)."""
    for texts, weight in parts:
        for _ in range(max(weight, 0)):
            yield from texts


def format_probes(fast: Any) -> dict[str, bool]:
    """What a trained tokenizer must get right for post-training: ``probe_ok`` (a text with special tokens
    and non-ASCII characters decodes back to itself), ``template_ok`` (the chat template renders
    :func:`chat_prompt`) and ``digits_split`` (every digit is its own token)."""
    probe = "What is 12 + 345? <|im_start|>user\nhello<|im_end|> naïve café 日本"
    template = fast.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True
    )
    return {
        "probe_ok": fast.decode(fast(probe)["input_ids"]) == probe,
        "template_ok": template == chat_prompt("q"),
        "digits_split": all(
            len(fast.convert_ids_to_tokens(fast(s, add_special_tokens=False)["input_ids"])) == len(s)
            for s in ("12345", "9876543210")
        ),
    }


def _chat_template_of(model_dir: Path) -> str | None:
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text()).get("chat_template")
        if t:
            return t if isinstance(t, str) else json.dumps(t, sort_keys=True)
    jinja = model_dir / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def _vocab_difference(a: dict[str, int], b: dict[str, int]) -> str | None:
    if len(a) != len(b):
        return f"vocabulary sizes differ ({len(a)} vs {len(b)})"
    for t, i in sorted(a.items(), key=lambda kv: kv[1]):
        if b.get(t) != i:
            return f"token ids differ (first: {t!r} is {i} vs {b.get(t)})"
    return None


def tokenizer_difference(a: Path | str, b: Path | str) -> str | None:
    """How the tokenizers saved in model directories ``a`` and ``b`` differ, or None when they encode every
    text and chat the same way: the vocabulary (token -> id), the BPE merges, the added tokens, the
    normalizer and pre-tokenizer (``tokenizer.json``), and the chat template. Directories without a
    ``tokenizer.json`` are compared by the vocabulary and special tokens ``transformers`` loads."""
    a, b = Path(a), Path(b)
    ja, jb = a / "tokenizer.json", b / "tokenizer.json"
    if ja.is_file() and jb.is_file():
        ta, tb = json.loads(ja.read_text()), json.loads(jb.read_text())
        ma, mb = ta.get("model") or {}, tb.get("model") or {}
        diff = _vocab_difference(ma.get("vocab") or {}, mb.get("vocab") or {})
        if diff:
            return diff
        if ma.get("merges") != mb.get("merges"):
            xa, xb = ma.get("merges") or [], mb.get("merges") or []
            i = next((k for k, (x, y) in enumerate(zip(xa, xb)) if x != y), min(len(xa), len(xb)))
            first_a, first_b = (xa[i] if i < len(xa) else None), (xb[i] if i < len(xb) else None)
            return f"BPE merges differ (first at merge {i}: {first_a!r} vs {first_b!r})"
        for key, what in (("added_tokens", "added tokens"), ("normalizer", "normalizer"),
                          ("pre_tokenizer", "pre-tokenizer"), ("model", "tokenizer model")):
            if ta.get(key) != tb.get(key):
                return f"{what} differ"
    else:
        from transformers import AutoTokenizer

        fa = AutoTokenizer.from_pretrained(str(a), local_files_only=True)
        fb = AutoTokenizer.from_pretrained(str(b), local_files_only=True)
        diff = _vocab_difference(fa.get_vocab(), fb.get_vocab())
        if diff:
            return diff
        if fa.all_special_tokens != fb.all_special_tokens:
            return f"special tokens differ ({fa.all_special_tokens} vs {fb.all_special_tokens})"
    if _chat_template_of(a) != _chat_template_of(b):
        return "chat templates differ"
    return None
