"""The VAR next-scale-prediction transformer and its quantizer helpers, tiny sizes on CPU."""

import json

import pytest
import torch

from vqshrink.models.var import VAR, VARConfig, block_causal_mask, guidance_ramp
from vqshrink.quantizers.multiscale import MultiScaleQuantizer, MultiScaleSimVQ

PN = (1, 2, 4)
L = 1 + 4 + 16


def tiny_cfg(**kw) -> VARConfig:
    base = dict(vocab_size=16, num_classes=3, patch_nums=PN, token_dim=4, depth=2, width=32,
                heads=2)
    base.update(kw)
    return VARConfig(**base)


def tiny_model(seed=0, quantizer_cls=MultiScaleQuantizer, **kw) -> VAR:
    torch.manual_seed(seed)
    q = quantizer_cls(16, 4, patch_nums=PN)
    return VAR(tiny_cfg(**kw), q)


def random_tokens(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (b, L), generator=g)


# ------------------------------------------------------------------------------ config, mask


def test_config_defaults_and_round_trip():
    c = VARConfig()
    assert (c.width, c.heads) == (1024, 16)
    assert c.drop_path == pytest.approx(0.1 * 16 / 24)
    assert c.num_tokens == 680
    d = json.loads(json.dumps(c.to_dict()))
    assert VARConfig(**d) == c and isinstance(VARConfig(**d).patch_nums, tuple)
    t = tiny_cfg()
    assert VARConfig(**json.loads(json.dumps(t.to_dict()))) == t


def test_block_causal_mask_matches_scale_ids():
    pn = (1, 2, 3, 5)
    m = block_causal_mask(pn)
    sid = [i for i, p in enumerate(pn) for _ in range(p * p)]
    n = len(sid)
    assert m.shape == (n, n) and m.dtype == torch.bool
    for q in range(n):
        for k in range(n):
            assert bool(m[q, k]) == (sid[k] <= sid[q])


def test_guidance_ramp_values():
    assert guidance_ramp(1.5, 0, 10) == 0.0
    assert guidance_ramp(1.5, 9, 10) == pytest.approx(1.5)
    assert guidance_ramp(1.5, 3, 10) == pytest.approx(0.5)
    assert guidance_ramp(2.0, 1, 3) == pytest.approx(1.0)
    assert guidance_ramp(1.5, 0, 1) == 0.0


# ------------------------------------------------------------------------------ quantizer


def test_split_flatten_round_trip():
    q = MultiScaleQuantizer(16, 4, patch_nums=PN)
    tok = random_tokens()
    maps = q.split_scales(tok)
    assert [tuple(m.shape) for m in maps] == [(3, 1, 1), (3, 2, 2), (3, 4, 4)]
    assert torch.equal(maps[1].reshape(3, -1), tok[:, 1:5])
    assert torch.equal(q.flatten_scales(maps), tok)
    with pytest.raises(ValueError):
        q.split_scales(tok[:, :-1])


@pytest.mark.parametrize("cls", [MultiScaleQuantizer, MultiScaleSimVQ])
def test_teacher_inputs_equal_inference_accumulation(cls):
    torch.manual_seed(0)
    q = cls(16, 4, patch_nums=PN).eval()
    maps = q.split_scales(random_tokens())
    ti = q.teacher_inputs(maps)
    assert ti.shape == (3, L - 1, 4) and ti.dtype == torch.float32
    # by hand: running f_hat, area-downsampled to the next scale
    f_hat, outs = torch.zeros(3, 4, 4, 4), []
    with torch.no_grad():
        for si in range(len(PN) - 1):
            f_hat = f_hat + q._contribution(maps[si], si, (4, 4))
            nxt = torch.nn.functional.interpolate(f_hat, size=(PN[si + 1],) * 2, mode="area")
            outs.append(nxt.flatten(2).transpose(1, 2))
        torch.testing.assert_close(ti, torch.cat(outs, 1), rtol=1e-6, atol=1e-6)
        # the step helper, as sampling calls it; the final f_hat decodes the tokens
        f, at = None, 0
        for si, p in enumerate(PN):
            f, nxt = q.next_input(si, f, maps[si])
            if si + 1 < len(PN):
                torch.testing.assert_close(nxt, ti[:, at : at + PN[si + 1] ** 2], rtol=0, atol=0)
                at += PN[si + 1] ** 2
            else:
                assert nxt is None
        torch.testing.assert_close(f, q.decode_indices(maps), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ model


def test_mismatched_quantizer_and_invalid_labels_raise():
    q = MultiScaleQuantizer(16, 4, patch_nums=PN)
    with pytest.raises(ValueError):
        VAR(tiny_cfg(vocab_size=32), q)
    with pytest.raises(ValueError):
        VAR(tiny_cfg(token_dim=8), q)
    with pytest.raises(ValueError):
        VAR(tiny_cfg(patch_nums=(1, 4)), q)
    m = VAR(tiny_cfg(), q)
    tok = random_tokens(2)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError):
            m(tok, torch.tensor(bad))
        with pytest.raises(ValueError):
            m.eval().sample(torch.tensor(bad), generator=torch.Generator().manual_seed(0))


def test_forward_outputs_and_bf16_autocast():
    m = tiny_model()
    tok, lab = random_tokens(), torch.tensor([0, 1, 2])
    out = m(tok, lab)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx(float(torch.log(torch.tensor(16.0))), abs=0.1)
    assert 0 <= out["acc"].item() <= 1
    out["loss"].backward()
    assert m.word_embed.weight.grad is not None and m.class_emb.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(tok, lab)
        assert torch.isfinite(out["loss"])
        m.eval()
        s = m.sample(lab, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, L)


def test_logits_are_block_causal():
    m = tiny_model(drop_path=0.0).eval()
    tok, lab = random_tokens(), torch.tensor([0, 1, 2])
    tok2 = tok.clone()
    tok2[:, 5:] = (tok2[:, 5:] + 1) % 16  # change the last scale only
    with torch.no_grad():
        a, b = m.logits(tok, lab), m.logits(tok2, lab)
    # the last scale's tokens are never inputs: every logit is unchanged
    torch.testing.assert_close(a, b)
    tok3 = tok.clone()
    tok3[:, 1:5] = (tok3[:, 1:5] + 1) % 16  # change scale 1: scales 0, 1 unchanged, 2 changes
    with torch.no_grad():
        c = m.logits(tok3, lab)
    torch.testing.assert_close(a[:, :5], c[:, :5])
    assert not torch.allclose(a[:, 5:], c[:, 5:])


@pytest.mark.parametrize("l2", [True, False])
def test_kv_cache_sampling_matches_full_forward(l2):
    m = tiny_model(seed=3, attn_l2_norm=l2, init_adaln_gamma=1.0).eval()
    lab = torch.tensor([0, 2])
    cfg = 1.5
    tok, logits = m.sample(lab, generator=torch.Generator().manual_seed(5), cfg=cfg, top_k=0,
                           top_p=0.0, _return_logits=True)
    with torch.no_grad():
        cond = m.logits(tok, lab)
        unc = m.logits(tok, lab, unconditional=True)
    at = 0
    for si, p in enumerate(PN):
        t = guidance_ramp(cfg, si, len(PN))
        ref = (1 + t) * cond[:, at : at + p * p] - t * unc[:, at : at + p * p]
        torch.testing.assert_close(logits[si], ref, rtol=1e-5, atol=1e-5)
        at += p * p
    # the cache is cleared after sampling
    assert all(blk.attn.cache is None and not blk.attn.caching for blk in m.blocks)


def test_sample_shapes_and_determinism():
    m = tiny_model().eval()
    lab = torch.tensor([0, 1, 2, 1])
    a = m.sample(lab, generator=torch.Generator().manual_seed(0), top_k=0, top_p=0.0)
    torch.manual_seed(123)  # the global RNG must not matter
    b = m.sample(lab, generator=torch.Generator().manual_seed(0), top_k=0, top_p=0.0)
    c = m.sample(lab, generator=torch.Generator().manual_seed(1), top_k=0, top_p=0.0)
    assert a.shape == (4, L) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = m.sample(lab, generator=torch.Generator().manual_seed(0), top_k=1, top_p=0.0)
    e = m.sample(lab, generator=torch.Generator().manual_seed(9), top_k=1, top_p=0.0)
    assert torch.equal(d, e)  # top-1 is greedy: independent of the seed


def test_tiny_model_overfits_and_quantizer_stays_frozen():
    m = tiny_model(seed=0, class_dropout=0.0, drop_path=0.0).train()
    assert not m.quantizer.training
    q_before = {k: v.clone() for k, v in m.quantizer.state_dict().items()}
    assert all(not p.requires_grad for p in m.quantizer.parameters())
    tok, lab = random_tokens(4, seed=7), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.05)
    first = None
    for _ in range(150):
        out = m(tok, lab)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].item() if first is None else first
    last = m(tok, lab)
    assert last["loss"].item() < 0.3 * first, (first, last["loss"].item())
    assert last["acc"].item() > 0.8
    assert all(p.grad is None for p in m.quantizer.parameters())
    for k, v in m.quantizer.state_dict().items():
        assert torch.equal(v, q_before[k]), k
    assert not m.quantizer.training
    # a self-contained checkpoint: the quantizer's weights are in the state dict
    assert any(k.startswith("quantizer.") for k in m.state_dict())


def test_class_dropout_uses_global_rng():
    m = tiny_model(drop_path=0.0, class_dropout=0.5).train()
    tok, lab = random_tokens(), torch.tensor([0, 1, 2])
    torch.manual_seed(11)
    a = m(tok, lab)["loss"]
    torch.manual_seed(11)
    b = m(tok, lab)["loss"]
    assert torch.equal(a, b)
    m.eval()  # no dropout in eval: equals the conditional logits' loss
    ref = torch.nn.functional.cross_entropy(m.logits(tok, lab).reshape(-1, 16), tok.reshape(-1))
    torch.testing.assert_close(m(tok, lab)["loss"], ref)
