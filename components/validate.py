"""Validate: schema, dtypes, ranges, missing values and class balance; fails naming the column."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from mlstack.settings import DEFAULTS


@dsl.component(base_image=DEFAULTS.training_image, install_kfp_package=False)
def validate(dataset: Input[Dataset], report: Output[Metrics]):
    from mlstack.errors import exit_on_error
    from mlstack.validation import validate_file

    with exit_on_error():
        profile = validate_file(dataset.path, report.path)
    for key, value in profile.items():
        report.log_metric(key, value)
