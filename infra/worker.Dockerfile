# Prefect process worker that runs selfimprove loops (CPU build; for GPUs start from a CUDA PyTorch image
# and install torch matching it instead of the CPU wheel).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/selfimprove
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY src ./src
COPY flows ./flows
COPY tasks ./tasks
RUN pip install --no-cache-dir uv \
 && uv pip install --system --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match \
      -r requirements/lock.txt \
 && uv pip install --system --no-deps -e . \
 && pip install --no-cache-dir "s3fs>=2024.6" "dvc-s3>=3.2"
WORKDIR /workspace
