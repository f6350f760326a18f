-- A second database for Prefect next to MLflow's (POSTGRES_DB creates 'mlflow').
CREATE DATABASE prefect;
