"""agent_traffic: access logs -> canonical events -> Parquet staging -> vendor delivery.

Everything here is plain Python with no Airflow imports, so the command-line runner, the DAGs and
the tests all call the same functions.

Nothing here multiplies matrices, so numpy's OpenBLAS gets one thread: its thread pool spins for
about 0.09 s of CPU when numpy is imported, in every process (set before numpy's first import;
an OPENBLAS_NUM_THREADS already set is kept).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
