"""The pipeline as a whole: compile the pipeline definitions to the checked-in IR (``compile``),
run that IR on this machine with ``kfp.local`` and summarise it (``local``: ``run_pipeline``), and
submit it to a KFP endpoint or keep its recurring runs in line with ``pipelines/schedules.yaml``
(``remote``)."""
