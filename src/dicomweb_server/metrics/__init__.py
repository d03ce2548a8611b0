"""Prometheus metrics of the archive, served at ``/metrics`` (docs/deployment.md).

- `transactions`: the DICOMweb transaction of each route, the ``transaction`` label;
- `registry`: the metrics themselves, single-process or shared by worker processes, and the
  hooks STOW-RS and the error handlers report through;
- `middleware`: counts and times every request;
- `multiprocess`: the directory ``serve --workers N`` shares metrics through.

This package imports nothing on purpose: ``serve`` uses `multiprocess` before the variable
prometheus_client reads at its first import is set.
"""
