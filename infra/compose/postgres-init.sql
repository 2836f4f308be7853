-- Runs once, when the postgres-data volume is first initialised (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates `prefect`; MLflow gets its own database, owned by the same role.
CREATE DATABASE mlflow OWNER ragops;
