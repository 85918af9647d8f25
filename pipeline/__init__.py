"""anchorlake pipeline: ingest, quality gate, commit, rewards, receipts.

Every stage the Airflow DAGs run lives here and is callable without Airflow.
"""

__version__ = "0.1.0"
