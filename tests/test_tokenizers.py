"""The image tokenizer, its quantizers (VQ, SimVQ, VAR multi-scale), discriminator and loss, at
tiny sizes on CPU."""

import pytest
import torch
import torch.nn.functional as F

from vqshrink.models.discriminator import (
    NLayerDiscriminator,
    adaptive_weight,
    gan_factor,
    generator_loss,
    hinge_d_loss,
)
from vqshrink.models.losses import TokenizerLoss
from vqshrink.models.vqgan import Tokenizer, VQGANConfig
from vqshrink.quantizers.multiscale import MultiScaleQuantizer
from vqshrink.quantizers.simvq import SimVQ

QUANTIZERS = ["vq", "simvq", "multiscale"]


def tiny_config(quantizer: str) -> VQGANConfig:
    # 32x32 -> 8x8 latent (2 downsamplings), attention at 8x8; widths multiples of 32 (GroupNorm)
    return VQGANConfig(
        resolution=32,
        ch=32,
        ch_mult=(1, 1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=32,
        embed_dim=8,
        codebook_size=64,
        quantizer=quantizer,
        patch_nums=(1, 2, 4, 8),
    )


def brute_nearest(z, codebook):
    return ((z[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 32) * 2 - 1


# ------------------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_tokenizer_shapes_and_token_round_trip(quantizer, images):
    torch.manual_seed(1)
    model = Tokenizer(tiny_config(quantizer)).eval()
    out = model(images)
    assert out.x_hat.shape == images.shape
    assert out.z.shape == (2, 8, 8, 8)
    assert out.vq_loss.ndim == 0 and out.vq_loss > 0 and out.perplexity >= 1
    assert model.embeddings(images).shape == (2 * 8 * 8, 8)
    idx = model.encode_indices(images)
    if quantizer == "multiscale":
        assert [tuple(i.shape) for i in idx] == [(2, p, p) for p in (1, 2, 4, 8)]
        for a, b in zip(idx, out.indices):
            assert torch.equal(a, b)
    else:
        assert idx.shape == (2, 8, 8) and torch.equal(idx, out.indices)
        assert idx.dtype == torch.long and int(idx.max()) < 64
    torch.testing.assert_close(model.decode_indices(idx), out.x_hat)
    assert model.last_layer is model.decoder.conv_out.weight


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_flat_tokens_and_layout_are_the_one_interface(quantizer, images):
    """encode_tokens gives (B, L) in the tokenizer's layout: the maps flattened one after
    another (VAR: its own sequence order, flatten_scales), and decode_tokens takes them back
    to the forward's reconstruction, also in the token files' per-image shape."""
    torch.manual_seed(1)
    model = Tokenizer(tiny_config(quantizer)).eval()
    layout, out = model.token_layout, model(images)
    tokens = model.encode_tokens(images)
    if quantizer == "multiscale":
        assert (layout.kind, layout.patch_nums, layout.file_shape) == ("scales", (1, 2, 4, 8),
                                                                      (85,))
        assert torch.equal(tokens, model.quantizer.flatten_scales(out.indices))
        for a, b in zip(layout.split(tokens), model.quantizer.split_scales(tokens)):
            assert torch.equal(a, b)
    else:
        assert (layout.kind, layout.patch_nums, layout.file_shape) == ("map", None, (8, 8))
        assert torch.equal(tokens, out.indices.reshape(2, 64))
    assert tokens.shape == (2, layout.length) and torch.equal(layout.flat(out.indices), tokens)
    torch.testing.assert_close(model.decode_tokens(tokens), out.x_hat)
    torch.testing.assert_close(model.decode_tokens(tokens.reshape(2, *layout.file_shape)),
                               out.x_hat)
    with pytest.raises(ValueError, match=rf"expected {layout.length} tokens per image"):
        model.decode_tokens(tokens[:, :-1])


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_gradients_reach_encoder_decoder_and_quantizer(quantizer, images):
    torch.manual_seed(2)
    model = Tokenizer(tiny_config(quantizer)).train()
    out = model(images)
    ((out.x_hat - images) ** 2).mean().add(out.vq_loss).backward()
    for p in (model.encoder.conv_in.weight, model.quant_conv.weight, model.decoder.conv_out.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    q = model.quantizer
    if quantizer == "simvq":
        assert q.proj.weight.grad.abs().sum() > 0 and q.proj.bias.grad.abs().sum() > 0
        assert "frozen_codebook" not in dict(model.named_parameters())  # C is a buffer
        assert not q.frozen_codebook.requires_grad
    else:
        assert q.codebook.grad.abs().sum() > 0
    if quantizer == "multiscale":
        assert all(phi.weight.grad.abs().sum() > 0 for phi in q.phis)


def test_continuous_path_has_no_quantizer_and_its_weights_load_strictly(images):
    torch.manual_seed(3)
    ae = Tokenizer(tiny_config("vq"))
    out = ae(images, quantize=False)
    assert out.indices is None and out.vq_loss == 0 and out.perplexity == 0
    torch.testing.assert_close(out.x_hat, ae.decode(ae.encode(images)))
    out.x_hat.mean().backward()
    assert ae.quantizer.codebook.grad is None  # the quantizer is not touched
    vq = Tokenizer(tiny_config("vq"))
    vq.load_state_dict(ae.state_dict(), strict=True)
    torch.testing.assert_close(vq(images, quantize=False).x_hat, out.x_hat)


def test_paper_scale_config_gives_16x16_latent():
    cfg = VQGANConfig()
    assert cfg.latent_resolution == 16 and cfg.codebook_size == 16384 and cfg.ch == 64
    assert cfg.patch_nums[-1] == 16
    with pytest.raises(ValueError):
        VQGANConfig(quantizer="fsq")


def test_embeddings_feed_the_codebook_init(images):
    torch.manual_seed(4)
    model = Tokenizer(tiny_config("vq")).eval()
    emb = model.embeddings(images)
    model.quantizer.init_codebook(emb[:64].clone())
    idx = model.encode_indices(images).reshape(-1)
    torch.testing.assert_close(model.quantizer.codebook[idx[:64]], emb[:64], rtol=0, atol=0)


# ------------------------------------------------------------------------------ SimVQ


def test_simvq_loss_straight_through_and_lookup_through_projection():
    torch.manual_seed(5)
    q = SimVQ(16, 4, beta=0.25)
    z = torch.randn(3, 5, 4, requires_grad=True)
    out = q(z)
    cb = q.frozen_codebook @ q.proj.weight.T + q.proj.bias
    ref = brute_nearest(z.detach().reshape(-1, 4), cb.detach())
    assert torch.equal(out.indices.reshape(-1), ref)
    t = cb.detach()[ref]
    mse = ((z.detach().reshape(-1, 4) - t) ** 2).mean()
    torch.testing.assert_close(out.loss, 1.25 * mse)  # 0.25 commitment + 1.0 codebook
    torch.testing.assert_close(out.z_q.reshape(-1, 4), t)
    out.z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through
    idx = torch.tensor([[0, 3], [15, 7]])
    ref = q.frozen_codebook[idx] @ q.proj.weight.T + q.proj.bias
    torch.testing.assert_close(q.lookup(idx), ref)
    assert not torch.allclose(q.lookup(idx), q.frozen_codebook[idx])  # the reference repo's pitfall


def test_simvq_loss_gradients_split_between_encoder_and_projection():
    torch.manual_seed(6)
    q = SimVQ(8, 3)
    z = torch.randn(10, 3, requires_grad=True)
    q(z).loss.backward()
    t = q.lookup(q(z).indices).detach()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - t) / z.numel())
    assert q.proj.weight.grad.abs().sum() > 0 and q.frozen_codebook.grad is None


def test_simvq_kmeans_init_makes_effective_codebook_equal_centroids():
    torch.manual_seed(7)
    q = SimVQ(32, 6)
    centroids = torch.randn(32, 6) * 3 + 1
    q.init_codebook(centroids)
    torch.testing.assert_close(q.codebook, centroids)
    torch.testing.assert_close(q.lookup(torch.arange(32)), centroids)
    # C stays frozen under an optimizer step; only W moves
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(torch.randn(40, 6)).loss.backward()
    opt.step()
    torch.testing.assert_close(q.frozen_codebook, centroids)
    assert not torch.allclose(q.proj.weight, torch.eye(6))
    with pytest.raises(ValueError):
        q.init_codebook(torch.randn(31, 6))


# ------------------------------------------------------------------------------ multi-scale


def test_multiscale_round_trip_reproduces_forward_f_hat():
    torch.manual_seed(8)
    q = MultiScaleQuantizer(32, 8, patch_nums=(1, 2, 3, 5, 8)).eval()
    f = torch.randn(3, 8, 8, 8)
    out = q(f)
    idx = q.encode_indices(f)
    assert [tuple(i.shape) for i in idx] == [(3, p, p) for p in (1, 2, 3, 5, 8)]
    for a, b in zip(idx, out.indices):
        assert torch.equal(a, b)
    torch.testing.assert_close(q.decode_indices(idx), out.z_q)
    # STE: the output's value is f_hat, its gradient goes straight to f
    fg = f.clone().requires_grad_(True)
    q(fg).z_q.sum().backward()
    torch.testing.assert_close(fg.grad, torch.ones_like(f))


def test_multiscale_residual_and_loss_by_hand():
    torch.manual_seed(9)
    # quant_resi=0: phi is the identity, so each scale is area-down / nearest / bicubic-up
    q = MultiScaleQuantizer(16, 3, patch_nums=(1, 2, 4), beta=0.25, quant_resi=0.0)
    f = torch.randn(2, 3, 4, 4)
    out = q(f)
    cb = q.codebook.detach()
    rest, f_hat, loss = f.clone(), torch.zeros_like(f), 0.0
    for pn in (1, 2, 4):
        r = F.interpolate(rest, size=(pn, pn), mode="area") if pn != 4 else rest
        i = brute_nearest(r.permute(0, 2, 3, 1).reshape(-1, 3), cb).view(2, pn, pn)
        h = cb[i].permute(0, 3, 1, 2)
        h = F.interpolate(h, size=(4, 4), mode="bicubic") if pn != 4 else h
        f_hat, rest = f_hat + h, rest - h
        loss = loss + 1.25 * ((f_hat - f) ** 2).mean()
    torch.testing.assert_close(out.z_q, f_hat)
    torch.testing.assert_close(out.loss, loss / 3)


def test_multiscale_phi_schedule_matches_var_ticks():
    q = MultiScaleQuantizer(8, 4)  # VAR: 10 scales, 4 shared phis
    picks = [list(q.phis).index(q.phi(si)) for si in range(10)]
    assert picks == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # nearest of ticks linspace(1/12, 11/12, 4)
    x = torch.randn(1, 4, 5, 5)
    phi = q.phis[0]
    torch.testing.assert_close(phi(x), 0.5 * x + 0.5 * F.conv2d(x, phi.weight, phi.bias, padding=1))


# ------------------------------------------------------------------------------ GAN pieces


def test_discriminator_shape_init_and_hinge_losses():
    torch.manual_seed(10)
    d = NLayerDiscriminator(3, 64, 3)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # PatchGAN 70x70 receptive field
    bn = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 3 and all(m.bias.abs().sum() == 0 for m in bn)
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, 0.5, 1.0, -0.5])
    # relu(1 - real) = [0, .5, 2, 1] -> .875; relu(1 + fake) = [0, 1.5, 2, .5] -> 1.0
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (0.875 + 1.0)))
    torch.testing.assert_close(generator_loss(fake), torch.tensor(0.25))
    assert gan_factor(9, 10) == 0.0 and gan_factor(10, 10) == 1.0


def test_adaptive_weight_equals_hand_computation():
    w = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([1.0, 1.0, 1.0])
    rec = (w * a).sum() ** 2  # grad = 2 (w.a) a = 2 * -1 * a -> norm 10
    g = (w * b).sum() * 0.5  # grad = 0.5 b -> norm sqrt(.75)
    got = adaptive_weight(rec, g, w, disc_weight=0.8)
    torch.testing.assert_close(got, torch.tensor(10 / (0.75**0.5 + 1e-4) * 0.8))
    assert not got.requires_grad
    huge = adaptive_weight(rec * 1e9, g, w, disc_weight=1.0)
    torch.testing.assert_close(huge, torch.tensor(1e4))  # clamped
    with torch.no_grad():
        assert adaptive_weight(rec.detach(), g.detach(), w) == 0


# ------------------------------------------------------------------------------ the loss


@pytest.fixture(scope="module")
def loss_fn():
    return TokenizerLoss(
        lpips_net="alex", pretrained_backbone=False, gan=True, disc_start=5, disc_ndf=16
    )


def test_lpips_with_random_trunk_runs_offline_and_says_so(loss_fn, images):
    assert loss_fn.pretrained_backbone is False
    assert "RANDOM" in loss_fn.describe() and "alex" in loss_fn.describe()
    assert not any(p.requires_grad for p in loss_fn.lpips.parameters())
    x_hat = images.flip(-1)
    d = loss_fn.perceptual(images, x_hat)
    torch.testing.assert_close(d, loss_fn.lpips(x_hat, images).mean())
    assert d > 0 and loss_fn.perceptual(images, images) < 1e-6


def test_tokenizer_loss_components_and_gan_gating(loss_fn, images):
    torch.manual_seed(11)
    model = Tokenizer(tiny_config("vq"))
    out = model(images)
    before = loss_fn(images, out.x_hat, out.vq_loss, step=4, last_layer=model.last_layer)
    mse = ((out.x_hat - images) ** 2).mean()
    lp = loss_fn.lpips(out.x_hat, images).mean()
    torch.testing.assert_close(before["mse"], mse.detach())
    torch.testing.assert_close(before["loss"], mse + lp + out.vq_loss)  # all weights 1
    assert "g_loss" not in before and before["gan_factor"] == 0
    after = loss_fn(images, out.x_hat, out.vq_loss, step=5, last_layer=model.last_layer)
    assert after["gan_factor"] == 1 and after["d_weight"] > 0
    torch.testing.assert_close(
        after["loss"], before["loss"] + after["d_weight"] * after["g_loss"], rtol=1e-5, atol=1e-6
    )
    after["loss"].backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    d = loss_fn.discriminator_loss(images, out.x_hat, step=5)
    assert d["loss"] > 0 and d["loss"].requires_grad
    assert loss_fn.discriminator_loss(images, out.x_hat, step=0)["loss"] == 0


def test_continuous_phase_loss_has_no_quantizer_term(loss_fn, images):
    model = Tokenizer(tiny_config("simvq"))
    out = model(images, quantize=False)
    parts = loss_fn(images, out.x_hat, out.vq_loss, step=0)
    assert parts["vq"] == 0
    torch.testing.assert_close(parts["loss"], parts["mse"] + parts["lpips"])
