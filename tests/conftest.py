"""Test setup: 8 faked CPU devices (must run before jax initialises its backend)."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def highest_precision():
    """fp32 matmuls at full precision for a whole module (parity tests): a module opts in with
    ``pytestmark = pytest.mark.usefixtures("highest_precision")``."""
    with jax.default_matmul_precision("highest"):
        yield
