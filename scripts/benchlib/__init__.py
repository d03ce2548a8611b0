"""Building blocks of ``scripts/bench.py``, the side-by-side benchmark against Orthanc.

``client``     a small HTTP/1.1 keep-alive client and the load runner every scenario uses
``servers``    starting and watching our server, Orthanc and the bare-ASGI ceiling
``workload``   the deterministic DICOM objects every server receives
``multipart``  multipart/related bodies: building STOW requests, splitting responses
``scenarios``  the scenarios run against every server (``ingest``, ``reads``)
``large_index``  the PostgreSQL 1M-instance scenario (ours alone)
``report``     targets, the printed tables and the JSON file
"""
