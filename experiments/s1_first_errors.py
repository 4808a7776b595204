"""Where a model's worked solutions first go wrong: each wrong greedy answer on held-out problems classified by its
first wrong step against the generator's own chain.

``python -m experiments.s1_first_errors OUT.json MODEL [--n-eval 300 --difficulty 3]``; ``--reviews
COMPLETIONS.json --n-eval N`` instead reads an ``s1_wait`` run's completions of a ``review`` arm and says what each
forced Wait's review did (:func:`review_outcome`).

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


def _steps(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(x), op, int(y), int(z)) for x, op, y, z in _EQ.findall(text)]


def review_outcome(gold: list[tuple[int, str, int, int]], own: str, wait: str) -> str:
    """What the review after a forced Wait did, from the own-stop completion and the Wait completion:
    ``no_review`` (no op list after the Wait), ``ops_misread`` (the op list is not the problem's),
    ``confirmed_right`` / ``confirmed_wrong`` (``so N``, nothing rewritten), else the first chain with the
    review's rewritten steps in place of its last ones (as many as the op list has operations, less the rewritten
    ones, are kept; none where the rewrite starts from the problem's first number) against the gold chain: ``kept_right`` / ``kept_wrong`` (the same equations), ``fixed`` /
    ``broke`` / ``changed_wrong``, the result's first error class (:func:`first_error`) appended to the last two."""
    m = re.search(r"Wait, (\d+(?: [-+*/]\d+)+):(.*?)(?:</think>|$)", wait, re.S)
    if not m:
        return "no_review"
    ops = [(x[0], int(x[1:])) for x in m[1].split()[1:]]
    if int(m[1].split()[0]) != gold[0][0] or ops != [(op, b) for _, op, b, _ in gold]:
        return "ops_misread"
    first, again = _steps(own.split("</think>")[0]), _steps(m[2])
    if m[2].strip().startswith("so"):
        return "confirmed_right" if first == gold else "confirmed_wrong"
    keep = 0 if again and again[0][0] == gold[0][0] else max(len(ops) - len(again), 0)  # rewritten from the start
    result = first[:keep] + again
    if result == first:
        return "kept_right" if first == gold else "kept_wrong"
    if result == gold:
        return "fixed"
    return ("broke:" if first == gold else "changed_wrong:") + first_error(gold, result)


def reviews(path: str, n_eval: int, difficulty: int) -> dict:
    """:func:`review_outcome` counted over an ``s1_wait`` review arm's completions (its held-out items), beside
    how many own-stop chains wrote exactly the problem's operations (whatever their arithmetic)."""
    from collections import Counter

    from ops.tasks import make_splits

    train, _ = make_splits(6000, 0, 11, [2, 3])
    _, ev = make_splits(0, n_eval, 11, [difficulty], exclude={t.question for t in train})
    comp = json.loads(open(path).read())
    counts = Counter(review_outcome(_steps(t.solution), comp[t.id + "/greedy"], comp[t.id + "/wait"]) for t in ev)
    ops = lambda steps: [(op, b) for _, op, b, _ in steps]  # noqa: E731
    own_read = sum(ops(_steps(comp[t.id + "/greedy"].split("</think>")[0])) == ops(_steps(t.solution)) for t in ev)
    return {"own_chain_reads_the_operations_right": own_read, "outcomes": dict(counts.most_common())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--difficulty", type=int, default=3)
    ap.add_argument("--reviews", help="an s1_wait completions_review.json to read instead of scoring MODEL")
    a = ap.parse_args(argv)
    if a.reviews:
        out = {"completions": a.reviews, "n_eval": a.n_eval, "reviews": reviews(a.reviews, a.n_eval, a.difficulty)}
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        print(json.dumps(out["reviews"]))
        return

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
