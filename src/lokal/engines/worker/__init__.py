"""Engines in supervised worker processes (ENGINE_ISOLATION=process, the default).

A llama.cpp abort (a GGML_ASSERT, a malformed tensor) or the OOM killer ends the
process it hits. So each loaded model's engine runs in a child process of its
own, started fresh (`python -m lokal.engines.worker`, never forked from a server
holding threads), and `WorkerEngine` stands in for it in the server: the same
`Engine` methods, each a message over a socket pair.

The protocol: length-prefixed pickles (`protocol`, both ends). The server
sends `("load", engine, options, log level)`, then calls `(kind, id, *args)` and
`("x", id)` to cancel a stream; the worker answers `("ready", slots, dimensions)`
or `("load_error", message, from_engine)`, then per call chunks `("c", id, chunk)`
and one `("d", id, result)` or `("e", id, error)`. A sink that returns True sends
the cancel at once, and the worker's sink returns True from the next token on,
so a client that goes away still frees its slot within a token or two.

Supervision: the worker's fd 2 is a pipe the server reads (llama.cpp's log lines,
the worker's own log records, and whatever an abort prints last). When the
socket ends without a `close`, the worker died: its running calls fail with
`EngineStopped`, the server log gets the signal or exit code and the last engine
lines, and `on_exit` tells the pool. Calls still waiting for a slot had not
reached the engine: they start a fresh worker and run there. The worker dies
with the server (PR_SET_PDEATHSIG, and it exits when its socket ends).

Modules: `protocol` (the channel, errors across it), `process` (spawning a worker, reading
its fd 2, reporting its death), `client` (the server's side: `WorkerFactory`, `WorkerEngine`),
`child` (the worker program, run by `__main__`). This package imports none of them.
"""
