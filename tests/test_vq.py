"""The vector quantizer against brute-force references."""

import torch

from vqshrink.quantizers.vq import VectorQuantizer


def brute_nearest(z, codebook):
    d = ((z[:, None, :] - codebook[None]) ** 2).sum(-1)
    return d.argmin(1)


def test_forward_picks_nearest_token_and_passes_gradient_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, ema_decay=None).eval()
    z = torch.randn(50, 3, requires_grad=True)
    out = vq(z)
    ref = brute_nearest(z.detach(), vq.codebook.detach())
    assert torch.equal(out.indices, ref)
    torch.testing.assert_close(out.z_q, vq.codebook[ref].detach())
    out.z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through


def test_losses_match_definition():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 2, beta=0.25, ema_decay=None)
    z = torch.randn(40, 2)
    out = vq(z)
    t = vq.codebook[brute_nearest(z, vq.codebook.detach())].detach()
    mse = ((z - t) ** 2).mean()
    torch.testing.assert_close(out.loss, 1.25 * mse)  # codebook + 0.25 commitment
    ema = VectorQuantizer(8, 2, beta=0.25, ema_decay=0.9)
    ema.init_codebook(vq.codebook.detach().clone())
    torch.testing.assert_close(ema(z).loss, 0.25 * mse)  # EMA: commitment only


def test_ema_update_follows_equations_3_to_5():
    torch.manual_seed(2)
    k, d, g = 6, 2, 0.9
    vq = VectorQuantizer(k, d, ema_decay=g).train()
    init = torch.randn(k, d)
    counts = torch.tensor([4.0, 0, 2, 0, 1, 3])
    vq.init_codebook(init, counts)
    m_run, l_run, t = init * counts[:, None], counts.clone(), init.clone()
    for _ in range(5):
        z = torch.randn(32, d) * 2
        idx = brute_nearest(z, t)
        m = torch.zeros(k, d).index_add_(0, idx, z)
        n = torch.bincount(idx, minlength=k).float()
        m_run, l_run = g * m_run + (1 - g) * m, g * l_run + (1 - g) * n
        alive = l_run > 1e-5
        t = torch.where(alive[:, None], m_run / l_run.clamp_min(1e-30)[:, None], t)
        vq(z)
        torch.testing.assert_close(vq.codebook, t)
        torch.testing.assert_close(vq.ema_count, l_run)


def test_unused_token_stays_put():
    vq = VectorQuantizer(2, 1, ema_decay=0.9).train()
    vq.init_codebook(torch.tensor([[0.0], [100.0]]), torch.tensor([10.0, 1.0]))
    for _ in range(2000):  # the far token is never picked; its count underflows
        vq(torch.randn(16, 1) * 0.1)
    assert vq.codebook[1].item() == 100.0


def test_perplexity_of_uniform_usage():
    vq = VectorQuantizer(4, 1, ema_decay=None).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.arange(4.0)[:, None])
    out = vq(torch.arange(4.0).repeat(5)[:, None])
    torch.testing.assert_close(out.perplexity, torch.tensor(4.0))
