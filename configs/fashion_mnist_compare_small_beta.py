"""Does a beta below the comparison's sweep close SASTC's gap to KD? (docs/comparison.md)

The comparison's beta sweep (10, 30, 100, 800 at the chosen learning rate 0.05, seed 0)
chose its smallest value, 10, with validation accuracy falling as beta grows. This
continues that sweep downwards on validation only, with everything else as the
comparison: the same teacher (its directory links to the comparison's), student, seed
and learning rate. Only the sweep phase runs:

    ln -s ../fashion_mnist/teacher docs/results/fashion_mnist_small_beta/teacher
    python -m sastc_jax.compare --config=configs/fashion_mnist_compare_small_beta.py \\
        --workdir=docs/results/fashion_mnist_small_beta --phases=sweeps --commit_records
"""

import importlib.util
from pathlib import Path

COMPARISON = Path(__file__).with_name("fashion_mnist_compare.py")
# The learning rate the comparison chose on validation (its choices.json).
CHOSEN_LEARNING_RATE = 0.05


def get_config():
    spec = importlib.util.spec_from_file_location("fashion_mnist_compare", COMPARISON)
    comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comparison)
    config = comparison.get_config()
    config.student.optimizer.learning_rate = CHOSEN_LEARNING_RATE
    config.compare.learning_rate_sweep.candidates = ()
    config.compare.beta_sweep.candidates = (1.0, 3.0)
    config.compare.doubling.rows = ()
    return config
