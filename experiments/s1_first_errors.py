"""Where a model's worked solutions first go wrong: each wrong greedy answer on held-out problems classified by its
first wrong step against the generator's own chain.

``python -m experiments.s1_first_errors OUT.json MODEL [--n-eval 300 --difficulty 3]``

Classes (:func:`first_error`): ``stop`` (every step right, the last ones missing), ``skip`` (a step left out:
the written step is the true next-but-one operation), ``operand`` / ``operation`` (the right running value,
a wrong number or a wrong operation), ``carry`` (a step starting from another value than the previous
result), ``arithmetic`` (right operands, wrong result), ``extra`` (every step right and more written),
``answer`` (a right chain, a wrong answer), ``unparsed``. Key design choice: the held-out items are drawn as
``experiments.s1_wait`` draws them (seed 11, training difficulties 2-3 excluded), so the figures describe the
items the s1 arms are scored on.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

_EQ = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def first_error(gold: list[tuple[int, str, int, int]], written: list[tuple[int, str, int, int]]) -> str:
    """The class of the first wrong step of ``written`` against ``gold`` (both ``(a, op, b, c)`` steps)."""
    for i, w in enumerate(written):
        if i >= len(gold):
            return "extra"
        g = gold[i]
        if w == g:
            continue
        prev = gold[i - 1][3] if i else gold[0][0]
        if w[0] != prev:
            return "carry"
        if (w[1], w[2]) == (g[1], g[2]):
            return "arithmetic"
        if i + 1 < len(gold) and (w[1], w[2]) == (gold[i + 1][1], gold[i + 1][2]):
            return "skip"
        return "operation" if w[1] != g[1] else "operand"
    return "stop" if len(written) < len(gold) else "answer"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--difficulty", type=int, default=3)
    a = ap.parse_args(argv)

    import torch

    from experiments.s1_wait import _items
    from ops.eval.evaluate import EvalSettings, generate_records
    from ops.posttrain.common import load_policy
    from ops.tasks import make_splits, split_response

    torch.set_num_threads(1)
    train, _ = make_splits(6000, 0, 11, [2, 3])
    _, ev = make_splits(0, a.n_eval, 11, [a.difficulty], exclude={t.question for t in train})
    model, tok = load_policy(a.model)
    model.eval()
    s = EvalSettings(samples=0, budgets=[], wait_extensions=[], max_think_tokens=256, max_answer_tokens=10,
                     batch_size=64)
    recs = {r["item_id"]: r for r in generate_records(model, tok, _items(ev), s, model_stage="m",
                                                      model_version="-", log=lambda m: None)}
    counts: Counter = Counter()
    examples: dict[str, list] = {}
    for t in ev:
        r = recs[t.id]
        if r["correct"]:
            counts["correct"] += 1
            continue
        think, _ = split_response(r["completion"])
        gold = [(int(x), op, int(y), int(z)) for x, op, y, z in _EQ.findall(t.solution)]
        written = [(int(x), op, int(y), int(z)) for x, op, y, z in _EQ.findall(think or "")]
        kind = first_error(gold, written) if written else "unparsed"
        counts[kind] += 1
        examples.setdefault(kind, [])
        if len(examples[kind]) < 3:
            examples[kind].append({"question": t.question, "gold": t.solution, "completion": r["completion"]})
    wrong = a.n_eval - counts["correct"]
    out = {"model": a.model, "n_eval": a.n_eval, "difficulty": a.difficulty, "accuracy": counts["correct"] / a.n_eval,
           "first_errors": {k: v for k, v in counts.most_common() if k != "correct"}, "wrong": wrong,
           "examples": examples}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: out[k] for k in ("accuracy", "wrong", "first_errors")}))


if __name__ == "__main__":
    main()
