"""The only door to TensorFlow, tf-keras and bert4keras.

Importing this module sets the environment bert4keras needs before TensorFlow loads, checks that `tf.keras` is
Keras 2, and turns a missing package into one line that says how to install it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings

# Both must be set before anything imports tf.keras (see shared/NOTES-stack.md).
os.environ["TF_KERAS"] = "1"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's C++ start-up notices (oneDNN, "E0000 … AVX-512", absl's pre-init warning) ignore that level.
# A multi-worker run's coordination service adds gRPC details to its own log lines, which come out unprefixed.
NOISE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log messages before absl"
    rb"|Additional GRPC error information from remote target|:UNKNOWN:Error received from peer)"
)


def _filter_native_stderr() -> None:
    """Drop TensorFlow's native log lines from file descriptor 2; everything else reaches stderr unchanged.

    Python's own `sys.stderr` (progress bars, errors) is moved to a duplicate of the real stderr, so it stays a
    terminal when it was one; only what native code writes to descriptor 2 passes through the filter thread.
    `--verbose` (BIGREC_VERBOSE=1) leaves stderr alone.
    """
    if os.environ.get("BIGREC_VERBOSE") == "1" or sys.stderr is not sys.__stderr__:
        return  # verbose, or stderr is already redirected in-process (tests): leave it alone
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # pragma: no cover - no usable descriptor 2
        return
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NOISE.match(line):
                    os.write(real, line)

    threading.Thread(target=forward, name="bigrec-native-stderr", daemon=True).start()


_filter_native_stderr()

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

# TensorFlow's Python logger says INFO for every multi-worker step it takes (where a host such as a Ray worker shows
# INFO); bigrec reports its own progress.
tf.get_logger().setLevel("WARNING")

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
