"""Benchmarks, apart from the tests: ``python -m bench`` runs all, ``python -m bench A`` one.

* A (:mod:`bench.a_seed`) - against the seed's sequential way and a findscu loop, on Orthanc.
* B (:mod:`bench.b_limit`) - against the PACS-bound limit, on the simulated PACS.
* C (:mod:`bench.c_aggregator`) - the aggregator with a million studies.
* D (:mod:`bench.d_client`) - milliseconds per C-FIND, our client against findscu.
* E (:mod:`bench.e_polling`) - CPU of held associations, pynetdicom's polling against reactor.py.

Results: docs/benchmarks.md. Timings never go into the tests.
"""
