"""advmix.attacks on a tiny real generator: AdvMix vs RandMix, projection, early stop, PGD,
mixup."""

import dataclasses

import pytest
import torch
from torch import nn

from advmix import attacks
from advmix.attacks import AdvMixConfig
from advmix.classifiers import SmallCNN
from advmix.projections import PROJECTIONS, ZSpace, fit_style_set, sample_fine
from advmix.stylegan import Generator, GeneratorConfig, to_unit
from benchmarks.op_count import OpCounter

K = 4


def fitted(G, kind: str):
    """The valid set ``kind`` fitted to 2000 draws (the default 10 000 is slow for tests)."""
    return fit_style_set(G, K, AdvMixConfig(projection=kind, style_samples=2000))


def budget(**kw) -> AdvMixConfig:
    return AdvMixConfig(style_samples=2000, **kw)


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    cfg = GeneratorConfig(resolution=32, z_dim=32, w_dim=32, channel_max=32, k=K)
    return Generator(cfg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def toy(G):
    """A small CNN, briefly trained to separate two clusters of decoded images, and labelled
    examples it classifies correctly (nominal accuracy 1)."""
    torch.manual_seed(1)
    model = SmallCNN(num_classes=2, width=8)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        w = G.mapping(torch.randn(64, G.z_dim, generator=g))
        x = to_unit(G.synthesis(w))
    # labels from the coarse content: which side of the median its mean brightness falls on
    score = x.mean(dim=(1, 2, 3))
    y = (score > score.median()).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return model, w[keep], y[keep]


def test_advmix_fools_at_least_where_randmix_does(G, toy):
    model, w, y = toy
    box = fitted(G, "box")
    fooled_rand = torch.zeros(len(y), dtype=torch.bool)
    images, _ = attacks.randmix(G, w, K, torch.Generator().manual_seed(7))
    with torch.no_grad():
        fooled_rand = model(images).argmax(1) != y
    result = attacks.advmix(model, G, w, y, K, box, budget(steps=5, restarts=1),
                            torch.Generator().manual_seed(7))  # fmt: skip
    # the first iterate of AdvMix is the RandMix sample of the same random stream
    assert bool((result.fooled | ~fooled_rand).all())
    assert int(result.fooled.sum()) >= int(fooled_rand.sum())
    assert int(result.fooled.sum()) > 0
    with torch.no_grad():  # the kept mixes are what the attack says they are
        wrong = model(result.images).argmax(1) != y
    assert torch.equal(wrong, result.fooled)
    assert torch.equal(result.ws[:, :K], w[:, :K])  # content (coarse styles) untouched


def test_advmix_returns_its_random_start_for_every_example(G, toy):
    """--train-on both+random trains on these: they must be the RandMix sample of the same stream, for
    every example, also for those the start itself fooled."""
    model, w, y = toy
    images, _ = attacks.randmix(G, w, K, torch.Generator().manual_seed(7))
    result = attacks.advmix(model, G, w, y, K, fitted(G, "ball"), budget(steps=3),
                            torch.Generator().manual_seed(7))  # fmt: skip
    assert result.starts.shape == images.shape
    torch.testing.assert_close(result.starts, images, atol=1e-5, rtol=0)


def test_residual_mixes_keep_the_real_details(G, toy):
    """A residual mix is x + G(mix) - G(w) in [0, 1]: with the image's own fine styles it is the
    real image, and it differs from the generated mix by exactly the real image's detail."""
    model, w, y = toy
    from advmix.settings import spec_of

    field = next(f for f in dataclasses.fields(AdvMixConfig) if f.name == "mix_images")
    assert spec_of(field).choices == tuple(attacks.MIX_IMAGES)  # one class per choice
    with torch.no_grad():
        reconstruction = to_unit(G.synthesis(w, noise_mode="const"))
    x = (
        reconstruction
        + 0.05 * torch.randn(reconstruction.shape, generator=torch.Generator().manual_seed(3))
    ).clamp(0, 1)
    generated, _ = attacks.randmix(G, w, K, torch.Generator().manual_seed(7))
    residual, _ = attacks.randmix(G, w, K, torch.Generator().manual_seed(7), x, "residual")
    torch.testing.assert_close(residual, (generated + x - reconstruction).clamp(0, 1))
    own = attacks.ResidualMixes(x, reconstruction)
    torch.testing.assert_close(own(torch.arange(len(x)), reconstruction), x)
    # the attack decodes through the same images: its kept mixes are residual mixes too
    cfg = budget(steps=2, mix_images="residual")
    result = attacks.advmix(model, G, w, y, K, fitted(G, "ball"), cfg,
                            torch.Generator().manual_seed(7), x=x)  # fmt: skip
    with torch.no_grad():
        plain = to_unit(G.synthesis(result.ws, noise_mode="const"))
    torch.testing.assert_close(result.images, (plain + x - reconstruction).clamp(0, 1),
                               atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("kind", ["box", "ball"])
def test_projection_keeps_styles_in_the_set(G, kind):
    style_set = fitted(G, kind)
    start = sample_fine(G, K, 16, torch.Generator().manual_seed(3))
    far = start + 50 * torch.randn(start.shape, generator=torch.Generator().manual_seed(4))
    assert not style_set.contains(far, start).all()
    projected = style_set.project(far, start)
    assert style_set.contains(projected, start).all()
    assert torch.allclose(style_set.project(projected, start), projected, atol=1e-5)


def test_advmix_result_stays_in_the_box(G, toy):
    model, w, y = toy
    box = fitted(G, "box")
    result = attacks.advmix(model, G, w, y, K, box, budget(steps=3, step_size=1.0),
                            torch.Generator().manual_seed(1))  # fmt: skip
    # every iterate after the start is projected; starts are map(z) samples, which the 1%
    # quantile box may not contain: check the examples that moved
    moved = ~result.fooled
    assert box.contains(result.ws[moved, K:], result.ws[moved, K:]).all()


class Biased(nn.Module):
    """Logits favour class 0 whatever the image (with a tiny image-dependent term so that
    gradients exist): examples of other classes are misclassified at the first iterate."""

    def forward(self, x):
        s = x.mean(dim=(1, 2, 3))
        return torch.stack([5 + 1e-3 * s, -1e-3 * s, torch.zeros_like(s)], dim=1)


def test_early_stop_freezes_successful_examples(G):
    g = torch.Generator().manual_seed(5)
    w = G.mapping(torch.randn(8, G.z_dim, generator=g))
    y = torch.tensor([0, 1, 0, 2, 0, 1, 1, 0])
    steps = 4
    box = fitted(G, "box")
    result = attacks.advmix(Biased(), G, w, y, K, box, budget(steps=steps),
                            torch.Generator().manual_seed(9))  # fmt: skip
    fooled = y != 0
    assert torch.equal(result.fooled, fooled)
    # frozen at the first iterate: the RandMix sample of the same stream
    _, rand_ws = attacks.randmix(G, w, K, torch.Generator().manual_seed(9))
    assert torch.equal(result.ws[fooled], rand_ws[fooled])
    assert not torch.equal(result.ws[~fooled], rand_ws[~fooled])  # the others ascended
    # cost: one evaluation per frozen example, steps + 1 for the others
    assert result.evaluations == int(fooled.sum()) + int((~fooled).sum()) * (steps + 1)
    unstopped = attacks.advmix(Biased(), G, w, y, K, box, budget(steps=steps, early_stop=False),
                               torch.Generator().manual_seed(9))  # fmt: skip
    assert unstopped.evaluations == len(y) * (steps + 1)
    assert torch.equal(unstopped.ws[fooled], rand_ws[fooled])  # still the first success


def margin(model, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best wrong logit minus the true one: > 0 fooled, and how far from the boundary."""
    with torch.no_grad():
        logits = model(images)
    true = logits.gather(1, y[:, None])[:, 0]
    return logits.scatter(1, y[:, None], -torch.inf).amax(1) - true


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_early_stop_changes_the_cost_not_the_result(G, toy, kind):
    # Early stop drops fooled examples from the ascent (on a CPU, redoing the forward pass of
    # the few that go on when fewer than half do). Every example's ascent is independent of
    # its batch-mates, but not its float rounding: a smaller batch can take other kernels,
    # so results agree up to rounding, which an ascent may amplify. What holds on any CPU:
    # - the same examples are fooled, except any whose kept mix lies within rounding of the
    #   decision boundary;
    # - a fooled example keeps the same first misclassified mix: it took few steps, and the
    #   mixes differ by ~1e-6 on the CPUs we ran (Intel and AMD, AVX2 and AVX-512 kernels),
    #   far inside 1e-3;
    # - a never-fooled example keeps its highest-loss iterate, and that ascent can be steered
    #   elsewhere by rounding (z-space normalises a small gradient, so a few ulps can turn its
    #   direction): its kept loss agrees within a few percent, not bit for bit.
    model, w, y = toy
    style_set = fitted(G, kind)

    def attack(early_stop: bool) -> attacks.AttackResult:
        gen = torch.Generator().manual_seed(5)
        cfg = budget(steps=5, restarts=2, early_stop=early_stop)
        return attacks.advmix(model, G, w, y, K, style_set, cfg, gen)

    stopped, full = attack(True), attack(False)
    near_boundary = (margin(model, stopped.images, y).abs() < 1e-3) | (
        margin(model, full.images, y).abs() < 1e-3
    )
    assert torch.equal(stopped.fooled[~near_boundary], full.fooled[~near_boundary])
    assert int(full.fooled.sum()) > 0
    both = stopped.fooled & full.fooled
    assert torch.allclose(stopped.ws[both], full.ws[both], atol=1e-3)
    assert torch.allclose(stopped.images[both], full.images[both], atol=1e-3)
    neither = ~stopped.fooled & ~full.fooled
    assert torch.allclose(stopped.loss[neither], full.loss[neither], rtol=0.05, atol=1e-3)
    assert torch.equal(stopped.ws[:, :K], full.ws[:, :K])  # the content is never touched
    assert stopped.evaluations < full.evaluations / 2


def test_advmix_waits_for_the_device_at_most_once_per_iterate(G, toy):
    # On a GPU every host sync stalls the launch queue; early stopping needs one per iterate
    # (how many examples go on), the rest of the bookkeeping none.
    model, w, y = toy
    ball = fitted(G, "ball")
    steps, restarts = 5, 2
    for early_stop in (True, False):
        with OpCounter() as count:
            cfg = budget(steps=steps, restarts=restarts, early_stop=early_stop)
            result = attacks.advmix(model, G, w, y, K, ball, cfg, torch.Generator().manual_seed(7))
        # one nonzero per restart (who is left) and, with early stop, one per ascent step
        bound = restarts + (restarts * steps if early_stop else 0)
        assert count.syncs <= bound, (early_stop, count.syncs)
        assert result.evaluations > 0


def test_op_counter_counts_syncs_and_skips_views():
    x = torch.arange(6.0)
    with OpCounter() as count:
        x.view(2, 3), x[1:], (x > 2).nonzero(), x[x > 2], float(x.sum()), x * 2
    assert count.syncs == 3  # nonzero, boolean-mask indexing, .item()
    assert count.ops == count.by_name.total() and "aten::view" not in count.by_name


def test_z_space_attack_runs_on_the_manifold(G, toy):
    model, w, y = toy
    zset = fitted(G, "z")
    result = attacks.advmix(model, G, w[:8], y[:8], K, zset, budget(steps=2, restarts=2),
                            torch.Generator().manual_seed(0))  # fmt: skip
    # mapping outputs repeat one w over all layers: a z-space mix keeps that structure
    fine = result.ws[:, K:]
    assert torch.allclose(fine, fine[:, :1].expand_as(fine))


def test_z_space_steps_move_z_by_the_step_size(G):
    # The z-space set has no radius of its own: its step is step_size * sqrt(z_dim) along the
    # normalised gradient, for every example.
    zset = fitted(G, "z")
    assert isinstance(zset, ZSpace)
    g = torch.Generator().manual_seed(3)
    z, grad = torch.randn(5, G.z_dim, generator=g), torch.randn(5, G.z_dim, generator=g)
    moved = zset.step(z, grad, 0.25)
    torch.testing.assert_close((moved - z).norm(dim=1), torch.full((5,), 0.25 * G.z_dim**0.5))
    cosine = nn.functional.cosine_similarity(moved - z, grad, dim=1)
    torch.testing.assert_close(cosine, torch.ones(5))
    assert torch.equal(zset.project(moved, z), moved)  # nothing to project onto


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_every_set_starts_at_the_randmix_sample_and_steps_uphill(G, toy, kind):
    model, w, y = toy
    style_set = fitted(G, kind)
    z = torch.randn(len(w), G.z_dim, generator=torch.Generator().manual_seed(8))
    start = style_set.start(G, z)
    with torch.no_grad():
        torch.testing.assert_close(style_set.fine(G, start), G.mapping(z)[:, K:])
    coarse = G.synthesis_coarse(w[:, :K])

    def loss(cur):
        logits = model(to_unit(G.synthesis_fine(coarse, style_set.fine(G, cur))))
        return nn.functional.cross_entropy(logits, y, reduction="none")

    cur = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(cur).sum(), cur)
    with torch.no_grad():
        nxt = style_set.project(style_set.step(start, grad, 0.05), start)
        assert style_set.contains(style_set.fine(G, nxt), style_set.fine(G, start)).all() or (
            kind == "box"  # a map(z) start may sit outside the 1% quantile box
        )
        assert loss(nxt).mean() > loss(start).mean()  # a small step goes uphill


@pytest.mark.parametrize(
    "eps, lo, hi", [(4 / 255, 0.0, 1.0), (8 / 255, 0.0, 1.0), (8 / 255, -1.0, 1.0)]
)
def test_pgd_stays_within_eps(toy, G, eps, lo, hi):
    model, w, y = toy
    with torch.no_grad():
        x = to_unit(G.synthesis(w[:16]))
    x = x * (hi - lo) + lo

    def net(v):
        return model((v - lo) / (hi - lo))

    adv = attacks.pgd_linf(net, x, y[:16], eps, steps=5, lo=lo, hi=hi,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    radius = eps * (hi - lo)
    assert (adv - x).abs().max() <= radius + 1e-6
    assert (adv - x).abs().max() > radius / 2  # it did move
    assert adv.min() >= lo and adv.max() <= hi
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(net(adv), y[:16]) >= loss(net(x), y[:16])


def test_mixup_is_a_convex_combination():
    x = torch.rand(6, 3, 4, 4)
    y = torch.arange(6)
    xm, ya, yb, lam = attacks.mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and torch.equal(ya, y)
    perm = yb  # labels are the indices here
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    again = attacks.mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    assert again[3] == lam and torch.equal(again[2], yb)
    logits = torch.randn(6, 6)
    expected = lam * nn.functional.cross_entropy(logits, ya) + (
        1 - lam
    ) * nn.functional.cross_entropy(logits, yb)
    assert torch.allclose(attacks.mixup_loss(logits, ya, yb, lam), expected)
