"""Caffe factories that go wrong on purpose, for the worker's error paths (imported in the Caffe env)."""

from __future__ import annotations


def not_a_net() -> dict[str, int]:
    return {"layers": 3}


def text_without_weights() -> str:
    return 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }'
