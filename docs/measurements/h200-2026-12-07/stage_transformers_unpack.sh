#!/usr/bin/env bash
# transformers 5.25 (inside the project's range) and the packages it needs newer than the GPU
# machine's, into /root/site-tf: PYTHONPATH=/root/site:/root/site-tf:$PWD
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site-tf "$here"/*.whl
echo "installed into /root/site-tf: $(ls "$here"/*.whl | wc -l) wheels"
