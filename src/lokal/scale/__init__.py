"""lokal across machines: the same server as a Ray Serve application (`lokal serve --ray`).

The cut is the registry's pool (see docs/scale-out.md):

* `lokal.scale.replica` (models layer): the model replicas, each holding a real
  registry (catalog + local pool with its usual rules) on its node, and the board
  where they post their state.
* `lokal.scale.ingress` (models layer): the ingress's `RemotePool`, whose leases proxy
  the `Engine` calls (chat and completion chunks streamed, embed, rerank, transcribe)
  to a replica chosen by Ray Serve's model multiplexing; the ingress's registry is a
  catalog and this pool.
* `lokal.scale.wire`: what crosses between them (errors as lokal's own kinds, the
  model files every node must hold).
* `lokal.scale.app` (cli layer): the Serve application (ingress = lokal's own
  FastAPI app over the remote registry, the model replicas, the board),
  `lokal serve --ray` and `lokal models list --ray`.

Ray is an optional extra (`pip install 'lokal[ray]'`); nothing here is imported
unless `--ray` is given.
"""
