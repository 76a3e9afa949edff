"""When parity fails: ``localize`` (the first diverging node), ``reduce`` (a minimal repro), and ``doctor``
(what is installed and ready)."""
