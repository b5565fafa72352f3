-- One database per engine: MLflow and Optuna both keep their schema version in alembic_version.
-- UTF-8 explicitly, whatever locale the server was initialised with (psycopg reads text from
-- SQL_ASCII databases as bytes).
CREATE DATABASE mlflow ENCODING 'UTF8' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
CREATE DATABASE optuna ENCODING 'UTF8' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
