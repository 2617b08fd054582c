"""The only door to TensorFlow, tf-keras and bert4keras.

Importing this module sets the environment bert4keras needs before TensorFlow loads, checks that `tf.keras` is
Keras 2, and turns a missing package into one line that says how to install it.
"""

from __future__ import annotations

import os
import warnings

# Both must be set before anything imports tf.keras (see shared/NOTES-stack.md).
os.environ["TF_KERAS"] = "1"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bigrec_cli.errors import BackendError  # noqa: E402

INSTALL_HINT = (
    "run `make install`, or: pip install tensorflow-cpu==2.21.0 && "
    "pip install --no-deps tf-keras==2.21.0 bert4keras==0.11.5"
)

try:
    import tensorflow as tf  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the environment
    raise BackendError(f"TensorFlow is not installed ({error})", hint=INSTALL_HINT) from None
try:
    import tf_keras as keras  # noqa: E402
except ImportError as error:  # pragma: no cover
    raise BackendError(f"tf-keras is not installed ({error})", hint=INSTALL_HINT) from None
try:
    from bert4keras.models import build_transformer_model  # noqa: E402
    from bert4keras.tokenizers import Tokenizer  # noqa: E402
except ImportError as error:  # pragma: no cover
    raise BackendError(f"bert4keras is not installed ({error})", hint=INSTALL_HINT) from None

# bert4keras builds its layers with one unseeded initializer; the weights are loaded from the checkpoint anyway.
warnings.filterwarnings("ignore", message="The initializer .* is unseeded", category=UserWarning)

if not keras.__version__.startswith("2."):  # pragma: no cover
    raise BackendError(
        f"tf.keras is Keras {keras.__version__}, bert4keras needs Keras 2",
        hint="install tf-keras matching TensorFlow and set TF_USE_LEGACY_KERAS=1",
    )

__all__ = ["tf", "keras", "Tokenizer", "build_transformer_model", "set_seed", "versions"]


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow and make TensorFlow's kernels deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def versions() -> dict[str, str]:
    """Return the versions of the libraries a run depends on, for its manifest."""
    import bert4keras

    return {"tensorflow": tf.__version__, "tf_keras": keras.__version__, "bert4keras": bert4keras.__version__}
