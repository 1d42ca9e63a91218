"""Monitoring as code: the Grafana dashboards and the PrometheusRule generated from one list of
panels and rules (``dashboards``), and the Alertmanager webhook that turns a firing drift alert into
a retraining dispatch (``relay``, run as ``python -m mlstack.monitor.relay``)."""
