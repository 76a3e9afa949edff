#!/usr/bin/env bash
# Create .venv at the repository root with the pinned set (scripts/requirements.lock) and convkit (editable),
# then the framework environments that cannot live in it (convkit/frontends/*/*.lock, under .convkit-envs/).
# Idempotent: when nothing changed, it returns in about a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="$root/.venv"
stamp="$venv/.convkit-setup-stamp"
want="$(cat scripts/requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])')"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/convkit" ]; then
    echo "setup: .venv is up to date"
else
    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating .venv with $("$python" --version)"
        "$python" -m venv "$venv"
    fi
    echo "setup: installing the pinned set (scripts/requirements.lock); this takes about a minute the first time"
    # NOTE: why pip (not uv/poetry): the CPU build of torch lies on local disk where only pip looks; an
    # unpinned torch from the index is a multi-GB CUDA build.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements.lock 2> >(grep -v "is ignored: it is neither" >&2)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$want" > "$stamp"
fi
# NOTE: why more environments: frameworks whose pins cannot live in .venv (PaddlePaddle: onnx<=1.17; MXNet and
# Chainer: numpy<2; caffe2onnx, onnx-chainer: pins of their own) run in environments of their own
# (convkit/frontends/*/*.lock), driven by convkit as subprocess workers. Idempotent too: about 0.1 s each when up to
# date, 5-20 s each the first time.
"$venv/bin/convkit" env create
# NOTE: why a system package: the HTML report's test opens the page in a real headless browser, and Chromium
# comes from Debian's packages (apt needs root; elsewhere that one test skips and says why)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (the HTML report's browser test)"
    { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } >/dev/null 2>&1 \
        || echo "setup: chromium could not be installed; the browser test will skip"
fi
echo "setup: done; run .venv/bin/convkit --help"
