import json
import math

import pytest
import torch
import torch.nn.functional as F

from vqshrink.models.maskgit import (MaskGIT, MaskGITConfig, guidance_at, mask_ratio,
                                     unmask_schedule)
from vqshrink.models.sampling import cfg_logits


def tiny_cfg(**kw) -> MaskGITConfig:
    base = dict(vocab_size=16, num_classes=4, token_shape=(4, 4), depth=2, width=32, heads=4,
                mlp_dim=64, dropout=0.0)
    base.update(kw)
    return MaskGITConfig(**base)


def tiny_model(seed: int = 0, **kw) -> MaskGIT:
    torch.manual_seed(seed)
    return MaskGIT(tiny_cfg(**kw))


def test_config_defaults_and_round_trip():
    cfg = MaskGITConfig()
    assert (cfg.depth, cfg.width, cfg.heads, cfg.mlp_dim) == (24, 768, 16, 3072)
    assert (cfg.dropout, cfg.label_smoothing, cfg.class_dropout) == (0.1, 0.1, 0.1)
    assert cfg.vocab_size == 16384 and cfg.token_shape == (16, 16)
    d = json.loads(json.dumps(tiny_cfg().to_dict()))
    assert MaskGITConfig(**d) == tiny_cfg()
    with pytest.raises(ValueError):
        tiny_cfg(mask_schedule="linear")


@pytest.mark.parametrize("schedule", ["cosine", "arccos"])
def test_mask_ratio_formula(schedule):
    r = torch.linspace(0, 1, 101, dtype=torch.float64)
    got = mask_ratio(r, schedule)
    want = torch.cos(r * math.pi / 2) if schedule == "cosine" else torch.arccos(r) / (math.pi / 2)
    assert torch.allclose(got, want.clamp(1e-6, 1.0))
    for x in (0.0, 0.25, 0.5, 0.9):
        w = math.cos(x * math.pi / 2) if schedule == "cosine" else math.acos(x) / (math.pi / 2)
        assert float(mask_ratio(x, schedule)) == pytest.approx(w)
    assert float(mask_ratio(0.0, schedule)) == pytest.approx(1.0)
    assert float(mask_ratio(1.0, schedule)) == pytest.approx(1e-6)
    assert (got[1:] <= got[:-1]).all()  # monotone non-increasing
    with pytest.raises(ValueError):
        mask_ratio(0.5, "nope")


@pytest.mark.parametrize("schedule", ["cosine", "arccos"])
@pytest.mark.parametrize("n,steps", [(256, 12), (256, 16), (256, 1), (16, 16), (16, 5), (16, 1), (3, 2)])
def test_unmask_schedule(n, steps, schedule):
    rem = unmask_schedule(n, steps, schedule)
    assert len(rem) == steps and rem[-1] == 0
    fixed = [a - b for a, b in zip([n] + rem[:-1], rem)]
    assert sum(fixed) == n and min(fixed) >= 1


def test_unmask_schedule_matches_google_formula():
    # the usual case: floor(N * cos(pi/2 * (t+1)/T)) clamped to [1, left - 1]
    n, steps, left, want = 256, 12, 256, []
    for t in range(steps - 1):
        left = max(1, min(left - 1, math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps))))
        want.append(left)
    assert unmask_schedule(n, steps, "cosine") == want + [0]
    with pytest.raises(ValueError):
        unmask_schedule(16, 17)
    with pytest.raises(ValueError):
        unmask_schedule(16, 0)


def test_guidance_ramp():
    assert [guidance_at(t, 5, 2.0) for t in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert guidance_at(0, 1, 3.0) == 3.0


def _record_masked_counts(model, monkeypatch):
    seen = []
    orig = model.guided_logits

    def spy(tokens, labels, w):
        seen.append(((tokens == model.mask_id).sum(-1).tolist(), w))
        return orig(tokens, labels, w)

    monkeypatch.setattr(model, "guided_logits", spy)
    return seen


@pytest.mark.parametrize("steps", [1, 3, 8, 16])
def test_decoding_fixes_tokens_per_schedule(steps, monkeypatch):
    model = tiny_model().eval()
    seen = _record_masked_counts(model, monkeypatch)
    g = torch.Generator().manual_seed(0)
    out = model.sample(torch.tensor([0, 1, 2]), generator=g, steps=steps, guidance=1.0)
    n = model.cfg.num_tokens
    before = [counts for counts, _ in seen]
    assert len(before) == steps and before[0] == [n] * 3
    rem = unmask_schedule(n, steps, "cosine")
    assert before[1:] == [[r] * 3 for r in rem[:-1]]
    fixed = [a - b for a, b in zip([n] + rem[:-1], rem)]
    assert sum(fixed) == n and min(fixed) >= 1
    assert [w for _, w in seen] == [guidance_at(t, steps, 1.0) for t in range(steps)]
    assert out.shape == (3, 4, 4) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < model.cfg.vocab_size  # no mask id left


def test_sample_determinism():
    model = tiny_model().eval()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])

    def run(seed):
        return model.sample(labels, generator=torch.Generator().manual_seed(seed), steps=6,
                            guidance=2.0)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (6, 4, 4) and a.dtype == torch.long


def test_guided_logits_are_cfg():
    model = tiny_model().eval()
    tokens = torch.randint(0, 17, (3, 16))
    labels = torch.tensor([0, 2, 3])
    uncond = torch.full_like(labels, model.cfg.num_classes)
    with torch.no_grad():
        cond, unc = model.logits(tokens, labels), model.logits(tokens, uncond)
        for w in (0.0, 0.7, 3.0):
            got = model.guided_logits(tokens, labels, w)
            assert torch.allclose(got, cond + w * (cond - unc), atol=1e-5)
            assert torch.allclose(got, cfg_logits(cond, unc, w), atol=1e-5)
    assert not torch.allclose(cond, unc)  # the class token matters


def test_class_dropout():
    labels = torch.arange(4).repeat(8)
    assert (tiny_model(class_dropout=1.0).drop_labels(labels) == 4).all()
    assert torch.equal(tiny_model(class_dropout=0.0).drop_labels(labels), labels)
    torch.manual_seed(0)
    dropped = tiny_model(class_dropout=0.5).drop_labels(torch.zeros(4000, dtype=torch.long))
    assert 0.45 < (dropped == 4).float().mean() < 0.55


def test_forward_uses_dropped_labels_and_masks(monkeypatch):
    model = tiny_model(class_dropout=1.0)
    seen = {}
    orig = model.logits

    def spy(tokens, labels):
        seen["tokens"], seen["labels"] = tokens, labels
        return orig(tokens, labels)

    monkeypatch.setattr(model, "logits", spy)
    tokens = torch.randint(0, 16, (64, 4, 4))
    model(tokens, torch.randint(0, 4, (64,)))
    assert (seen["labels"] == 4).all()
    n_masked = (seen["tokens"] == model.mask_id).sum(-1)
    assert n_masked.min() >= 1 and n_masked.max() <= 16
    unmasked = seen["tokens"] != model.mask_id
    assert torch.equal(seen["tokens"][unmasked], tokens.view(64, -1)[unmasked])


def test_random_mask_counts():
    model = tiny_model()
    torch.manual_seed(0)
    mask = model.random_mask(2000, torch.device("cpu"))
    counts = mask.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 16
    # cosine: P(ratio > 1/2) = P(r < 2/3) = 2/3, so most samples mask more than half the tokens
    assert 0.6 < (counts > 8).float().mean() < 0.75


def test_loss_is_label_smoothed_ce_on_all_tokens():
    model = tiny_model(label_smoothing=0.1).eval()
    with torch.no_grad():  # peaked logits, so that smoothing changes the loss visibly
        model.bias.copy_(torch.linspace(-4, 4, 16))
    # targets where the logits peak: with uniformly drawn targets the expected plain CE equals
    # the smoothing term's mean -log p, and the two losses can coincide
    tokens, labels = torch.randint(12, 16, (8, 4, 4)), torch.randint(0, 4, (8,))
    torch.manual_seed(3)
    out = model(tokens, labels)
    torch.manual_seed(3)
    lab = model.drop_labels(labels)
    mask = model.random_mask(8, torch.device("cpu"))
    flat = tokens.view(8, -1)
    with torch.no_grad():
        logits = model.logits(flat.masked_fill(mask, model.mask_id), lab)
    want = F.cross_entropy(logits.reshape(-1, 16), flat.reshape(-1), label_smoothing=0.1)
    plain = F.cross_entropy(logits.reshape(-1, 16), flat.reshape(-1))
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["loss"].item() != pytest.approx(plain.item(), rel=1e-3)
    acc = (logits.argmax(-1) == flat)[mask].float().mean()
    assert out["acc"].item() == pytest.approx(acc.item())


def test_invalid_inputs_raise():
    model = tiny_model().eval()
    tokens = torch.randint(0, 16, (2, 4, 4))
    with pytest.raises(ValueError):
        model(tokens, torch.tensor([0, 4]))
    with pytest.raises(ValueError):
        model(tokens, torch.tensor([-1, 0]))
    with pytest.raises(ValueError):
        model(torch.randint(0, 16, (2, 4, 5)), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        model.sample(torch.tensor([5]), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        model.logits(tokens.view(2, -1), torch.tensor([0, 5]))
    model.logits(tokens.view(2, -1), torch.tensor([0, 4]))  # unconditional id is fine here


def test_bf16_autocast_forward_backward():
    model = tiny_model(dropout=0.1)
    tokens, labels = torch.randint(0, 16, (4, 4, 4)), torch.randint(0, 4, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens, labels)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = model.eval().sample(labels, generator=torch.Generator().manual_seed(0), steps=4)
    assert s.shape == (4, 4, 4) and int(s.max()) < 16


def test_overfits_fixed_batch_and_samples_it():
    torch.manual_seed(0)
    model = MaskGIT(tiny_cfg(width=64, heads=4, mlp_dim=128, class_dropout=0.0))
    g = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, 16, (4, 4, 4), generator=g)
    labels = torch.arange(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, accs = [], []
    for _ in range(100):
        out = model(tokens, labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        accs.append(out["acc"].item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert sum(accs[-20:]) / 20 > 0.9
    model.eval()
    samples = model.sample(labels, generator=torch.Generator().manual_seed(0), steps=8,
                           guidance=0.0)
    assert (samples == tokens).float().mean() > 0.8
