"""Parity of every post-training loss with an independent per-token reference written from the paper's
formula (plain Python loops over scalars, math.* functions), plus gradient sanity checks."""

from __future__ import annotations

import math

import pytest
import torch

from ops import losses

pytestmark = pytest.mark.unit


def _lsm(row):
    m = max(row)
    z = math.log(sum(math.exp(x - m) for x in row)) + m
    return [x - z for x in row]


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_sft_loss_matches_per_token_reference(gen):
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :3] = -100  # prompt
    labels[2, 5:] = -100  # padding
    loss, stats = losses.sft_loss(logits, labels)
    tot, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            tot += -_lsm(logits[b, t].tolist())[y]
            n += 1
    assert loss.item() == pytest.approx(tot / n, rel=1e-6)
    assert stats["tokens"] == n


def test_bradley_terry_matches_reference(gen):
    rc, rr = torch.randn(9, generator=gen), torch.randn(9, generator=gen)
    loss, st = losses.bradley_terry_loss(rc, rr, margin=0.3)
    ref = sum(-math.log(_sig(a - b - 0.3)) for a, b in zip(rc.tolist(), rr.tolist())) / 9
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert st["accuracy"] == pytest.approx(sum(a > b for a, b in zip(rc.tolist(), rr.tolist())) / 9)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_dpo_matches_reference(gen, ls):
    pc, pr, rc, rr = (torch.randn(6, generator=gen, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.2
    loss, st = losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    ref, margins = 0.0, []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = beta * (a - c) - beta * (b - d)
        margins.append(z)
        ref += -(1 - ls) * math.log(_sig(z)) - ls * math.log(_sig(-z))
    assert loss.item() == pytest.approx(ref / 6, rel=1e-6)
    assert st["margin"] == pytest.approx(sum(margins) / 6, rel=1e-5)


def test_ipo_matches_reference(gen):
    # Azar et al. 2023, eq. 17: (h - 1/(2 tau))^2 with h the log-likelihood-ratio difference, tau = beta
    pc, pr, rc, rr = (torch.randn(7, generator=gen, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.25
    loss, st = losses.ipo_loss(pc, pr, rc, rr, beta=beta)
    ref = 0.0
    hs = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = math.log(math.exp(a) / math.exp(c)) - math.log(math.exp(b) / math.exp(d))
        hs.append(h)
        ref += (h - 1 / (2 * beta)) ** 2
    assert loss.item() == pytest.approx(ref / 7, rel=1e-6)
    assert st["margin"] == pytest.approx(beta * sum(hs) / 7, rel=1e-5)
    assert st["accuracy"] == pytest.approx(sum(h > 0 for h in hs) / 7)


def test_ipo_is_minimal_at_the_target_gap():
    beta = 0.5
    z = torch.zeros(1, dtype=torch.float64)
    at = losses.ipo_loss(torch.tensor([1 / (2 * beta)], dtype=torch.float64), z, z, z, beta=beta)[0]
    past = losses.ipo_loss(torch.tensor([3.0], dtype=torch.float64), z, z, z, beta=beta)[0]
    assert at.item() == pytest.approx(0.0, abs=1e-12) and past.item() > 0  # DPO would keep pushing


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.5])
def test_rpo_matches_reference(gen, alpha):
    # Pang et al. 2024, eq. 1: -log sigma(beta log(pi_c/ref_c) - beta log(pi_r/ref_r))
    #                          - alpha * log pi(x, c, y_c) / (|x| + |c| + |y|)
    pc, pr, rc, rr = (-torch.rand(5, generator=gen, dtype=torch.float64) * 40 for _ in range(4))
    lens = torch.tensor([12, 30, 7, 19, 44], dtype=torch.float64)
    beta = 0.1
    loss, st = losses.rpo_loss(pc, pr, rc, rr, lens, beta=beta, alpha=alpha)
    ref, nll = 0.0, 0.0
    for a, b, c, d, n in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), lens.tolist()):
        ref += -math.log(_sig(beta * (a - c) - beta * (b - d))) - alpha * a / n
        nll += -a / n
    assert loss.item() == pytest.approx(ref / 5, rel=1e-6)
    assert st["nll"] == pytest.approx(nll / 5, rel=1e-6)
    # the NLL term's gradient on the chosen log-prob is -alpha / (B * len), on top of DPO's
    pc_ = pc.clone().requires_grad_(True)
    losses.rpo_loss(pc_, pr, rc, rr, lens, beta=beta, alpha=alpha)[0].backward()
    pd_ = pc.clone().requires_grad_(True)
    losses.dpo_loss(pd_, pr, rc, rr, beta=beta)[0].backward()
    assert torch.allclose(pc_.grad - pd_.grad, -alpha / (5 * lens))


def test_sequence_logprobs_sums_labelled_tokens(gen):
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]])
    out = losses.sequence_logprobs(logits, labels)
    for b in range(2):
        ref = sum(
            _lsm(logits[b, t].tolist())[int(labels[b, t + 1])] for t in range(4) if labels[b, t + 1] >= 0
        )
        assert out[b].item() == pytest.approx(ref, rel=1e-6)


def test_k3_is_nonnegative_and_matches_formula(gen):
    lp, rp = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
    k = losses.kl_k3(lp, rp)
    for a, b, kk in zip(lp.tolist(), rp.tolist(), k.tolist()):
        assert kk == pytest.approx(math.exp(b - a) - (b - a) - 1, rel=1e-5, abs=1e-6)
        assert kk >= 0


def test_ppo_policy_loss_matches_reference(gen):
    B, L = 3, 6
    lp = torch.randn(B, L, generator=gen, dtype=torch.float64) * 0.3 - 1
    old = lp + torch.randn(B, L, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(B, L, generator=gen, dtype=torch.float64)
    mask = torch.ones(B, L)
    mask[1, 4:] = 0
    loss, _ = losses.ppo_policy_loss(lp, old, adv, mask, clip_eps=0.2)
    tot, n = 0.0, 0
    for b in range(B):
        for t in range(L):
            if not mask[b, t]:
                continue
            r = math.exp(lp[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            tot += -min(r * a, min(max(r, 0.8), 1.2) * a)
            n += 1
    assert loss.item() == pytest.approx(tot / n, rel=1e-6)


def test_ppo_value_loss_matches_reference(gen):
    v, ov, ret = (torch.randn(2, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    loss, _ = losses.ppo_value_loss(v, ov, ret, mask, clip_eps=0.1)
    tot, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                vc = ov[b, t].item() + min(max(v[b, t].item() - ov[b, t].item(), -0.1), 0.1)
                tot += 0.5 * max((v[b, t].item() - ret[b, t].item()) ** 2, (vc - ret[b, t].item()) ** 2)
                n += 1
    assert loss.item() == pytest.approx(tot / n, rel=1e-6)


def test_gae_matches_reference(gen):
    B, L = 2, 6
    r = torch.randn(B, L, generator=gen, dtype=torch.float64)
    v = torch.randn(B, L, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.float64)
    gamma, lam = 0.99, 0.9
    adv, ret = losses.gae(r, v, mask, gamma, lam)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            a = 0.0
            for k in range(t, n):
                vn = v[b, k + 1].item() if k + 1 < n else 0.0
                delta = r[b, k].item() + gamma * vn - v[b, k].item()
                a += (gamma * lam) ** (k - t) * delta
            assert adv[b, t].item() == pytest.approx(a, rel=1e-6, abs=1e-9)
            assert ret[b, t].item() == pytest.approx(a + v[b, t].item(), rel=1e-6, abs=1e-9)
        for t in range(n, L):
            assert adv[b, t].item() == 0


def test_group_advantages_matches_reference_and_masks_flat_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5 + 1e-9, 2.0, 0.0, 1.0, 1.0])
    adv, live = losses.group_advantages(rewards, 4, scale=True, eps=1e-4)
    for g in range(3):
        rs = rewards[g * 4 : (g + 1) * 4].tolist()
        mu = sum(rs) / 4
        sd = math.sqrt(sum((x - mu) ** 2 for x in rs) / 3)
        for i in range(4):
            want = 0.0 if sd <= 1e-6 else (rs[i] - mu) / (sd + 1e-4)
            assert adv[g * 4 + i].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert live.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    adv2, _ = losses.group_advantages(rewards, 4, scale=False)
    assert adv2[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


@pytest.mark.parametrize("norm", ["token", "sequence", "unbiased"])
def test_grpo_loss_matches_reference(gen, norm):
    N, L = 4, 5
    lp = torch.randn(N, L, generator=gen, dtype=torch.float64) * 0.2 - 1
    old = lp + torch.randn(N, L, generator=gen, dtype=torch.float64) * 0.3
    ref = lp + torch.randn(N, L, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64
    )
    beta, eps = 0.05, 0.2
    loss, st = losses.grpo_loss(lp, old, ref, adv, mask, clip_eps=eps, beta=beta, norm=norm, max_len=8)
    per_seq, tot, ntok = [], 0.0, 0
    for i in range(N):
        s = 0.0
        n = int(mask[i].sum())
        for t in range(n):
            r = math.exp(lp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            d = ref[i, t].item() - lp[i, t].item()
            k3 = math.exp(d) - d - 1
            s += -(min(r * a, min(max(r, 1 - eps), 1 + eps) * a) - beta * k3)
        per_seq.append(s / n)
        tot += s
        ntok += n
    want = {"token": tot / ntok, "sequence": sum(per_seq) / N, "unbiased": tot / (N * 8)}[norm]
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert st["kl"] >= 0


def test_grpo_gradient_pushes_up_positive_advantage():
    lp = torch.full((2, 3), -1.0, requires_grad=True)
    loss, _ = losses.grpo_loss(lp, lp.detach(), lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    loss.backward()
    assert (lp.grad[0] < 0).all() and (lp.grad[1] > 0).all()  # descent raises logp of the good sample


def test_grpo_rejects_unknown_norm():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="normalisation"):
        losses.grpo_loss(x, x, x, torch.zeros(1), torch.ones(1, 2), norm="bogus")


@pytest.mark.parametrize("T,alpha", [(1.0, 1.0), (2.0, 0.5), (4.0, 0.0)])
def test_kd_loss_matches_reference(gen, T, alpha):
    B, S, V = 2, 5, 6
    s = torch.randn(B, S, V, generator=gen, dtype=torch.float64)
    t = torch.randn(B, S, V, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, S), generator=gen)
    labels[0, :2] = -100
    loss, _ = losses.kd_loss(s, t, labels, temperature=T, alpha=alpha)
    kl, ce, n = 0.0, 0.0, 0
    for b in range(B):
        for k in range(S - 1):
            y = int(labels[b, k + 1])
            if y == -100:
                continue
            lq = _lsm([x / T for x in s[b, k].tolist()])
            lpp = _lsm([x / T for x in t[b, k].tolist()])
            kl += sum(math.exp(p) * (p - q) for p, q in zip(lpp, lq))
            ce += -_lsm(s[b, k].tolist())[y]
            n += 1
    want = alpha * T * T * kl / n + (1 - alpha) * ce / n
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_kd_loss_is_zero_when_student_equals_teacher_and_alpha_one(gen):
    z = torch.randn(1, 4, 5, generator=gen)
    loss, _ = losses.kd_loss(z, z.clone(), torch.tensor([[0, 1, 2, 3]]), temperature=2.0, alpha=1.0)
    assert abs(loss.item()) < 1e-6
