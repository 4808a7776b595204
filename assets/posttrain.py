"""Shared input handling of the post-training stage kinds (``sft``, ``reward_model``, ``dpo``, ``grpo``,
``ppo``, ``rejection_sample``, ``distill``, ``merge``: one module each); it registers no kind itself.

Key design choice: everything that can be checked about a post-training stage's inputs is checked here
before any model is loaded or trained, and fails with one :class:`PostTrainError` naming the stage and the
field: a tokenizer without the chat template, a sample source without ``rollouts.parquet``, a user pairs
file with missing columns, an unknown reward name. Models are ``save_pretrained`` directories with the
tokenizer; RL stages also keep their rollouts as ``rollouts.parquet`` inside the model artifact, so a later
``reward_model`` or ``rejection_sample`` stage can name an RL stage as its source of samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from .registry import Image, InputArtifact, StageRun, Table, run_option

MODEL = ("model",)
SAMPLES = ("rollouts", "model", "sft_data")  # a model artifact from grpo/ppo carries rollouts.parquet


class PostTrainError(ValueError):
    """Bad input to a post-training stage (raised before any compute)."""


def ckpt_every(default: int) -> Any:
    """The ``ckpt_every`` run option of a training kind."""
    return run_option(
        default,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )


def keep_last() -> Any:
    """The ``keep_last`` run option of a training kind."""
    return run_option(2, ge=1, description="checkpoints kept in the work directory")


def params(cls: type, config: Any, **extra: Any) -> Any:
    """The ops parameter dataclass ``cls`` from the config fields of the same name (the others keep the
    dataclass defaults), plus ``extra``."""
    names = set(cls.__dataclass_fields__) & set(type(config).model_fields)
    return cls(**{n: getattr(config, n) for n in sorted(names)}, **extra)


def load_policy(run: StageRun, field: str, art: InputArtifact | None = None, device: str = "cpu"):
    """The model and tokenizer behind ``field`` (or ``art``); a missing file or chat template names both."""
    from ops.generate import ChatTemplateError
    from ops.posttrain.common import load_policy as load

    a = art or run.input(field)
    try:
        return load(a.path, device=device)
    except (ChatTemplateError, FileNotFoundError) as e:
        raise PostTrainError(f"stage {run.stage!r}, field {field!r} (stage {a.stage!r}): {e}") from None


def reference_policy(run: StageRun):
    """The frozen reference model: field ``reference`` when set, else a second copy of ``model``."""
    field = "reference" if run.inputs.get("reference") else "model"
    return load_policy(run, field, run.inputs[field][0])[0]


def check_template(run: StageRun, field: str) -> None:
    """Refuse a model whose tokenizer lacks the chat template, before anything is loaded or trained."""
    for a in run.inputs.get(field, []):
        cfg = a.path / "tokenizer_config.json"
        tmpl = None
        if cfg.is_file():
            tmpl = json.loads(cfg.read_text()).get("chat_template")
        if not tmpl and not any((a.path / n).is_file() for n in ("chat_template.jinja", "chat_template.json")):
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: model {a.stage!r} ({a.path}) has a tokenizer "
                "without a chat template; post-training renders every prompt with it"
            )


def check_same_tokenizer(run: StageRun, field: str, policy_field: str = "model") -> None:
    """Refuse a reward model (``field``) whose tokenizer differs from the policy's (``policy_field``), before
    anything is loaded: the policy's completions reach the reward model as the policy's token ids and chat
    format, which mean other text under another tokenizer."""
    from ops.tokenizer import tokenizer_difference

    for r in run.inputs.get(field, []):
        for m in run.inputs.get(policy_field, []):
            try:
                diff = tokenizer_difference(m.path, r.path)
            except (OSError, ValueError) as e:
                diff = f"its tokenizer cannot be read ({e})"
            if diff:
                raise PostTrainError(
                    f"stage {run.stage!r}, field {field!r}: reward model {r.stage!r} ({r.path}) does not use the "
                    f"tokenizer of the policy in field {policy_field!r} (stage {m.stage!r}, {m.path}): {diff}; "
                    "it would score other text than the policy wrote. Use a reward model trained from a "
                    "checkpoint with the policy's tokenizer"
                )


def _known_format(name: str | None) -> str | None:
    from ops.answers import check_format_name

    return check_format_name(name)


def _usable_template(template: str | None) -> str | None:
    from ops.answers import check_template as check

    return check(template)


# Config types of the answer-format and prompt-template overrides: an unknown format name or a template
# without {question} is refused when the spec is compiled, naming file, stage and field.
AnswerFormatName = Annotated[str | None, AfterValidator(_known_format)]
PromptTemplate = Annotated[str | None, AfterValidator(_usable_template)]


def answer_format_field() -> Any:
    return Field(
        None,
        description="answer format responses are scored in (think_answer, boxed, gsm8k, last_number, exact); "
        "default: each task set's own",
    )


def prompt_template_field() -> Any:
    return Field(
        None, description="prompt template with a {question} placeholder; default: each task set's own"
    )


def overrides(run: StageRun) -> tuple[str | None, str | None]:
    """The stage's answer-format and prompt-template overrides (``None`` where it sets none or has none;
    ``sft`` calls its answer format ``format``)."""
    c = run.config
    fmt = getattr(c, "answer_format", None) or getattr(c, "format", None)
    return fmt, getattr(c, "prompt_template", None)


def eval_tasks(run: StageRun, fields: tuple[str, ...], n: int):
    """The first ``n`` held-out problems of the first tasks input (among ``fields``) that has any, as asked
    and scored (the task set's prompt template and answer format, or the stage's overrides)."""
    from ops.tasks import read_task_set

    for f in fields:
        for a in run.inputs.get(f, []):
            if a.produces == "tasks" and (a.path / "eval.parquet").is_file():
                ev = read_task_set(a.path, "eval", *overrides(run))
                if ev:  # a prompt set generated with eval: 0 has an empty held-out split: try the next
                    return ev[:n]
    return []


def train_tasks(run: StageRun, field: str):
    """The training split of every tasks input of ``field``, each task carrying its answer format."""
    from ops.tasks import read_task_set

    out = []
    for a in run.inputs.get(field, []):
        if a.produces != "tasks":
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {a.stage!r} is {a.produces!r}, not tasks"
            )
        out += read_task_set(a.path, "train", *overrides(run))
    return out


def single_format(run: StageRun, field: str, tasks: list) -> str:
    """The one answer format of ``tasks`` (rule rewards score a batch in one format); task sets of different
    formats without a stage override are refused, naming them."""
    fmts = sorted({t.answer_format for t in tasks})
    if len(fmts) > 1:
        raise PostTrainError(
            f"stage {run.stage!r}, field {field!r}: the task sets use different answer formats {fmts}; "
            "set answer_format on the stage to score them in one"
        )
    return fmts[0] if fmts else (overrides(run)[0] or "think_answer")


def training_examples(run: StageRun, field: str = "data") -> list:
    """The chat examples of every input of ``field``, in the order its stages are listed."""
    from ops.posttrain.common import examples_from_artifact

    examples = []
    for a in run.inputs.get(field, []):
        examples += examples_from_artifact(a.produces, a.path, "train", *overrides(run))
    return examples


def pairs_path_problems(cfg) -> list[tuple[str, str]]:
    """Validation of a user pairs file (``path``): every problem with its columns."""
    from ops.posttrain.pairs import pairs_file_problems

    if not cfg.path:
        return []
    return [("path", m) for m in pairs_file_problems(Path(cfg.path).expanduser())]


def pairs_path_fingerprint(cfg):
    """The content hash of a user pairs file: a changed file gives a new stage version."""
    import hashlib

    if cfg.path and Path(cfg.path).expanduser().is_file():
        return {"path_sha256": hashlib.sha256(Path(cfg.path).expanduser().read_bytes()).hexdigest()}
    return None


def pair_sources(run: StageRun, field: str, max_per_prompt: int, seed: int, path: str | None) -> list[tuple]:
    """The preference pairs of each source as ``(field, source name, pairs)``: each pairs artifact of
    ``field``, its samples paired correct-vs-incorrect together (a prompt's samples from several stages pair
    with each other), the user file ``path``; every source is checked before any is read."""
    from ops.posttrain.pairs import collect_pairs as collect
    from ops.posttrain.pairs import pairs_file_problems

    arts = run.inputs.get(field, [])
    samples = [a for a in arts if a.produces != "pairs"]
    for a in samples:
        if not (a.path / "rollouts.parquet").is_file():
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {a.stage!r} ({a.kind}) has no "
                "rollouts.parquet; name a grpo/ppo/rejection_sample stage"
            )
    user = Path(path).expanduser() if path else None
    probs = pairs_file_problems(user) if user else []
    if probs:
        raise PostTrainError(f"stage {run.stage!r}, field 'path': " + "; ".join(probs))
    out = [
        (
            field,
            f"stage {a.stage!r} ({a.path / 'pairs.parquet'})",
            collect([a.path], [], max_per_prompt, seed),
        )
        for a in arts
        if a.produces == "pairs"
    ]
    if samples:
        names = ", ".join(repr(a.stage) for a in samples)
        out.append(
            (
                field,
                f"samples of stages {names}",
                collect([], [a.path for a in samples], max_per_prompt, seed),
            )
        )
    if user is not None:
        out.append(("path", f"file {user}", collect([], [], max_per_prompt, seed, user)))
    return out


def collect_pairs(run: StageRun, field: str, max_per_prompt: int, seed: int, path: str | None):
    """The preference pairs of ``field`` (pairs artifacts, samples paired correct-vs-incorrect) and of the
    user file ``path``, each source checked first."""
    return [p for _, _, pairs in pair_sources(run, field, max_per_prompt, seed, path) for p in pairs]


def keep_training_state(run: StageRun) -> None:
    """Copy the last checkpoint of the work directory into the artifact (``training_state/``)."""
    from ops.train.checkpoint import latest

    found = latest(run.work / "checkpoints")
    if found:
        shutil.copytree(found[1], run.out / "training_state", dirs_exist_ok=True)


def accuracy(model, tok, tasks, n_samples: int, max_new: int, seed: int = 0) -> dict[str, float]:
    from ops.posttrain.common import accuracy_metrics

    return accuracy_metrics(model, tok, tasks, n_samples, max_new, seed)


def samples_table(model, tok, tasks, k: int = 8, max_new: int = 96) -> Table:
    from ops.posttrain.common import sample_rows

    return Table(sample_rows(model, tok, tasks, k, max_new))


def plot_metadata(name: str, drawn: dict[str, str]) -> dict[str, Any]:
    """Stage metadata for a plot from :mod:`ops.eval.plots`: the image, or why it is missing."""
    if "png" in drawn:
        return {f"{name}_plot": Image(drawn["png"])}
    if "error" in drawn:
        return {f"{name}_plot_error": drawn["error"]}
    return {}


def write_curve(out: Path, records: list[dict], keys: list[str], name: str = "curve") -> dict[str, Any]:
    """``curve.parquet`` + a PNG of the named series; returns the metadata entries."""
    from ops.eval.plots import write_curve as write

    return plot_metadata(name, write(out, records, keys, name))


def validate_rewards(cfg, refs) -> list[tuple[str, str]]:
    """The reward list's problem, on the field ``rewards`` or, for one parameter, on its place in the list
    (``rewards.0.accuracy``)."""
    from ops.rewards import RewardParamError, parse_specs

    try:
        parse_specs(list(cfg.rewards))
    except RewardParamError as e:
        return [(f"rewards.{e.where}", e.message)]
    except ValueError as e:
        return [("rewards", str(e))]
    return []
