"""Files that run only inside the paddle worker's interpreter, loaded by path by the worker protocol.

They import the framework, numpy and onnx, never convkit (the environment does not have it). Nothing in the
core process imports this package.
"""
