"""Training: fit the scikit-learn model and log it with its lineage (``training``), score it and
the current champion on one held-out split and decide the gates (``evaluation``), register the
version with its alias (``registry``), and the MLflow connection they share (``tracking``)."""
