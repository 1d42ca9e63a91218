"""Validate: schema, dtypes, ranges, missing values and class balance; fails naming the column."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def validate(dataset: Input[Dataset], test_size: float, split_seed: int, report: Output[Metrics]):
    """``test_size`` and ``split_seed`` are the train step's: each class on both sides of its
    split."""
    from mlstack.data.validate import validate_file
    from mlstack.errors import exit_on_error

    with exit_on_error():
        summary = validate_file(
            dataset.path, report.path, test_size=test_size, split_seed=split_seed
        )
    for key, value in summary.items():
        report.log_metric(key, value)
