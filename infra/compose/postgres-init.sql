-- Runs once, when the postgres-data volume is first initialised (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates `prefect`; MLflow and the query service (request store, API keys and audit trail) get their
-- own databases, owned by the same role.
CREATE DATABASE mlflow OWNER ragops;
CREATE DATABASE ragops OWNER ragops;
