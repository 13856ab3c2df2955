"""LlamaGen class-conditional GPT: 2D RoPE, causality, KV cache, overfitting, sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vqshrink.models.llamagen import (
    Block,
    KVCache,
    LlamaGen,
    LlamaGenConfig,
    apply_rope,
    rope_table,
    swiglu_hidden_dim,
)
from vqshrink.models.sampling import cfg_logits, sample_logits

TINY = dict(vocab_size=16, num_classes=10, token_shape=(4, 4), n_layer=2, n_head=2, dim=32)
NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                  class_dropout_prob=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and a busy 2-core machine slows them badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, randomize: bool = True, **overrides) -> LlamaGen:
    """Tiny model; ``randomize`` replaces the zero output head (and the rest) with larger
    random weights so that logits depend visibly on the inputs."""
    torch.manual_seed(seed)
    model = LlamaGen(LlamaGenConfig(**{**TINY, **overrides}))
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.3)
    return model.eval()


def random_tokens(b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (b, *TINY["token_shape"]), generator=g)


# ----------------------------------------------------------------------------- config, sizes


def test_config_round_trip_json():
    cfg = LlamaGenConfig(**TINY)
    again = LlamaGenConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.token_shape == (4, 4)


def test_swiglu_hidden_size_rounding():
    for dim in (32, 64, 100, 384, 768, 1024, 1280, 1536):
        # brute force: the smallest multiple of 256 not below floor(2/3 * 4 * dim)
        want = next(m for m in range(256, 100_000, 256) if m >= math.floor(8 * dim / 3))
        assert swiglu_hidden_dim(dim, 256) == want
    assert swiglu_hidden_dim(768) == 2048  # GPT-B
    model = tiny_model(randomize=False)
    assert model.layers[0].feed_forward.w1.out_features == swiglu_hidden_dim(32) == 256


def test_gpt_b_size_and_init():
    with torch.device("meta"):
        model = LlamaGen(LlamaGenConfig(num_classes=1000))  # LlamaGen GPT-B: "111M"
    n = sum(p.numel() for p in model.parameters())
    assert 110e6 < n < 112e6
    tiny = tiny_model(randomize=False)
    assert torch.count_nonzero(tiny.output.weight) == 0  # zero-init head
    assert tiny.cls_embedding.num_embeddings == TINY["num_classes"] + 1
    assert all(m.bias is None for m in tiny.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- 2D RoPE


def test_rope_layout_rows_then_columns():
    h, w, hd = 4, 5, 16
    table = rope_table((h, w), hd, zero_cls=False)
    assert table.shape == (1 + h * w, hd // 2, 2)
    for r in range(h):
        for c in range(w):
            row = table[1 + r * w + c]
            # pair 0 (frequency 1) turns with the row, pair hd/4 (frequency 1) with the column
            assert torch.allclose(row[0], torch.tensor([math.cos(r), math.sin(r)]), atol=1e-6)
            assert torch.allclose(row[hd // 4], torch.tensor([math.cos(c), math.sin(c)]), atol=1e-6)
            f1 = 10_000.0 ** (-4 / hd)
            assert torch.allclose(row[1], torch.tensor([math.cos(r * f1), math.sin(r * f1)]),
                                  atol=1e-6)


def test_rope_preserves_norms():
    h, w, hd = 4, 5, 16
    table = rope_table((h, w), hd)[1:]
    x = torch.randn(3, h * w, 2, hd)
    y = apply_rope(x, table)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    pairs_x = x.reshape(3, h * w, 2, hd // 2, 2).norm(dim=-1)
    pairs_y = y.reshape(3, h * w, 2, hd // 2, 2).norm(dim=-1)
    assert torch.allclose(pairs_x, pairs_y, atol=1e-5)  # each pair is a plane rotation


def test_rope_scores_depend_only_on_relative_offsets():
    h, w, hd = 4, 5, 16
    table = rope_table((h, w), hd)[1:]
    torch.manual_seed(0)
    q, k = torch.randn(hd), torch.randn(hd)
    rq = apply_rope(q.expand(1, h * w, 1, hd), table)[0, :, 0]
    rk = apply_rope(k.expand(1, h * w, 1, hd), table)[0, :, 0]
    scores = rq @ rk.T  # (query position, key position)
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i in range(h * w):
        for j in range(h * w):
            off = (i // w - j // w, i % w - j % w)
            by_offset.setdefault(off, []).append(float(scores[i, j]))
    for vals in by_offset.values():
        assert max(vals) - min(vals) < 1e-4
    firsts = [v[0] for v in by_offset.values()]
    assert max(firsts) - min(firsts) > 1e-2  # and the scores do change with the offset
    # row and column offsets are told apart: (1, 0) and (0, 1) give different scores
    assert abs(by_offset[(1, 0)][0] - by_offset[(0, 1)][0]) > 1e-3


def test_rope_class_token():
    hd = 16
    x = torch.randn(2, 1, 3, hd)
    identity = rope_table((4, 4), hd, zero_cls=False)[:1]
    assert torch.equal(apply_rope(x, identity), x)  # unrotated
    zero = rope_table((4, 4), hd, zero_cls=True)[:1]  # LlamaGen: (cos, sin) = (0, 0)
    assert torch.count_nonzero(apply_rope(x, zero)) == 0


# ----------------------------------------------------------------------------- forward


def test_causal_mask():
    for zero_cls in (True, False):
        model = tiny_model(zero_cls_qk=zero_cls)
        tokens = random_tokens(2)
        labels = torch.tensor([3, 7])
        base = model.logits(tokens, labels)
        flat = tokens.view(2, -1)
        for t in (0, 5, 14):
            changed = flat.clone()
            changed[:, t] = (changed[:, t] + 1) % TINY["vocab_size"]
            out = model.logits(changed.view_as(tokens), labels)
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4


def test_kv_cache_matches_full_forward():
    for zero_cls in (True, False):
        model = tiny_model(zero_cls_qk=zero_cls)
        tokens = random_tokens(3)
        cls_ids = torch.tensor([0, 9, 10])  # 10 = the unconditional class
        full = model.logits(tokens, cls_ids)
        flat = tokens.view(3, -1)
        caches = model.new_caches()
        steps = [model.decode_step(cls_ids, 0, caches)]
        for p in range(1, flat.shape[1]):
            steps.append(model.decode_step(flat[:, p - 1], p, caches))
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_chunked_cache_matches_full_block():
    model = tiny_model()
    block, rope = model.layers[0], model.rope
    x = torch.randn(2, 9, TINY["dim"])
    full = block(x, rope[:9])
    cache = KVCache(17)
    first = block(x[:, :4], rope[:4], cache, 0)
    second = block(x[:, 4:], rope[4:9], cache, 4)
    assert isinstance(block, Block)
    assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-5)


def test_forward_loss_acc_and_class_dropout():
    model = tiny_model(randomize=False)
    tokens, labels = random_tokens(4), torch.tensor([0, 1, 2, 3])
    out = model(tokens, labels)
    assert set(out) == {"loss", "acc"}
    assert abs(out["loss"].item() - math.log(16)) < 1e-5  # zero head: uniform prediction
    assert 0.0 <= out["acc"].item() <= 1.0
    # class dropout (training only) swaps labels for the null class, from the global RNG
    model = tiny_model(**NO_DROPOUT)
    model.cfg.class_dropout_prob = 1.0
    model.train()
    dropped = model(tokens, labels)["loss"]
    null = torch.full_like(labels, TINY["num_classes"])
    want = torch.nn.functional.cross_entropy(
        model.logits(tokens, null).reshape(-1, 16), tokens.reshape(-1))
    assert torch.allclose(dropped, want)
    model.cfg.class_dropout_prob = 0.5
    torch.manual_seed(5)
    a = model(tokens, labels)["loss"]
    torch.manual_seed(5)
    b = model(tokens, labels)["loss"]
    assert torch.equal(a, b)


def test_invalid_labels_raise():
    model = tiny_model(randomize=False)
    tokens = random_tokens(2)
    g = torch.Generator().manual_seed(0)
    for bad in ([0, 10], [-1, 0]):
        with pytest.raises(ValueError):
            model(tokens, torch.tensor(bad))
        with pytest.raises(ValueError):
            model.sample(torch.tensor(bad), generator=g)
    with pytest.raises(ValueError):
        model(tokens[:, :2], torch.tensor([0, 1]))  # wrong token grid


def test_overfits_fixed_batch():
    torch.manual_seed(0)
    model = LlamaGen(LlamaGenConfig(**TINY, **NO_DROPOUT)).train()
    tokens, labels = random_tokens(8, seed=3), torch.arange(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = model(tokens, labels)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(tokens, labels)
    assert out["loss"].item() < 0.1 * first  # ln 16 = 2.77 -> ~0.02 after 100 steps
    assert out["acc"].item() > 0.95


def test_bf16_autocast():
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(random_tokens(2), torch.tensor([1, 2]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = model.sample(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 4, 4) and s.dtype == torch.long and 0 <= s.min() and s.max() < 16


# ----------------------------------------------------------------------------- sampling


def test_sample_shape_dtype_range_and_seeds():
    model = tiny_model()
    labels = torch.tensor([0, 3, 9])

    def draw(seed, **kw):
        return model.sample(labels, generator=torch.Generator().manual_seed(seed), **kw)

    s = draw(0)
    assert s.shape == (3, 4, 4) and s.dtype == torch.long
    assert 0 <= s.min() and s.max() < TINY["vocab_size"]
    assert torch.equal(s, draw(0))
    assert not torch.equal(s, draw(1))
    for kw in (dict(top_k=3), dict(top_p=0.5), dict(temperature=0.5, top_k=5, top_p=0.9)):
        assert torch.equal(draw(2, **kw), draw(2, **kw))
    # top_k=1 is greedy: the same tokens whatever the seed
    assert torch.equal(draw(0, top_k=1), draw(1, top_k=1))


def naive_sample(model: LlamaGen, labels, generator, cfg_scale, **kw):
    """Reference sampler: full forward (no cache) over the tokens drawn so far."""
    b, n = labels.shape[0], model.cfg.seq_len
    tokens = torch.zeros(b, n, dtype=torch.long)
    null = torch.full_like(labels, model.cfg.num_classes)
    for t in range(n):
        cond = model.logits(tokens.view(b, 4, 4), labels)[:, t]
        logits = cond
        if cfg_scale is not None:
            uncond = model.logits(tokens.view(b, 4, 4), null)[:, t]
            logits = uncond + cfg_scale * (cond - uncond)  # LlamaGen generate.py
        tokens[:, t] = sample_logits(logits, generator, **kw)
    return tokens.view(b, 4, 4)


def test_cfg_scale_one_is_the_conditional_sampler():
    model = tiny_model()
    labels = torch.tensor([0, 3, 9, 9])
    got = model.sample(labels, generator=torch.Generator().manual_seed(7), cfg_scale=1.0)
    want = naive_sample(model, labels, torch.Generator().manual_seed(7), None)
    assert torch.equal(got, want)
    with torch.no_grad():  # the unconditional embedding plays no part
        model.cls_embedding.weight[-1].normal_(0.0, 5.0)
    again = model.sample(labels, generator=torch.Generator().manual_seed(7), cfg_scale=1.0)
    assert torch.equal(again, got)


def test_cfg_sampler_matches_reference_guidance():
    model = tiny_model()
    labels = torch.tensor([1, 4])
    for scale in (2.0, 4.0):
        got = model.sample(labels, generator=torch.Generator().manual_seed(3), cfg_scale=scale,
                           top_p=0.9)
        want = naive_sample(model, labels, torch.Generator().manual_seed(3), scale, top_p=0.9)
        assert torch.equal(got, want)
    # and the guided logits are the shared formula with w = s - 1
    c, u = torch.randn(5), torch.randn(5)
    assert torch.allclose(cfg_logits(c, u, 2.0 - 1.0), u + 2.0 * (c - u), atol=1e-6)
