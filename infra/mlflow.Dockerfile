# MLflow tracking server with the PostgreSQL driver and S3 client the compose stack needs.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.11 boto3==1.40.*
