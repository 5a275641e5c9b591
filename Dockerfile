# The Airflow image for docker-compose.yml: the official Airflow 3.3.2 image plus this project's
# pinned dependencies (requirements.txt, every transitive version locked by constraints.txt).
# dags/, include/, plugins/ and config/ are mounted by docker-compose.yml, not copied, so a code
# change needs no rebuild; a dependency change does (`docker compose build`).
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt constraints.txt /opt/agent-traffic/
RUN pip install --no-cache-dir -r /opt/agent-traffic/requirements.txt -c /opt/agent-traffic/constraints.txt

ENV PYTHONPATH=/opt/airflow/include \
    GX_ANALYTICS_ENABLED=false
