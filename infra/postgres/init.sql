-- One database per engine: MLflow and Optuna both keep their schema version in alembic_version.
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
