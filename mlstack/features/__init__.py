"""The feature store (Feast): the definitions generated from the data contract (``repo``), the
Parquet source written from a DVC data version (``sources``), point-in-time training sets
(``training``), materialization to the online store (``materialize``) and online look-ups by
entity id (``online``). The Feast project lives in ``feature_repo/``."""
