"""Front ends that run their framework in an environment of its own, driven as a subprocess.

Some frameworks cannot live beside the core: their pins clash with the core's (PaddlePaddle's paddle2onnx
wants onnx<=1.17), or they crash in a process that has loaded another framework (Paddle after TensorFlow).
Such a front end keeps only a handle in the core process and sends each job (export, run, build or train the
reference CNN) to a worker script run by the framework environment's interpreter
(``convkit.frontends._worker.envs``).

- ``client``: the core side: ``call_worker`` runs one request and maps its answer to a result or an error.
- ``env/protocol``: the worker side, standard library only: it starts each worker process, loads the
  worker script by path and serves its handlers; the scripts import its helpers.
- ``frontends/<framework>/env/worker.py``: one script per framework; it imports the framework, numpy and
  onnx, never convkit.
"""

from __future__ import annotations

from convkit.frontends._worker.client import (
    Worker,
    WorkerCrashError,
    WorkerError,
    WorkerSourceError,
    WorkerTimeoutError,
    call_worker,
    default_timeout,
)

__all__ = [
    "Worker",
    "WorkerCrashError",
    "WorkerError",
    "WorkerSourceError",
    "WorkerTimeoutError",
    "call_worker",
    "default_timeout",
]
