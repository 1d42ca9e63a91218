"""The feature definitions Feast reads (``feast apply`` in this folder, or
``mlstack.features.repo.apply``): the ``customer`` entity and the ``customer_features`` view.

Generated from the data contract (``mlstack.schema``), never written out by hand: the view's
schema is the contract's features in contract order with their types, so the two cannot drift
apart (tests/unit/test_features_repo.py). The source is the Parquet file the ingest and
materialize steps write (``MLSTACK_FEAST_SOURCE``).
"""

from mlstack.features.repo import definitions
from mlstack.settings import load_settings

customer, customer_source, customer_features = definitions(load_settings().feature_source)
