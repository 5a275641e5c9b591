"""agent_traffic: access logs -> canonical events -> Parquet staging -> vendor delivery.

Everything here is plain Python with no Airflow imports, so the command-line runner, the DAGs and
the tests all call the same functions.
"""

__version__ = "0.1.0"
