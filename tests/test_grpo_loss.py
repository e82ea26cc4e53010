"""GRPO maths: group advantages and the clipped, dual-clipped, k3-regularised token loss on
hand-computed values (paper.md §9, grpo.md §1), its gradient, and the registered loss options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.train.losses import get_loss
from w2v_jax.train.losses.grpo import grpo_loss, grpo_token_loss, group_advantages


def test_group_advantages_hand_values():
    np.testing.assert_allclose(group_advantages(np.array([1.0, 0, 0, 0]), 4),
                               [1.499997, -0.499999, -0.499999, -0.499999], rtol=1e-6)
    # two groups of 3: ddof=1 std of (1, 2, 3) is 1; a constant group gives 0
    adv = group_advantages([1.0, 2.0, 3.0, 5.0, 5.0, 5.0], 3)
    np.testing.assert_allclose(adv, [-1 / (1 + 1e-6), 0, 1 / (1 + 1e-6), 0, 0, 0], atol=1e-7)
    out = group_advantages(jnp.array([0.0, 1.0]), 2)  # jax in -> jax out; std([0, 1]) = 0.7071
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(out, [-0.5 / (2 ** -0.5 + 1e-6), 0.5 / (2 ** -0.5 + 1e-6)],
                               rtol=1e-6)


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="group_size=1"):
        group_advantages([1.0, 2.0], 1)
    with pytest.raises(ValueError, match="whole number of groups"):
        group_advantages([1.0, 2.0, 3.0], 2)


def test_token_loss_reference_vector():
    """grpo.md §2's oracle vector (EasyR1 formulas): token-mean total -0.553222."""
    logp = np.array([[-1, -.5, -2], [-.3, -1.2, 0]])
    old = np.array([[-1.2, -.5, -.5], [-.3, -.2, 0]])
    ref = np.array([[-1.1, -.7, -1.9], [-.5, -1, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    loss_sum, count, aux = grpo_token_loss(logp, old, ref, np.array([1.5, -0.5]), mask)
    assert float(count) == 5
    np.testing.assert_allclose(float(loss_sum / count), -0.553222, atol=1e-6)
    pg = np.array([-1.83210, -1.5, -0.33470, 0.5, 0.4])
    k3 = np.array([.004837, .018731, .005171, .018731, .021403])
    np.testing.assert_allclose(float(aux["pg_loss_sum"]), pg.sum(), atol=1e-4)
    np.testing.assert_allclose(float(aux["kl_sum"]), k3.sum(), atol=1e-5)
    np.testing.assert_allclose(float(aux["entropy_sum"]), 5.0, atol=1e-6)  # sum of -logp


@pytest.mark.parametrize("adv, ratio, want, branch", [
    (1.0, 1.1, -1.1, None),           # unclipped, A > 0
    (-1.0, 0.9, 0.9, None),           # unclipped, A < 0
    (1.0, 1.5, -1.3, "high"),         # clip high: -A * (1 + 0.3)
    (-1.0, 0.5, 0.8, "low"),          # clip low: -A * (1 - 0.2)
    (-1.0, 5.0, 3.0, "dual"),         # dual clip: min(5, -A * 3)
    (2.0, 5.0, -2.6, "high"),         # no dual clip for A > 0
    (1.0, 0.5, -0.5, None),           # A > 0 below 1 - eps: unclipped (max keeps -A rho)
])
def test_token_loss_branches(adv, ratio, want, branch):
    logp = np.log(np.array([[ratio, 1.0]]))
    old = np.zeros((1, 2))
    mask = np.array([[1, 0]])  # the second token is masked out
    loss_sum, count, aux = grpo_token_loss(logp, old, logp, np.array([adv]), mask, kl_coef=0.0)
    assert float(count) == 1
    np.testing.assert_allclose(float(loss_sum), want, rtol=1e-6)
    for name in ("low", "high", "dual"):
        assert float(aux[f"clip_frac_{name}_sum"]) == (1.0 if name == branch else 0.0)
    np.testing.assert_allclose([float(aux["ratio_max"]), float(aux["ratio_min"])],
                               [ratio, ratio], rtol=1e-6)


def test_kl_and_log_ratio_clamps():
    logp = np.array([[-1.0, -1.0, -1.0, -31.0]])
    ref = np.array([[-1.0, -0.5, 4.0, -1.0]])  # delta 0, 0.5, 5 (k3 142 -> 10), 30 (-> 20 -> 10)
    loss_sum, _, aux = grpo_token_loss(logp, logp, ref, np.zeros(1), np.ones((1, 4)),
                                       kl_coef=0.5)
    k3 = [0.0, np.exp(0.5) - 1.5, 10.0, 10.0]
    np.testing.assert_allclose(float(aux["kl_sum"]), sum(k3), rtol=1e-6)
    np.testing.assert_allclose(float(loss_sum), 0.5 * sum(k3), rtol=1e-6)  # A = 0: only KL
    # a huge log-ratio is clamped at 20 before exp
    _, _, aux = grpo_token_loss(np.array([[30.0]]), np.zeros((1, 1)), np.zeros((1, 1)),
                                np.ones(1), np.ones((1, 1)))
    np.testing.assert_allclose(float(aux["ratio_max"]), np.exp(20.0), rtol=1e-5)


def test_gradient_at_ratio_one_is_the_token_mean_policy_gradient():
    """With old = ref = logp (stop-gradient), d(loss_sum / count) = -mean_tokens(A grad logp)."""
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 7, (3, 5)))
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.float32)
    adv = jnp.asarray([1.2, -0.7, 0.4])

    def logp_of(t):
        return jnp.take_along_axis(jax.nn.log_softmax(t), tokens[..., None], axis=-1)[..., 0]

    def grpo(t):
        lp = logp_of(t)
        frozen = jax.lax.stop_gradient(lp)
        loss_sum, count, _ = grpo_token_loss(lp, frozen, frozen, adv, mask)
        return loss_sum / count

    def policy_gradient(t):
        return -jnp.sum(mask * adv[:, None] * logp_of(t)) / jnp.sum(mask)

    np.testing.assert_allclose(jax.grad(grpo)(theta), jax.grad(policy_gradient)(theta),
                               atol=1e-7)
    assert float(jnp.abs(jax.grad(policy_gradient)(theta)).max()) > 1e-2


def test_registered_loss_and_options():
    assert get_loss("grpo") is grpo_loss
    bound = get_loss("grpo", kl_coef=0.1, clip_high=0.28)
    assert bound.keywords == {"kl_coef": 0.1, "clip_high": 0.28}
    with pytest.raises(ValueError, match="clip_dual"):
        get_loss("grpo", clip_dual=0.5)
    with pytest.raises(ValueError, match="beta"):
        get_loss("grpo", beta=0.1)
